//! Namespaces for the UDP attachment: zcnet in one, its datagrams going
//! either out of an `ifb` device (which frees every skb without local
//! delivery, so lent pages really reach a "wire" uncopied) or over a veth
//! into a second namespace where a test socket receives them.

use std::net::UdpSocket;
use std::time::Duration;

use crate::daemon::{Daemon, ZcnetBin};
use crate::netns::NetNs;

pub const LOCAL: &str = "10.9.0.1:7000";
const REMOTE: &str = "10.9.0.2:7000";

pub struct UdpLab {
    pub daemon: Daemon,
    /// zcnet's arguments, for restarts.
    args: Vec<String>,
    /// The receiving namespace (veth topologies only).
    peer: Option<NetNs>,
    pub ns: NetNs,
}

/// Where zcnet's datagrams go.
pub enum Path {
    /// Out of an ifb device with MTU 65535: freed, never delivered.
    Ifb,
    /// Over a veth (MTU 65535) into a namespace that receives them.
    Veth,
}

impl UdpLab {
    pub fn new(bin: &ZcnetBin, path: Path, extra: &[&str]) -> UdpLab {
        let (ns, peer) = match path {
            Path::Ifb => {
                let ns = NetNs::new();
                ns.ip(&["link", "add", "ifb0", "type", "ifb"]);
                ns.ip(&["link", "set", "ifb0", "mtu", "65535", "up"]);
                ns.ip(&["addr", "add", "10.9.0.1/24", "dev", "ifb0"]);
                (ns, None)
            }
            Path::Veth => {
                let (ns, peer) = NetNs::veth_pair();
                (ns, Some(peer))
            }
        };
        let udp = format!("{LOCAL},{REMOTE}");
        let mut args = vec!["--udp", udp.as_str()];
        args.extend_from_slice(extra);
        let daemon = Daemon::start_args(bin, &ns, &args);
        let args = args.iter().map(|a| a.to_string()).collect();
        UdpLab {
            daemon,
            args,
            peer,
            ns,
        }
    }

    /// Kills zcnet with SIGKILL and starts it again with the same
    /// arguments (see [`Daemon::kill_and_restart`]).
    pub fn kill_and_restart(&mut self) {
        self.daemon.kill();
        self.restart();
    }

    /// Starts zcnet again, killed with [`Daemon::kill`], with the same
    /// arguments.
    pub fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.daemon.restart_args(&self.ns, &args);
    }

    /// A socket in the peer namespace bound to the remote address, with a
    /// receive buffer large enough that nothing the tests send overflows.
    pub fn receiver(&self) -> UdpSocket {
        let peer = self.peer.as_ref().expect("a veth lab");
        peer.enter(|| {
            let s = UdpSocket::bind(REMOTE).expect("bind the receiver");
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &(64 << 20))
                .expect("SO_RCVBUFFORCE");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
    }

    /// Runs `tc args...` in zcnet's namespace.
    pub fn tc(&self, args: &[&str]) {
        let mut v = vec!["tc"];
        v.extend_from_slice(args);
        self.ns.exec(&v);
    }

    /// The kernel's drop counters on the path (zcnet's qdisc and veth,
    /// the peer's veth and UDP counters), for a failure message.
    pub fn kernel_counters(&self) -> String {
        let text =
            |ns: &NetNs, args: &[&str]| String::from_utf8_lossy(&ns.exec(args).stdout).into_owned();
        let mut out = text(&self.ns, &["tc", "-s", "qdisc", "show", "dev", "va"]);
        out += &text(&self.ns, &["ip", "-s", "-s", "link", "show", "va"]);
        if let Some(peer) = &self.peer {
            out += &text(peer, &["ip", "-s", "-s", "link", "show", "vb"]);
            out += &text(peer, &["cat", "/proc/net/snmp"]);
        }
        out += &text(&self.ns, &["cat", "/proc/net/softnet_stat"]);
        out
    }

    /// Waits (bounded) until a queue-0 counter reaches `value`.
    pub fn wait_metric(&self, metric: &str, value: u64) -> String {
        Daemon::wait_metric(&self.ns, metric, value)
    }
}
