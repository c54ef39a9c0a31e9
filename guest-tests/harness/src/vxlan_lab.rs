//! Namespaces for the VXLAN attachment: zcnet in one, its datagrams going
//! either over veths to two peer namespaces, each with the kernel's own
//! `vxlan` device as the remote VTEP, or out of an `ifb` device (which
//! frees every skb without local delivery, so lent pages really reach a
//! "wire" uncopied).
//!
//! ```text
//!   zcnet's namespace                      peer 0 (B)
//!   va 10.9.0.1/24  <--- veth --->  vb 10.9.0.2/24 (+ 10.9.0.5/24, a stranger)
//!     zcnet --vxlan-local 10.9.0.1         vx0: vxlan id 42 local 10.9.0.2
//!           --vxlan-remote 10.9.0.2             remote 10.9.0.1 dstport 4789
//!           --vxlan-remote 10.9.1.2             192.168.42.2/24
//!   vc 10.9.1.1/24  <--- veth --->  vd 10.9.1.2/24     peer 1 (C)
//!                                       vx0: vxlan id 42 local 10.9.1.2, ...
//!                                            192.168.42.3/24
//! ```
//!
//! The peers' veths finish checksums in software (`ethtool -K vb tx off`,
//! done here with the ioctl), as a real NIC would in hardware: otherwise a
//! kernel VTEP's TCP segments cross the veth with their inner checksum
//! unfinished (`CHECKSUM_PARTIAL` travels with the skb between namespaces),
//! and zcnet's UDP socket hands the inner frame on as it is.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, ZcnetBin};
use crate::frames::PacketSock;
use crate::netns::NetNs;

pub const VNI: u32 = 42;
pub const LOCAL: &str = "10.9.0.1";
/// The remote VTEPs' underlay addresses (peer 0, peer 1).
pub const PEERS: [&str; 2] = ["10.9.0.2", "10.9.1.2"];
/// The peers' addresses inside the VXLAN segment (on their `vx0`).
pub const OVERLAY: [&str; 2] = ["192.168.42.2", "192.168.42.3"];
/// An address on peer 0's veth that is no configured VTEP.
pub const STRANGER: &str = "10.9.0.5";
/// The MTU of the veths (the underlay).
pub const UNDERLAY_MTU: u32 = 9000;

pub struct VxlanLab {
    pub daemon: Daemon,
    /// The peer namespaces (veth topologies only).
    pub peers: Vec<NetNs>,
    pub ns: NetNs,
}

/// Where zcnet's datagrams go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Over veths to two namespaces with kernel `vxlan` devices.
    KernelPeers,
    /// Out of an ifb device: freed, never delivered.
    Ifb,
}

impl VxlanLab {
    /// Starts zcnet with `--vxlan-vni 42 --vxlan-local 10.9.0.1` and both
    /// peers as remotes, plus `extra`.
    pub fn new(bin: &ZcnetBin, path: Path, extra: &[&str]) -> VxlanLab {
        let ns = NetNs::new();
        let mut peers = Vec::new();
        match path {
            Path::KernelPeers => {
                for (i, (mine, theirs)) in [("va", "vb"), ("vc", "vd")].into_iter().enumerate() {
                    let peer = NetNs::new();
                    ns.ip(&[
                        "link", "add", mine, "type", "veth", "peer", "name", theirs, "netns",
                        &peer.name,
                    ]);
                    let mtu = UNDERLAY_MTU.to_string();
                    ns.ip(&["link", "set", mine, "mtu", &mtu, "up"]);
                    ns.ip(&["addr", "add", &format!("10.9.{i}.1/24"), "dev", mine]);
                    peer.ip(&["link", "set", theirs, "mtu", &mtu, "up"]);
                    set_tx_checksum(&peer, theirs, false);
                    peer.ip(&["addr", "add", &format!("{}/24", PEERS[i]), "dev", theirs]);
                    peer.ip(&["route", "add", "10.9.0.0/16", "via", &format!("10.9.{i}.1")]);
                    peer.ip(&[
                        "link",
                        "add",
                        "vx0",
                        "type",
                        "vxlan",
                        "id",
                        &VNI.to_string(),
                        "local",
                        PEERS[i],
                        "remote",
                        LOCAL,
                        "dstport",
                        "4789",
                    ]);
                    peer.ip(&["link", "set", "vx0", "up"]);
                    peer.ip(&["addr", "add", &format!("{}/24", OVERLAY[i]), "dev", "vx0"]);
                    peers.push(peer);
                }
                peers[0].ip(&["addr", "add", &format!("{STRANGER}/24"), "dev", "vb"]);
            }
            Path::Ifb => {
                ns.ip(&["link", "add", "ifb0", "type", "ifb"]);
                ns.ip(&[
                    "link",
                    "set",
                    "ifb0",
                    "mtu",
                    &UNDERLAY_MTU.to_string(),
                    "up",
                ]);
                ns.ip(&["addr", "add", "10.9.0.1/24", "dev", "ifb0"]);
                ns.ip(&["route", "add", "10.9.1.0/24", "dev", "ifb0"]);
            }
        }
        let mut args = vec![
            "--vxlan-vni",
            "42",
            "--vxlan-local",
            LOCAL,
            "--vxlan-remote",
            PEERS[0],
            "--vxlan-remote",
            PEERS[1],
        ];
        args.extend_from_slice(extra);
        let daemon = Daemon::start_args(bin, &ns, &args);
        VxlanLab { daemon, peers, ns }
    }

