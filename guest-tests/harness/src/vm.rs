//! One QEMU guest (TCG) booted from the test image, with its serial
//! console on stdio: the harness reads it line by line and can type a line
//! into it. QEMU is killed on drop; on a failing test its console and
//! stderr are dumped. Guests run one at a time, and a developer may skip
//! them (never in CI).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::image::image;
use crate::netns::NetNs;

const GUEST_IP: &str = "10.77.0.2/24";
pub(crate) const HOST_IP: &str = "10.77.0.1";
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// How the guest's NIC reaches the host.
pub enum Nic<'a> {
    /// `-netdev vhost-user` on this socket (QEMU in the root namespace).
    VhostUser {
        socket: &'a std::path::Path,
        queues: usize,
        reconnect: bool,
        /// The MTU QEMU offers the guest (`host_mtu=`): QEMU builds the
        /// virtio-net config space itself, so the backend's MTU reaches a
        /// QEMU guest only this way.
        host_mtu: Option<u16>,
    },
    /// QEMU's own `-netdev tap` on a tap inside `ns` (QEMU runs in `ns`).
    QemuTap { ns: &'a NetNs, tap: &'a str },
    /// QEMU's own `-netdev dgram`: raw frames in UDP datagrams between
    /// `local` and `remote` (IP:PORT), QEMU running in `ns`.
    Dgram {
        ns: &'a NetNs,
        local: (&'a str, u16),
        remote: (&'a str, u16),
    },
    /// QEMU's own `-netdev stream` on `addr` (IP, port), as the client
    /// or (`server`) listening: length-prefixed frames over TCP, QEMU
    /// running in `ns`.
    Stream {
        ns: &'a NetNs,
        addr: (&'a str, u16),
        server: bool,
    },
}

pub struct VmSpec<'a> {
    pub name: &'a str,
    pub cpus: usize,
    /// The `/init` mode: iperf, mq, reconnect, shutdown, server,
    /// migrate-rx or migrate-tx.
    pub mode: &'a str,
    pub iperf_seconds: u32,
    pub nic: Nic<'a>,
    /// The guest's address (`zc.ip`), its iperf3/ping peer (`zc.server`)
    /// and its MAC.
    pub ip: &'a str,
    pub server: &'a str,
    pub mac: &'a str,
}

impl VmSpec<'_> {
    /// The usual guest: 10.77.0.2 talking to the host at 10.77.0.1.
    pub const IP: &'static str = GUEST_IP;
    pub const SERVER: &'static str = HOST_IP;
    pub const MAC: &'static str = GUEST_MAC;
}

/// What a guest needs beyond [`VmSpec`] (live migration).
#[derive(Clone, Debug, Default)]
pub struct VmExtra {
    /// A QMP socket at this path (`-qmp unix:PATH,server=on,wait=off`).
    pub qmp: Option<PathBuf>,
    /// `-incoming URI`: this QEMU waits for a migration instead of
    /// booting.
    pub incoming: Option<String>,
    /// More kernel command-line keys for `/init` (`zc.*=...`).
    pub append: String,
}

#[derive(Default)]
struct Console {
    lines: Vec<String>,
    closed: bool,
}

pub struct Vm {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vm {
    pub fn boot(spec: &VmSpec) -> Vm {
        Vm::boot_with(spec, &VmExtra::default())
    }

