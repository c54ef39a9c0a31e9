//! The host side of a guest test: a network namespace with a persistent
//! tap (as an operator would make it) that has the host address, and
//! iperf3 servers listening on it. Everything is removed on drop.

use std::fs;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::vm::HOST_IP;

pub const TAP: &str = "zg0";

pub struct Lab {
    servers: Vec<Child>,
    server_log: tempfile::NamedTempFile,
    // Dropped last: deleting the namespace removes the tap.
    pub ns: NetNs,
}

/// What kind of tap the guest's NIC will use.
#[derive(Clone, Copy)]
pub enum TapKind {
    /// `multi_queue vnet_hdr`, for zcnet.
    MultiQueue,
    /// `vnet_hdr` only, for QEMU's own `-netdev tap` with one queue.
    SingleQueue,
}

impl Lab {
    pub fn new(kind: TapKind, iperf_ports: &[u16]) -> Lab {
        let ns = NetNs::new();
        let mut add = vec!["tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"];
        if let TapKind::MultiQueue = kind {
            add.push("multi_queue");
        }
        ns.ip(&add);
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
        ns.ip(&["link", "set", TAP, "up"]);
        let server_log = tempfile::NamedTempFile::new().expect("temp file");
        let mut lab = Lab {
            servers: Vec::new(),
            server_log,
            ns,
        };
        for port in iperf_ports {
            let log = lab.server_log.reopen().expect("log file");
            let child = lab
                .ns
                .command("iperf3")
                .args(["-s", "-B", HOST_IP, "-p", &port.to_string()])
                .stdout(Stdio::from(log.try_clone().expect("log file")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start iperf3 -s (the image builder installs iperf3)");
            lab.servers.push(child);
            lab.wait_listening(*port);
        }
        lab
    }

    /// Waits (bounded) until a TCP socket listens on `port` in the
    /// namespace, without connecting to it.
    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let filter = format!("sport = :{port}");
        loop {
            let out = self.ns.exec(&["ss", "-Hltn", &filter]);
            if !out.stdout.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "iperf3 -s never listened on {port}: {}",
                fs::read_to_string(self.server_log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20)); // polling a condition, with a deadline
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- iperf3 server log ----\n{}\n---- end ----",
                fs::read_to_string(self.server_log.path()).unwrap_or_default()
            );
        }
    }
}