    /// An AF_PACKET socket on peer `i`'s `vx0`: it sees the inner frames
    /// the kernel decapsulated, and sends frames into the VXLAN segment.
    pub fn vx0(&self, i: usize) -> PacketSock {
        PacketSock::open(&self.peers[i], "vx0", false)
    }

    /// The MAC address of peer `i`'s `vx0`.
    pub fn vx0_mac(&self, i: usize) -> [u8; 6] {
        let out = self.peers[i].ip(&["-br", "link", "show", "vx0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mac = text
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("no MAC in {text:?}"));
        let mut b = [0u8; 6];
        for (o, p) in b.iter_mut().zip(mac.split(':')) {
            *o = u8::from_str_radix(p, 16).expect("a hex MAC");
        }
        b
    }

    /// A plain UDP socket in peer `i`'s namespace bound to `ip` (any
    /// port): a VTEP (or a stranger) that writes its own datagrams.
    pub fn udp(&self, i: usize, ip: &'static str) -> UdpSocket {
        self.peers[i].enter(move || {
            let s = UdpSocket::bind((ip, 0)).expect("bind a peer socket");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
    }

    /// `Proto: field` of `/proc/net/snmp` (e.g. "Tcp", "InCsumErrors") in
    /// peer `i`'s namespace.
    pub fn snmp(&self, i: usize, proto: &str, field: &str) -> u64 {
        let out = self.peers[i].command("cat").arg("/proc/net/snmp").output();
        let text = String::from_utf8_lossy(&out.expect("read /proc/net/snmp").stdout).into_owned();
        let prefix = format!("{proto}:");
        let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
        let names: Vec<&str> = lines
            .next()
            .expect("header line")
            .split_whitespace()
            .collect();
        let values: Vec<&str> = lines
            .next()
            .expect("value line")
            .split_whitespace()
            .collect();
        let at = names
            .iter()
            .position(|n| *n == field)
            .unwrap_or_else(|| panic!("no {proto} {field} in /proc/net/snmp"));
        values[at].parse().expect("a number")
    }

    /// Runs `tc args...` in zcnet's namespace.
    pub fn tc(&self, args: &[&str]) {
        let mut v = vec!["tc"];
        v.extend_from_slice(args);
        self.ns.exec(&v);
    }

    pub fn scrape(&self) -> String {
        Daemon::scrape(&self.ns)
    }

    /// Waits (bounded) until `metric` summed over the samples with every
    /// label of `labels` reaches `value`; returns that scrape.
    pub fn wait_metric(&self, metric: &str, labels: &[(&str, &str)], value: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.scrape();
            if sum(&m, metric, labels) >= value {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{metric}{labels:?} never reached {value}:\n{m}"
            );
            std::thread::sleep(Duration::from_millis(10)); // polling a condition, with a deadline
        }
    }
}

/// Turns transmit checksum offload of `ifname` in `ns` on or off
/// (`ethtool -K IFNAME tx on|off`, through `SIOCETHTOOL`).
pub fn set_tx_checksum(ns: &NetNs, ifname: &str, on: bool) {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let name = ifname.to_owned();
    ns.enter(move || {
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: u32::from(on),
        };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: &mut value,
            _pad: [0; 16],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `req` is a valid ifreq for SIOCETHTOOL whose data points
        // at `value`, both alive for the call; `fd` is ours.
        let r = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req) };
        let err = std::io::Error::last_os_error();
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(fd) };
        assert_eq!(r, 0, "ETHTOOL_STXCSUM on {name}: {err}");
    });
}

/// The sum of `metric`'s samples in a scrape whose labels include every
/// one of `labels` (all samples when `labels` is empty). Panics if there
/// is no such sample, so a misspelt name cannot pass as zero.
pub fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> u64 {
    let mut found = false;
    let mut total = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((set, value)) => (set, value),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            found = true;
            total += value.trim().parse::<u64>().expect("numeric metric");
        }
    }
    assert!(found, "no {metric}{labels:?} in:\n{text}");
    total
}
