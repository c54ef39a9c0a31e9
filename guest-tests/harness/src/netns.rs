//! Network namespaces the tests create and remove, and ways to act inside
//! them from the test process.

use std::ffi::OsStr;
use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use nix::sched::{setns, CloneFlags};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace, deleted on drop (also when a test panics).
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates a namespace (no `Default`: this makes one in the system).
    #[allow(clippy::new_without_default)]
    pub fn new() -> NetNs {
        let name = format!(
            "zct{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No IPv6 chatter (router solicitations, MLD) on test devices.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns
    }

    /// Two namespaces joined by a veth with MTU 65535: the first gets
    /// 10.9.0.1/24 on `va`, the second 10.9.0.2/24 on `vb`.
    pub fn veth_pair() -> (NetNs, NetNs) {
        let a = NetNs::new();
        let b = NetNs::new();
        a.ip(&[
            "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
        ]);
        a.ip(&["link", "set", "va", "mtu", "65535", "up"]);
        a.ip(&["addr", "add", "10.9.0.1/24", "dev", "va"]);
        b.ip(&["link", "set", "vb", "mtu", "65535", "up"]);
        b.ip(&["addr", "add", "10.9.0.2/24", "dev", "vb"]);
        (a, b)
    }

    /// Runs `ip -n NS args...`, panicking with its output on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it
    /// creates stay in the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            f()
        })
        .join()
        .expect("thread inside the namespace panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
