//! The real zcnet binary, started inside a test namespace.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::netns::NetNs;

const METRICS_PORT: u16 = 9500;

pub struct Daemon {
    bin: ZcnetBin,
    child: Option<Child>,
    /// Where `--metrics` serves, inside the daemon's namespace.
    metrics_port: u16,
    pub socket: PathBuf,
    pub log: PathBuf,
    previous_logs: String,
    /// A command zcnet runs under, e.g. `setpriv --reuid ...`.
    wrapper: Vec<String>,
    _dir: tempfile::TempDir,
}

/// How [`Daemon::start_with`] starts zcnet.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// The socket path (default: `zc.sock` in a fresh temporary directory).
    pub socket: Option<PathBuf>,
    /// A program and its arguments that run zcnet (it must exec it, as
    /// `setpriv` and `ip netns exec` do, so the child's pid is zcnet's).
    pub wrapper: Vec<String>,
    /// Where `--metrics` serves, on 127.0.0.1 in the namespace (default:
    /// 9500), for a second daemon in the same namespace.
    pub metrics_port: Option<u16>,
}

/// The zcnet binary a [`Daemon`] runs.
#[derive(Clone, Debug)]
pub struct ZcnetBin(PathBuf);

impl ZcnetBin {
    /// The binary at `path`, as a crate's own tests name it with
    /// `env!("CARGO_BIN_EXE_zcnet")`. Panics if there is none.
    pub fn at(path: impl Into<PathBuf>) -> ZcnetBin {
        let path = path.into();
        if !path.is_file() {
            panic!("{}", NoZcnetBin(path));
        }
        ZcnetBin(path)
    }

