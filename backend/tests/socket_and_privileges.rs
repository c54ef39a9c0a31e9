//! Issue 13, first half, through the real binary: two daemons on one
//! socket path (a live listener is refused, a stale socket replaced, and
//! only a daemon's own socket file removed at exit), and privileges (an
//! unprivileged zcnet on a tap made for its user, and `--user` after
//! starting as root: no capabilities left, and still serving across a
//! reconnect).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use nix::sys::signal::Signal;
use nix::unistd::User;
use zcnet_harness::daemon::{Daemon, Launch, ZcnetBin};
use zcnet_harness::frames::PacketSock;
use zcnet_harness::guest::{FakeGuest, GuestOpts};
use zcnet_harness::netns::NetNs;
use zcnet_harness::roundtrip::{rx_roundtrip, tx_roundtrip};
use zcnet_harness::setup::{Setup, TAP};

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

/// A frontend connects to `socket` and moves a frame through `TAP` in `ns`.
fn serves(ns: &NetNs, socket: &Path, tag: u32) {
    let host = PacketSock::open(ns, TAP, true);
    let mut g = FakeGuest::connect(socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, tag);
}

/// zcnet in `ns` on a fresh tap, serving on `socket`.
fn daemon_at(ns: &NetNs, socket: &Path) -> Daemon {
    let launch = Launch {
        socket: Some(socket.to_owned()),
        ..Launch::default()
    };
    let d = Daemon::start_with(&zcnet(), ns, &launch, &["--tap", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    d
}

/// Runs zcnet to its end in `ns` with `args`: (exit code, stderr).
fn run_to_end(ns: &NetNs, args: &[&str]) -> (i32, String) {
    let out = ns
        .command(env!("CARGO_BIN_EXE_zcnet"))
        .args(args)
        .output()
        .expect("run zcnet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tap_exists(ns: &NetNs, name: &str) -> bool {
    Command::new("ip")
        .args(["-n", &ns.name, "link", "show", name])
        .output()
        .expect("ip link show")
        .status
        .success()
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_to_start_and_the_first_keeps_serving() {
    let s = Setup::new(&zcnet(), &[]);
    let other = NetNs::new();
    let path = s.daemon.socket.to_str().unwrap().to_owned();
    let (code, err) = run_to_end(&other, &["--socket-path", &path, "--tap", "zt9"]);
    assert_ne!(code, 0, "the second daemon started: {err}");
    assert!(
        err.contains("a daemon is already listening on this socket")
            && err.contains("give this zcnet another --socket-path"),
        "the error does not say what to fix: {err}"
    );
    assert!(
        !tap_exists(&other, "zt9"),
        "the refused daemon opened its tap first"
    );
    assert!(
        s.daemon.socket.exists(),
        "the refused daemon removed the socket"
    );
    serves(&s.ns, &s.daemon.socket, 1);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let mut first = Setup::new(&zcnet(), &[]);
    let status = first.daemon.signal_and_wait(Signal::SIGKILL);
    assert!(!status.success());
    let path = first.daemon.socket.clone();
    assert!(path.exists(), "SIGKILL leaves the socket file behind");

    let ns = NetNs::new();
    let second = daemon_at(&ns, &path);
    second.wait_log("is a stale socket (nobody listens on it); replacing it");
    serves(&ns, &path, 2);
}

#[test]
fn at_exit_zcnet_removes_the_socket_file_only_if_it_is_still_its_own() {
    let mut first = Setup::new(&zcnet(), &[]);
    let path = first.daemon.socket.clone();
    // An operator removes the path, and another daemon binds it.
    fs::remove_file(&path).unwrap();
    let ns = NetNs::new();
    let mut second = daemon_at(&ns, &path);

    let status = first.daemon.signal_and_wait(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(
        first
            .daemon
            .log_text()
            .contains("is no longer the socket this zcnet bound"),
        "{}",
        first.daemon.log_text()
    );
    assert!(
        path.exists(),
        "the first daemon removed the second's socket"
    );
    serves(&ns, &path, 3);

    // The second one's own file goes when it exits.
    let status = second.signal_and_wait(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!path.exists(), "the second daemon left its socket behind");
}

/// The unprivileged user the tests run zcnet as: `nobody`, or else a
/// system user created for the test and removed when it ends. One test at
/// a time uses it.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    created: bool,
    _one_at_a_time: MutexGuard<'static, ()>,
}

static USER_LOCK: Mutex<()> = Mutex::new(());

impl TestUser {
    fn get() -> TestUser {
        let lock = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut created = false;
        let user = match User::from_name("nobody").expect("look up nobody") {
            Some(u) => u,
            None => {
                let ok = Command::new("useradd")
                    .args(["--system", "--no-create-home", "zcnet-test"])
                    .status()
                    .expect("useradd")
                    .success();
                assert!(ok, "no user nobody, and useradd zcnet-test failed");
                created = true;
                User::from_name("zcnet-test")
                    .expect("look up zcnet-test")
                    .expect("zcnet-test was just created")
            }
        };
        TestUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            created,
            _one_at_a_time: lock,
        }
    }

    /// A fresh directory the user owns, for its socket.
    fn dir(&self) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(d.path(), Some(self.uid), Some(self.gid)).unwrap();
        d
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("userdel").arg(&self.name).status();
        }
    }
}

/// A command that runs zcnet as `user` with `setpriv` (which execs it,
/// so the pid is zcnet's).
///
/// The user must be able to open `/dev/net/tun`: mode 0666 on most
/// distributions, but 0600 on some machines (this project's among them).
/// There, rather than change the host's device node, zcnet runs in a
/// mount namespace of its own where a node of the same device, which the
/// user may open, is bind-mounted over `/dev/net/tun`. The returned
/// directory holds that node; keep it until zcnet has started.
fn as_user(user: &TestUser) -> (Vec<String>, Option<tempfile::TempDir>) {
    let setpriv = format!(
        "setpriv --reuid {} --regid {} --clear-groups --",
        user.uid, user.gid
    );
    let tun = fs::metadata("/dev/net/tun").expect("/dev/net/tun");
    if tun.mode() & 0o006 == 0o006 {
        let words = setpriv.split(' ').map(str::to_owned).collect();
        return (words, None);
    }
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("tun");
    let ok = Command::new("mknod")
        .arg(&node)
        .args(["c", "10", "200"])
        .status()
        .expect("mknod")
        .success();
    assert!(ok, "mknod {}", node.display());
    std::os::unix::fs::chown(&node, Some(user.uid), Some(user.gid)).unwrap();
    let script = format!(
        "mount --bind {} /dev/net/tun && exec {setpriv} \"$@\"",
        node.display()
    );
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (wrapper, Some(dir))
}

/// The fields of `/proc/PID/status` of every thread of `pid`.
fn thread_status(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("threads") {
        let path = task.unwrap().path().join("status");
        out.push(fs::read_to_string(path).expect("status"));
    }
    out
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

#[test]
fn an_unprivileged_zcnet_serves_a_tap_made_for_its_user() {
    let user = TestUser::get();
    let ns = NetNs::new();
    ns.ip(&[
        "tuntap",
        "add",
        "dev",
        TAP,
        "mode",
        "tap",
        "multi_queue",
        "vnet_hdr",
        "user",
        &user.name,
    ]);
    ns.ip(&["link", "set", TAP, "up"]);
    let dir = user.dir();
    let (wrapper, _node) = as_user(&user);
    let launch = Launch {
        socket: Some(dir.path().join("zc.sock")),
        wrapper,
        ..Launch::default()
    };
    let mut d = Daemon::start_with(&zcnet(), &ns, &launch, &["--tap", TAP]);
    for status in thread_status(d.pid()) {
        assert_eq!(
            field(&status, "Uid").split_whitespace().next(),
            Some(&*user.uid.to_string()),
            "zcnet is not running as {}",
            user.name
        );
        assert_eq!(field(&status, "CapEff"), "0000000000000000");
    }
    let host = PacketSock::open(&ns, TAP, true);
    let raw = PacketSock::open(&ns, TAP, false);
    let mut g = FakeGuest::connect(&d.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 10);
    rx_roundtrip(&mut g, &raw, 11);
    drop(g);
    let mut g = FakeGuest::connect(&d.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 12);
    let status = d.signal_and_wait(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "socket left behind");
}

#[test]
fn started_as_root_with_user_zcnet_keeps_no_capabilities_and_serves_across_reconnects() {
    let user = TestUser::get();
    let ns = NetNs::new();
    let dir = user.dir();
    let launch = Launch {
        socket: Some(dir.path().join("zc.sock")),
        ..Launch::default()
    };
    // zcnet creates the tap as root, then becomes the user.
    let mut d = Daemon::start_with(
        &zcnet(),
        &ns,
        &launch,
        &["--tap", TAP, "--user", &user.name],
    );
    ns.ip(&["link", "set", TAP, "up"]);
    d.wait_log("with no capabilities");
    let threads = thread_status(d.pid());
    assert!(threads.len() > 1, "zcnet runs its threads");
    for status in &threads {
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(
                field(status, set),
                "0000000000000000",
                "{set} of a zcnet thread:\n{status}"
            );
        }
        assert_eq!(field(status, "NoNewPrivs"), "1");
        for ids in ["Uid", "Gid"] {
            let want = if ids == "Uid" { user.uid } else { user.gid };
            for id in field(status, ids).split_whitespace() {
                assert_eq!(id, want.to_string(), "{ids}: {}", field(status, ids));
            }
        }
    }
    assert_eq!(
        fs::metadata(&d.socket).unwrap().uid(),
        user.uid,
        "the socket file is the user's"
    );

    let host = PacketSock::open(&ns, TAP, true);
    let raw = PacketSock::open(&ns, TAP, false);
    let mut g = FakeGuest::connect(&d.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 20);
    rx_roundtrip(&mut g, &raw, 21);
    drop(g);
    d.wait_log("frontend disconnected; waiting for the next connection");
    // The reconnecting frontend needs nothing privileged.
    let mut g = FakeGuest::connect(&d.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 22);
    rx_roundtrip(&mut g, &raw, 23);
    let m = Daemon::scrape(&ns);
    assert_eq!(Daemon::metric(&m, "zcnet_tx_frames_total", 0), 2);
    drop(g);

    let status = d.signal_and_wait(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "the user could not remove its socket");
}

#[test]
fn a_bad_user_exits_non_zero_and_says_what_to_fix() {
    let ns = NetNs::new();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let sock = sock.to_str().unwrap();
    let (code, err) = run_to_end(
        &ns,
        &[
            "--socket-path",
            sock,
            "--tap",
            "zt8",
            "--user",
            "no-such-user-zcnet",
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("--user \"no-such-user-zcnet\": no such user"),
        "{err}"
    );
    assert!(
        !tap_exists(&ns, "zt8"),
        "the tap was opened before the check"
    );
    assert!(!Path::new(sock).exists(), "the socket was bound");
    let (code, err) = run_to_end(
        &ns,
        &["--socket-path", sock, "--tap", "zt8", "--user", "root"],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("name an unprivileged user"), "{err}");
}