    /// [`Vm::boot`] with a QMP socket, an incoming migration or more
    /// kernel command-line keys.
    pub fn boot_with(spec: &VmSpec, extra: &VmExtra) -> Vm {
        let image = image();
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("qemu.stderr");
        let mut append = format!(
            "console=ttyS0 quiet panic=-1 zc.mode={} zc.ip={} zc.server={} zc.time={}",
            spec.mode, spec.ip, spec.server, spec.iperf_seconds
        );
        if !extra.append.is_empty() {
            append.push(' ');
            append.push_str(&extra.append);
        }
        let mac = spec.mac;
        let mut cmd = match spec.nic {
            Nic::QemuTap { ns, .. } | Nic::Dgram { ns, .. } | Nic::Stream { ns, .. } => {
                ns.command("qemu-system-x86_64")
            }
            Nic::VhostUser { .. } => Command::new("qemu-system-x86_64"),
        };
        cmd.args(["-accel", "tcg", "-m", "512", "-smp"])
            .arg(spec.cpus.to_string())
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .args(["-no-reboot", "-kernel"])
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &append])
            // vhost-user needs guest RAM the backend can map: memfd, shared.
            .args([
                "-object",
                "memory-backend-memfd,id=mem,size=512M,share=on",
                "-machine",
                "memory-backend=mem",
            ]);
        match spec.nic {
            Nic::VhostUser {
                socket,
                queues,
                reconnect,
                host_mtu,
            } => {
                let reconnect = if reconnect { ",reconnect-ms=500" } else { "" };
                cmd.arg("-chardev")
                    .arg(format!("socket,id=c0,path={}{reconnect}", socket.display()));
                cmd.arg("-netdev")
                    .arg(format!("vhost-user,id=n0,chardev=c0,queues={queues}"));
                let mq = if queues > 1 {
                    format!(",mq=on,vectors={}", 2 * queues + 2)
                } else {
                    String::new()
                };
                let mtu = host_mtu.map_or(String::new(), |m| format!(",host_mtu={m}"));
                cmd.arg("-device")
                    .arg(format!("virtio-net-pci,netdev=n0,mac={mac}{mq}{mtu}"));
            }
            Nic::QemuTap { tap, .. } => {
                cmd.arg("-netdev").arg(format!(
                    "tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"
                ));
                cmd.arg("-device")
                    .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"));
            }
            Nic::Stream { addr, server, .. } => {
                cmd.arg("-netdev").arg(format!(
                    "stream,id=n0,server={},addr.type=inet,addr.host={},addr.port={}",
                    if server { "on" } else { "off" },
                    addr.0,
                    addr.1
                ));
                cmd.arg("-device")
                    .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"));
            }
            Nic::Dgram { local, remote, .. } => {
                cmd.arg("-netdev").arg(format!(
                    "dgram,id=n0,local.type=inet,local.host={},local.port={},\
                     remote.type=inet,remote.host={},remote.port={}",
                    local.0, local.1, remote.0, remote.1
                ));
                cmd.arg("-device")
                    .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"));
            }
        }
        if let Some(qmp) = &extra.qmp {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        if let Some(uri) = &extra.incoming {
            cmd.args(["-incoming", uri]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start qemu-system-x86_64 (the image builder installs it): {e}")
            });
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let out = child.stdout.take().expect("piped stdout");
        let shared = console.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = r.read_until(b'\n', &mut buf).unwrap_or(0);
                let (lock, cv) = &*shared;
                let mut c = lock.lock().unwrap();
                if n == 0 {
                    c.closed = true;
                    cv.notify_all();
                    return;
                }
                let line = String::from_utf8_lossy(&buf);
                c.lines.push(line.trim_end_matches(['\r', '\n']).to_owned());
                cv.notify_all();
            }
        });
        eprintln!("[{}] booting: {cmd:?}", spec.name);
        Vm {
            name: spec.name.to_owned(),
            stdin: child.stdin.take(),
            child,
            console,
            stderr,
            _dir: dir,
        }
    }

    /// Waits until a console line contains `marker` and returns that line.
    /// Fails if QEMU exits or `timeout` passes first.
    pub fn wait_marker(&self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().unwrap();
        loop {
            if let Some(l) = c.lines.iter().find(|l| l.contains(marker)) {
                return l.clone();
            }
            let now = Instant::now();
            assert!(
                !c.closed,
                "[{}] QEMU exited before the guest printed {marker:?}",
                self.name
            );
            assert!(
                now < deadline,
                "[{}] the guest did not print {marker:?} within {timeout:?}",
                self.name
            );
            c = cv.wait_timeout(c, deadline - now).unwrap().0;
        }
    }

    /// Types a line on the guest's serial console.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("console input");
        writeln!(stdin, "{line}").expect("write to the guest console");
        stdin.flush().expect("flush the guest console");
    }

    /// Waits for `ZCNET-DONE`, then for QEMU to exit (the guest powers
    /// off). Returns the whole console.
    pub fn wait_done(&mut self, timeout: Duration) -> String {
        self.wait_marker("ZCNET-DONE", timeout);
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "[{}] QEMU exited with {status}",
            self.name
        );
        let console = self.console();
        assert!(
            !console.contains("ZCNET-FATAL"),
            "[{}] the guest's /init failed",
            self.name
        );
        console
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        // QEMU closes its stdout when it exits: wait for that, then reap.
        let deadline = Instant::now() + timeout;
        {
            let (lock, cv) = &*self.console;
            let mut c = lock.lock().unwrap();
            while !c.closed {
                let now = Instant::now();
                assert!(
                    now < deadline,
                    "[{}] QEMU did not exit within {timeout:?} after the guest powered off",
                    self.name
                );
                c = cv.wait_timeout(c, deadline - now).unwrap().0;
            }
        }
        self.child.wait().expect("wait for QEMU")
    }

    fn console(&self) -> String {
        self.console.0.lock().unwrap().lines.join("\n")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- [{}] guest console ----\n{}\n---- [{}] QEMU stderr ----\n{}\n---- end ----",
                self.name,
                self.console(),
                self.name,
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
    }
}

/// Guests run one at a time: two TCG guests on two cores would only
/// measure each other.
pub fn one_guest_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// True when the developer asked to skip the guest tests. Says so loudly;
/// refuses (fails the test) when `CI` is set, so CI never passes by
/// skipping.
pub fn skip_requested(test: &str) -> bool {
    if std::env::var_os("ZCNET_SKIP_GUEST_TESTS").is_none() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ZCNET_SKIP_GUEST_TESTS is set while CI is set: CI must run the guest tests"
    );
    eprintln!(
        "\n!!!! SKIPPED {test}: ZCNET_SKIP_GUEST_TESTS is set. \
         This run does NOT show that a VM works through zcnet. !!!!\n"
    );
    true
}