    /// `ZCNET_BIN`, or the `zcnet` built into the same target directory
    /// and profile as the running executable (a test in `target/*/deps`,
    /// a binary in `target/*`). Panics if there is none.
    pub fn from_env() -> ZcnetBin {
        Self::locate().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ZcnetBin::from_env`], as an error instead of a panic.
    pub fn locate() -> Result<ZcnetBin, NoZcnetBin> {
        let bin = match std::env::var_os("ZCNET_BIN") {
            Some(p) => PathBuf::from(p),
            None => profile_dir()
                .unwrap_or_else(|| PathBuf::from("target/release"))
                .join("zcnet"),
        };
        if !bin.is_file() {
            return Err(NoZcnetBin(bin));
        }
        Ok(ZcnetBin(bin.canonicalize().unwrap_or(bin)))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// No zcnet binary where one was looked for.
#[derive(Debug, Error)]
#[error(
    "no zcnet binary at {}: build it with `cargo build --release -p zcnet`, \
     or point ZCNET_BIN at one",
    .0.display()
)]
pub struct NoZcnetBin(pub PathBuf);

/// `target/PROFILE` of the running executable.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let dir = if dir.ends_with("deps") {
        dir.parent()?
    } else {
        dir
    };
    Some(dir.to_owned())
}

impl Daemon {
    /// Starts `zcnet --socket-path ... --tap TAP --metrics 127.0.0.1:9500
    /// extra...` in `ns` and waits until its socket accepts connections.
    pub fn start(bin: &ZcnetBin, ns: &NetNs, tap: &str, extra: &[&str]) -> Daemon {
        let mut args = vec!["--tap", tap];
        args.extend_from_slice(extra);
        Daemon::start_args(bin, ns, &args)
    }

    /// Starts zcnet with exactly `args` (plus its socket and metrics).
    pub fn start_args(bin: &ZcnetBin, ns: &NetNs, args: &[&str]) -> Daemon {
        Daemon::start_with(bin, ns, &Launch::default(), args)
    }

    /// [`Daemon::start_args`] with metrics on `port` (127.0.0.1 in `ns`),
    /// for a second daemon in the same namespace.
    pub fn start_with_metrics_port(bin: &ZcnetBin, ns: &NetNs, args: &[&str], port: u16) -> Daemon {
        let launch = Launch {
            metrics_port: Some(port),
            ..Launch::default()
        };
        Daemon::start_with(bin, ns, &launch, args)
    }

    /// Starts zcnet with exactly `args` (plus its socket and metrics), as
    /// `launch` says.
    pub fn start_with(bin: &ZcnetBin, ns: &NetNs, launch: &Launch, args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = launch
            .socket
            .clone()
            .unwrap_or_else(|| dir.path().join("zc.sock"));
        let log = dir.path().join("zcnet.log");
        let mut d = Daemon {
            bin: bin.clone(),
            child: None,
            metrics_port: launch.metrics_port.unwrap_or(METRICS_PORT),
            socket,
            log,
            previous_logs: String::new(),
            wrapper: launch.wrapper.clone(),
            _dir: dir,
        };
        d.spawn(ns, args);
        d
    }

    fn spawn(&mut self, ns: &NetNs, args: &[&str]) {
        let stale = file_id(&self.socket);
        let logfile = fs::File::create(&self.log).expect("log file");
        let metrics = format!("127.0.0.1:{}", self.metrics_port);
        let mut command = match self.wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = ns.command(program);
                c.args(wrapper_args).arg(self.bin.path());
                c
            }
            None => ns.command(self.bin.path()),
        };
        let child = command
            .arg("--socket-path")
            .arg(&self.socket)
            .args(["--metrics", &metrics])
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("spawn zcnet");
        self.child = Some(child);
        self.wait_listening(stale);
    }

    /// Waits (bounded) until zcnet has bound its socket: a socket file
    /// that was not there before the spawn (a stale one left by a killed
    /// daemon does not count; zcnet replaces it). No probe connection is
    /// made, which the daemon would take for a frontend.
    fn wait_listening(&mut self, stale: Option<FileId>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("zcnet exited early with {status}:\n{}", self.log_text());
            }
            if let Some(now) = file_id(&self.socket) {
                if Some(now) != stale {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "zcnet did not listen in 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10)); // polling a condition, with a deadline
        }
    }

    /// Kills zcnet with SIGKILL (it leaves its socket file behind, as a
    /// crash would) and starts it again on the same socket path. The old
    /// log is kept for the failure dump.
    pub fn kill_and_restart(&mut self, ns: &NetNs, tap: &str, extra: &[&str]) {
        let mut args = vec!["--tap", tap];
        args.extend_from_slice(extra);
        self.kill_and_restart_args(ns, &args);
    }

    /// [`kill_and_restart`](Self::kill_and_restart) with exactly `args`
    /// (plus the socket and metrics), for any attachment.
    pub fn kill_and_restart_args(&mut self, ns: &NetNs, args: &[&str]) {
        self.kill();
        self.restart_args(ns, args);
    }

    /// Kills zcnet with SIGKILL; it leaves its socket file behind, as a
    /// crash would. Start it again with
    /// [`restart_args`](Self::restart_args).
    pub fn kill(&mut self) {
        let status = self.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
        assert!(!status.success(), "zcnet survived SIGKILL: {status}");
        self.previous_logs.push_str(&self.log_text());
        self.previous_logs
            .push_str("---- (SIGKILL; restarted) ----\n");
    }

    /// Starts the killed zcnet again on the same socket path with exactly
    /// `args` (plus the socket and metrics).
    pub fn restart_args(&mut self, ns: &NetNs, args: &[&str]) {
        // The stale socket file shows the restart when it is replaced.
        fs::remove_file(&self.socket).expect("remove the stale socket");
        self.spawn(ns, args);
    }

    /// The in-flight ledger zcnet keeps next to its socket (without
    /// `--state-dir`).
    pub fn ledger(&self) -> PathBuf {
        let mut name = self.socket.clone().into_os_string();
        name.push(".inflight");
        PathBuf::from(name)
    }

    pub fn connect_raw(&self) -> UnixStream {
        UnixStream::connect(&self.socket).expect("connect to zcnet")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "zcnet never logged {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10)); // polling a condition, with a deadline
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        // `ip netns exec` execs zcnet, so the child pid is zcnet's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("kill");
        self.child.take().expect("running").wait().expect("wait")
    }

    /// Scrapes the metrics endpoint from inside the namespace.
    pub fn scrape(ns: &NetNs) -> String {
        Daemon::scrape_port(ns, METRICS_PORT)
    }

    /// Scrapes this daemon's metrics (it runs in `ns`).
    pub fn scrape_own(&self, ns: &NetNs) -> String {
        Daemon::scrape_port(ns, self.metrics_port)
    }

    fn scrape_port(ns: &NetNs, port: u16) -> String {
        ns.enter(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    }

    /// The value of an unlabelled metric in a scrape.
    pub fn global_metric(text: &str, metric: &str) -> u64 {
        sample_value(text, &format!("{metric} "))
    }

    /// The value of `metric{queue_pair="q"}` in a scrape.
    pub fn metric(text: &str, metric: &str, queue: usize) -> u64 {
        sample_value(text, &format!("{metric}{{queue_pair=\"{queue}\"}} "))
    }

    /// Waits (bounded) until a queue-0 counter of the zcnet in `ns`
    /// reaches `value`; returns that scrape.
    pub(crate) fn wait_metric(ns: &NetNs, metric: &str, value: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = Daemon::scrape(ns);
            if Daemon::metric(&m, metric, 0) >= value {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{metric} never reached {value}:\n{m}"
            );
            std::thread::sleep(Duration::from_millis(10)); // polling a condition, with a deadline
        }
    }
}

/// Which file is at a path: device, inode and change time (an inode
/// number alone may be reused at once).
type FileId = (u64, u64, i64, i64);

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// The value on the line of a scrape that starts with `prefix` (the
/// metric's name, its labels and a space).
fn sample_value(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {} in:\n{text}", prefix.trim_end()))
        .trim()
        .parse()
        .expect("numeric metric")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- zcnet log ----\n{}{}\n---- end of zcnet log ----",
                self.previous_logs,
                self.log_text()
            );
        }
    }
}
