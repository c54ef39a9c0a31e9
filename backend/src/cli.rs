//! Command-line arguments and the validated configuration they become.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use thiserror::Error;

use crate::lending::ZeroCopyMode;
use crate::sandbox::SeccompMode;

/// The most queue pairs: one worker thread each, and the vhost-user
/// worker map holds 64 queues.
pub const MAX_QUEUE_PAIRS: usize = 32;

/// zcnet: a vhost-user virtio-net backend for QEMU and cloud-hypervisor.
#[derive(Debug, Parser)]
#[command(name = "zcnet", version, about)]
#[command(group = clap::ArgGroup::new("attachment").required(true).multiple(false))]
pub struct Args {
    /// Path of the vhost-user Unix socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub socket_path: PathBuf,
    /// Tap device to attach to: opened if it exists (make it with `ip tuntap
    /// add dev NAME mode tap multi_queue vnet_hdr`), otherwise created.
    #[arg(long, value_name = "NAME", group = "attachment")]
    pub tap: Option<String>,
    /// Instead of a tap: one Ethernet frame per UDP datagram between
    /// LOCAL_IP:PORT and REMOTE_IP:PORT (QEMU's `-netdev dgram` speaks
    /// this). TX frames are lent to the kernel with MSG_ZEROCOPY.
    #[arg(
        long,
        value_name = "LOCAL_IP:PORT,REMOTE_IP:PORT",
        group = "attachment"
    )]
    pub udp: Option<String>,
    /// Instead of a tap: connect to a TCP peer and carry each frame after
    /// its 4-byte big-endian length (QEMU's `-netdev stream` speaks this);
    /// reconnect with backoff whenever the peer goes away. TX frames are
    /// lent to the kernel with MSG_ZEROCOPY.
    #[arg(long, value_name = "IP:PORT", group = "attachment")]
    pub stream_connect: Option<String>,
    /// Like --stream-connect, but listen on IP:PORT and serve one peer at
    /// a time.
    #[arg(long, value_name = "IP:PORT", group = "attachment")]
    pub stream_listen: Option<String>,
    /// Instead of a tap: a VXLAN segment (RFC 7348) with this VNI (0 to
    /// 16777215). Guest frames leave as VXLAN datagrams to the remote
    /// VTEPs (lent to the kernel with MSG_ZEROCOPY); datagrams from them
    /// reach the guest. Needs --vxlan-local and --vxlan-remote.
    #[arg(long, value_name = "VNI", group = "attachment")]
    pub vxlan_vni: Option<u32>,
    /// The local VTEP address, IP[:PORT] (port 4789 by default): where
    /// remote VTEPs send, and the source address of zcnet's datagrams.
    #[arg(long, value_name = "IP[:PORT]", requires = "vxlan_vni")]
    pub vxlan_local: Option<String>,
    /// A remote VTEP, IP[:PORT] (port 4789 by default). Repeat it for each
    /// remote: broadcast, multicast and unknown unicast frames go to every
    /// one (head-end replication); learned MACs go to theirs only.
    #[arg(long, value_name = "IP[:PORT]", requires = "vxlan_vni")]
    pub vxlan_remote: Vec<String>,
    /// A static FDB entry, MAC=IP[:PORT]: frames to MAC always go to that
    /// VTEP. Repeatable.
    #[arg(long, value_name = "MAC=IP[:PORT]", requires = "vxlan_vni")]
    pub vxlan_fdb: Vec<String>,
    /// Seconds a learned FDB entry lives without traffic from its MAC.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 300,
        requires = "vxlan_vni"
    )]
    pub vxlan_ageing: u64,
    /// The peer is another zcnet: carry the virtio-net header before each
    /// frame, so checksum offload (and, over a TCP stream, TSO) survives
    /// end to end.
    #[arg(long)]
    pub vnet_hdr_peer: bool,
    /// Lend TX pages to the kernel on socket attachments: `auto` backs off
    /// to copying while the kernel reports it copies anyway.
    #[arg(long, value_enum, default_value_t = ZeroCopyMode::Auto)]
    pub zerocopy: ZeroCopyMode,
    /// Frames shorter than this are copied, not lent.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub zerocopy_min_bytes: usize,
    /// How long GET_VRING_BASE waits for lent TX chains, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub zerocopy_drain_ms: u64,
    /// Number of RX/TX queue pairs (one worker thread each).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queue_pairs: usize,
    /// Largest virtqueue size the frontend may set up (a power of two).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub queue_size: u32,
    /// MAC address the device reports, e.g. 52:54:00:12:34:56
    /// (default: derived from the tap name).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// MTU the device reports to the guest (offers VIRTIO_NET_F_MTU).
    #[arg(long, value_name = "N")]
    pub mtu: Option<u32>,
    /// Serve Prometheus metrics on ADDR:PORT, e.g. 127.0.0.1:9500.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Started as root: become this user, keeping no capabilities, once
    /// the tap, the socket and the metrics listener are open.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Directory of the in-flight ledger (SOCKET.inflight, named after the
    /// socket file), which a restart after a crash reads to return every
    /// chain exactly once (default: the socket's directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The seccomp sandbox: each thread may make only the system calls
    /// its work needs. `enforce` ends the daemon at a call outside the
    /// list, naming it; `log` allows it and has the kernel log it (audit
    /// type 1326: dmesg, journalctl -k); `off` installs no filter.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Enforce)]
    pub seccomp: SeccompMode,
    /// How TX frames reach the tap: `uring` writes each batch (up to 64
    /// frames) with one io_uring_enter, `syscall` one writev per frame
    /// [default: uring if this kernel offers what zcnet needs, checked at
    /// start-up, else syscall].
    #[arg(long, value_enum, value_name = "ENGINE")]
    pub io_engine: Option<IoEngine>,
}

/// `--io-engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoEngine {
    Uring,
    Syscall,
}

/// Where the guest's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentConfig {
    Tap(String),
    Udp {
        local: SocketAddr,
        remote: SocketAddr,
        peer_hdr: bool,
    },
    /// `--stream-connect`.
    StreamConnect {
        remote: SocketAddr,
        peer_hdr: bool,
    },
    /// `--stream-listen`.
    StreamListen {
        local: SocketAddr,
        peer_hdr: bool,
    },
    /// `--vxlan-vni` and its companions.
    Vxlan(VxlanArgs),
}

/// A VXLAN attachment's configuration, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanArgs {
    pub vni: u32,
    pub local: SocketAddr,
    pub remotes: Vec<SocketAddr>,
    /// Static FDB entries: MAC, VTEP.
    pub fdb: Vec<([u8; 6], SocketAddr)>,
    pub ageing: Duration,
}

/// The VXLAN port (IANA), the default of every VTEP address.
pub const VXLAN_PORT: u16 = 4789;
/// The most remote VTEPs: each flooded frame is sent once to each.
pub const MAX_VXLAN_REMOTES: usize = 64;

/// A configuration zcnet can run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub socket_path: PathBuf,
    pub attachment: AttachmentConfig,
    pub zerocopy: ZeroCopyMode,
    pub zerocopy_min_bytes: usize,
    pub drain: Duration,
    pub queue_pairs: usize,
    pub queue_size: u16,
    pub mac: [u8; 6],
    pub mtu: Option<u16>,
    pub metrics: Option<SocketAddr>,
    /// `--user`: who to become once everything privileged is open.
    pub user: Option<String>,
    /// The in-flight ledger's file.
    pub ledger: PathBuf,
    /// `--seccomp`.
    pub seccomp: SeccompMode,
    /// `None`: chosen at start-up from what the kernel offers.
    pub io_engine: Option<IoEngine>,
}

/// What is wrong with the arguments, and how to fix it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--queue-pairs {0}: use a number from 1 to {MAX_QUEUE_PAIRS}")]
    QueuePairs(usize),
    #[error("--queue-size {0}: use a power of two from 2 to 32768")]
    QueueSize(u32),
    #[error("--mac {0:?}: use six hex bytes separated by ':', e.g. 52:54:00:12:34:56")]
    MacSyntax(String),
    #[error("--mac {0}: a multicast address cannot be a NIC's address; clear the lowest bit of the first byte")]
    MacMulticast(String),
    #[error("--mtu {0}: use a value from 68 to 65535")]
    Mtu(u32),
    #[error("--tap {0:?}: use an interface name of 1 to 15 characters without '/' or spaces")]
    TapName(String),
    #[error("--udp {0:?}: use LOCAL_IP:PORT,REMOTE_IP:PORT, e.g. 10.0.0.1:7000,10.0.0.2:7000")]
    Udp(String),
    #[error("{flag} {value:?}: use IP:PORT with a port from 1 to 65535, e.g. {example}")]
    Stream {
        flag: &'static str,
        value: String,
        example: &'static str,
    },
    #[error(
        "--vnet-hdr-peer applies to a socket attachment (--udp, --stream-connect, \
         --stream-listen); a tap always carries the header"
    )]
    VnetHdrPeer,
    #[error("{0} carries one queue pair: drop --queue-pairs {1}")]
    OneQueuePair(&'static str, usize),
    #[error("--socket-path {0:?}: the directory {1:?} does not exist")]
    SocketDir(PathBuf, PathBuf),
    #[error("--state-dir {0:?}: not a directory; create it or point it at one")]
    StateDir(PathBuf),
    #[error("--socket-path {0:?}: name the socket file, not a directory")]
    SocketName(PathBuf),
    #[error("--vxlan-vni {0}: use a VNI from 0 to 16777215 (24 bits)")]
    VxlanVni(u32),
    #[error(
        "--vxlan-vni needs --vxlan-local IP[:PORT]: the address remote VTEPs send to, e.g. \
         --vxlan-local 10.0.0.1"
    )]
    VxlanNoLocal,
    #[error(
        "--vxlan-vni needs at least one --vxlan-remote IP[:PORT] (repeat it for each remote \
         VTEP), e.g. --vxlan-remote 10.0.0.2"
    )]
    VxlanNoRemote,
    #[error(
        "{flag} {value:?}: use IP or IP:PORT with a port from 1 to 65535, e.g. 10.0.0.2, \
         10.0.0.2:4789 or [2001:db8::2]:4789"
    )]
    VxlanAddr { flag: &'static str, value: String },
    #[error(
        "--vxlan-remote {0}: use the unicast address of a remote VTEP (multicast underlays \
         and unspecified addresses are not supported)"
    )]
    VxlanRemoteNotUnicast(String),
    #[error("--vxlan-remote {0} is given twice: list each remote VTEP once")]
    VxlanRemoteTwice(SocketAddr),
    #[error("at most {MAX_VXLAN_REMOTES} --vxlan-remote VTEPs (each flooded frame is sent to every one); {0} given")]
    VxlanTooManyRemotes(usize),
    #[error(
        "--vxlan-local {local} and {flag} {other} are not of one IP version: use IPv4 \
         addresses for all, or IPv6 addresses for all"
    )]
    VxlanFamilies {
        local: SocketAddr,
        flag: &'static str,
        other: SocketAddr,
    },
    #[error("--vxlan-fdb {0:?}: use MAC=IP[:PORT], e.g. 52:54:00:12:34:56=10.0.0.2")]
    VxlanFdb(String),
    #[error(
        "--vxlan-fdb {0:?}: a static entry needs a unicast MAC (broadcast and multicast \
         frames go to every remote VTEP)"
    )]
    VxlanFdbMac(String),
    #[error("--vxlan-ageing {0}: use a number of seconds from 1 to 1000000")]
    VxlanAgeing(u64),
    #[error(
        "--vnet-hdr-peer does not apply to --vxlan-vni: VXLAN carries plain Ethernet frames \
         (checksum and TSO offloads are completed by zcnet)"
    )]
    VxlanVnetHdrPeer,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        if !(1..=MAX_QUEUE_PAIRS).contains(&a.queue_pairs) {
            return Err(ConfigError::QueuePairs(a.queue_pairs));
        }
        if !(2..=32768).contains(&a.queue_size) || !a.queue_size.is_power_of_two() {
            return Err(ConfigError::QueueSize(a.queue_size));
        }
        let one_pair = |flag| {
            if a.queue_pairs == 1 {
                Ok(())
            } else {
                Err(ConfigError::OneQueuePair(flag, a.queue_pairs))
            }
        };
        let peer_hdr = a.vnet_hdr_peer;
        let attachment = if let Some(tap) = a.tap {
            if peer_hdr {
                return Err(ConfigError::VnetHdrPeer);
            }
            if tap.is_empty() || tap.len() > 15 || tap.contains(['/', ' ', '\0']) {
                return Err(ConfigError::TapName(tap));
            }
            AttachmentConfig::Tap(tap)
        } else if let Some(udp) = a.udp {
            let bad = || ConfigError::Udp(udp.clone());
            let (l, r) = udp.split_once(',').ok_or_else(bad)?;
            let local: SocketAddr = l.trim().parse().map_err(|_| bad())?;
            let remote: SocketAddr = r.trim().parse().map_err(|_| bad())?;
            one_pair("--udp")?;
            AttachmentConfig::Udp {
                local,
                remote,
                peer_hdr,
            }
        } else if let Some(s) = a.stream_connect {
            let remote = stream_addr("--stream-connect", &s, "10.0.0.2:7000")?;
            if remote.ip().is_unspecified() {
                return Err(ConfigError::Stream {
                    flag: "--stream-connect",
                    value: s,
                    example: "10.0.0.2:7000 (the peer's address, not 0.0.0.0)",
                });
            }
            one_pair("--stream-connect")?;
            AttachmentConfig::StreamConnect { remote, peer_hdr }
        } else if let Some(s) = a.stream_listen {
            let local = stream_addr("--stream-listen", &s, "0.0.0.0:7000")?;
            one_pair("--stream-listen")?;
            AttachmentConfig::StreamListen { local, peer_hdr }
        } else if let Some(vni) = a.vxlan_vni {
            if peer_hdr {
                return Err(ConfigError::VxlanVnetHdrPeer);
            }
            AttachmentConfig::Vxlan(vxlan_args(
                vni,
                a.vxlan_local.as_deref(),
                &a.vxlan_remote,
                &a.vxlan_fdb,
                a.vxlan_ageing,
            )?)
        } else {
            // clap requires one of them.
            return Err(ConfigError::TapName(String::new()));
        };
        let name = match &attachment {
            AttachmentConfig::Tap(t) => t.clone(),
            AttachmentConfig::Udp { local, .. } => local.to_string(),
            // Two zcnets joined by one stream get different MACs.
            AttachmentConfig::StreamConnect { remote, .. } => format!("connect {remote}"),
            AttachmentConfig::StreamListen { local, .. } => format!("listen {local}"),
            AttachmentConfig::Vxlan(v) => format!("vxlan {} {}", v.vni, v.local),
        };
        let mtu = match a.mtu {
            Some(m) if !(68..=65535).contains(&m) => return Err(ConfigError::Mtu(m)),
            m => m.map(|m| m as u16),
        };
        let mac = match a.mac {
            Some(s) => parse_mac(&s)?,
            None => default_mac(&name),
        };
        if let Some(dir) = a.socket_path.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(ConfigError::SocketDir(
                    a.socket_path.clone(),
                    dir.to_owned(),
                ));
            }
        }
        let Some(socket_name) = a.socket_path.file_name() else {
            return Err(ConfigError::SocketName(a.socket_path));
        };
        let mut ledger_name = socket_name.to_owned();
        ledger_name.push(".inflight");
        let state_dir = match a.state_dir {
            Some(dir) if !dir.is_dir() => return Err(ConfigError::StateDir(dir)),
            Some(dir) => dir,
            None => a
                .socket_path
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
        };
        Ok(Config {
            ledger: state_dir.join(ledger_name),
            socket_path: a.socket_path,
            attachment,
            zerocopy: a.zerocopy,
            zerocopy_min_bytes: a.zerocopy_min_bytes,
            drain: Duration::from_millis(a.zerocopy_drain_ms),
            queue_pairs: a.queue_pairs,
            queue_size: a.queue_size as u16,
            mac,
            mtu,
            metrics: a.metrics,
            user: a.user,
            seccomp: a.seccomp,
            io_engine: a.io_engine,
        })
    }
}

/// Checks the VXLAN flags.
fn vxlan_args(
    vni: u32,
    local: Option<&str>,
    remotes: &[String],
    fdb: &[String],
    ageing: u64,
) -> Result<VxlanArgs, ConfigError> {
    if vni > 0x00ff_ffff {
        return Err(ConfigError::VxlanVni(vni));
    }
    let local = vtep_addr("--vxlan-local", local.ok_or(ConfigError::VxlanNoLocal)?)?;
    if remotes.is_empty() {
        return Err(ConfigError::VxlanNoRemote);
    }
    if remotes.len() > MAX_VXLAN_REMOTES {
        return Err(ConfigError::VxlanTooManyRemotes(remotes.len()));
    }
    let same_family = |flag, other: SocketAddr| {
        if other.is_ipv4() == local.is_ipv4() {
            Ok(other)
        } else {
            Err(ConfigError::VxlanFamilies { local, flag, other })
        }
    };
    let mut checked: Vec<SocketAddr> = Vec::with_capacity(remotes.len());
    for r in remotes {
        let addr = same_family("--vxlan-remote", vtep_addr("--vxlan-remote", r)?)?;
        let ip = addr.ip();
        if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            return Err(ConfigError::VxlanRemoteNotUnicast(r.clone()));
        }
        if checked.contains(&addr) {
            return Err(ConfigError::VxlanRemoteTwice(addr));
        }
        checked.push(addr);
    }
    let mut entries = Vec::with_capacity(fdb.len());
    for e in fdb {
        let bad = || ConfigError::VxlanFdb(e.clone());
        let (mac, vtep) = e.split_once('=').ok_or_else(bad)?;
        let mac = parse_mac(mac.trim()).map_err(|err| match err {
            ConfigError::MacMulticast(_) => ConfigError::VxlanFdbMac(e.clone()),
            _ => bad(),
        })?;
        if mac == [0; 6] {
            return Err(ConfigError::VxlanFdbMac(e.clone()));
        }
        let vtep = vtep_addr("--vxlan-fdb", vtep.trim()).map_err(|_| bad())?;
        entries.push((mac, same_family("--vxlan-fdb", vtep)?));
    }
    if !(1..=1_000_000).contains(&ageing) {
        return Err(ConfigError::VxlanAgeing(ageing));
    }
    Ok(VxlanArgs {
        vni,
        local,
        remotes: checked,
        fdb: entries,
        ageing: Duration::from_secs(ageing),
    })
}

/// A VTEP address: IP:PORT, or an IP (IPv6 with or without brackets) with
/// the VXLAN port.
fn vtep_addr(flag: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    let s = s.trim();
    let bad = || ConfigError::VxlanAddr {
        flag,
        value: s.to_owned(),
    };
    let addr = if let Ok(a) = s.parse::<SocketAddr>() {
        a
    } else {
        let ip = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        SocketAddr::new(ip.parse::<IpAddr>().map_err(|_| bad())?, VXLAN_PORT)
    };
    if addr.port() == 0 {
        return Err(bad());
    }
    Ok(addr)
}

/// A stream attachment's IP:PORT (no host names: zcnet resolves nothing).
fn stream_addr(
    flag: &'static str,
    s: &str,
    example: &'static str,
) -> Result<SocketAddr, ConfigError> {
    match s.trim().parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr),
        _ => Err(ConfigError::Stream {
            flag,
            value: s.to_owned(),
            example,
        }),
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || ConfigError::MacSyntax(s.to_owned());
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(ConfigError::MacMulticast(s.to_owned()));
    }
    Ok(mac)
}

/// A stable, locally administered MAC derived from the attachment, so a
/// restarted daemon reports the same address.
fn default_mac(tap: &str) -> [u8; 6] {
    // FNV-1a: small, stable across Rust versions.
    let mut h: u32 = 0x811c_9dc5;
    for b in tap.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["zcnet", "--socket-path", "/tmp/zc.sock", "--tap", "zctap0"];
        argv.extend_from_slice(extra);
        let a = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::try_from(a).map_err(|e| e.to_string())
    }

    #[test]
    fn the_ledger_is_named_after_the_socket_in_the_state_dir() {
        let c = args(&[]).unwrap();
        assert_eq!(c.ledger, PathBuf::from("/tmp/zc.sock.inflight"));
        let c = args(&["--state-dir", "/"]).unwrap();
        assert_eq!(c.ledger, PathBuf::from("/zc.sock.inflight"));
        assert!(args(&["--state-dir", "/no/such/dir"])
            .unwrap_err()
            .contains("--state-dir \"/no/such/dir\": not a directory"));
    }

    #[test]
    fn defaults_are_one_pair_and_a_stable_mac() {
        let c = args(&[]).unwrap();
        assert_eq!(c.queue_pairs, 1);
        assert_eq!(c.queue_size, 1024);
        assert_eq!(c.mac, args(&[]).unwrap().mac);
        assert_eq!(&c.mac[..3], &[0x52, 0x54, 0x00]);
        assert_eq!(c.mtu, None);
        assert_eq!(c.seccomp, SeccompMode::Enforce);
    }

    #[test]
    fn seccomp_modes() {
        assert_eq!(
            args(&["--seccomp", "log"]).unwrap().seccomp,
            SeccompMode::Log
        );
        assert_eq!(
            args(&["--seccomp", "off"]).unwrap().seccomp,
            SeccompMode::Off
        );
        assert_eq!(
            args(&["--seccomp", "enforce"]).unwrap().seccomp,
            SeccompMode::Enforce
        );
        let err = args(&["--seccomp", "strict"]).unwrap_err();
        assert!(err.contains("enforce, log, off"), "{err}");
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        assert!(args(&["--queue-pairs", "0"])
            .unwrap_err()
            .contains("from 1 to 32"));
        assert!(args(&["--queue-size", "1000"])
            .unwrap_err()
            .contains("power of two"));
        assert!(args(&["--mac", "52:54:00:12:34"])
            .unwrap_err()
            .contains("six hex bytes"));
        assert!(args(&["--mac", "01:00:5e:00:00:01"])
            .unwrap_err()
            .contains("multicast"));
        assert!(args(&["--mtu", "20"]).unwrap_err().contains("68 to 65535"));
        assert!(args(&["--metrics", "localhost"])
            .unwrap_err()
            .contains("--metrics"));
    }

    #[test]
    fn the_io_engine_is_chosen_at_start_up_unless_asked_for() {
        assert_eq!(args(&[]).unwrap().io_engine, None);
        assert_eq!(
            args(&["--io-engine", "syscall"]).unwrap().io_engine,
            Some(IoEngine::Syscall)
        );
        assert_eq!(
            args(&["--io-engine", "uring"]).unwrap().io_engine,
            Some(IoEngine::Uring)
        );
        assert!(args(&["--io-engine", "aio"]).unwrap_err().contains("uring"));
    }

    #[test]
    fn explicit_values_are_kept() {
        let c = args(&[
            "--queue-pairs",
            "2",
            "--mac",
            "52:54:00:ab:cd:ef",
            "--mtu",
            "9000",
        ])
        .unwrap();
        assert_eq!(c.queue_pairs, 2);
        assert_eq!(c.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(c.mtu, Some(9000));
    }

    #[test]
    fn udp_attachment_and_its_mistakes() {
        let parse = |argv: &[&str]| {
            let mut v = vec!["zcnet", "--socket-path", "/tmp/zc.sock"];
            v.extend_from_slice(argv);
            Args::try_parse_from(v)
                .map_err(|e| e.to_string())
                .and_then(|a| Config::try_from(a).map_err(|e| e.to_string()))
        };
        let c = parse(&["--udp", "10.0.0.1:7000,10.0.0.2:7001", "--vnet-hdr-peer"]).unwrap();
        assert_eq!(
            c.attachment,
            AttachmentConfig::Udp {
                local: "10.0.0.1:7000".parse().unwrap(),
                remote: "10.0.0.2:7001".parse().unwrap(),
                peer_hdr: true
            }
        );
        assert_eq!(c.zerocopy, ZeroCopyMode::Auto);
        assert!(parse(&["--udp", "10.0.0.1:7000"])
            .unwrap_err()
            .contains("LOCAL_IP:PORT,REMOTE_IP:PORT"));
        assert!(parse(&["--udp", "10.0.0.1:1,10.0.0.2:2", "--tap", "t0"])
            .unwrap_err()
            .contains("cannot be used with"));
        assert!(
            parse(&["--udp", "10.0.0.1:1,10.0.0.2:2", "--queue-pairs", "2"])
                .unwrap_err()
                .contains("one queue pair")
        );
        assert!(parse(&["--vnet-hdr-peer", "--tap", "t0"])
            .unwrap_err()
            .contains("--udp"));
        assert!(
            parse(&["--udp", "10.0.0.1:1,10.0.0.2:2", "--zerocopy", "maybe"])
                .unwrap_err()
                .contains("auto")
        );
    }

    fn parse(argv: &[&str]) -> Result<Config, String> {
        let mut v = vec!["zcnet", "--socket-path", "/tmp/zc.sock"];
        v.extend_from_slice(argv);
        Args::try_parse_from(v)
            .map_err(|e| e.to_string())
            .and_then(|a| Config::try_from(a).map_err(|e| e.to_string()))
    }

    #[test]
    fn stream_attachments_and_their_mistakes() {
        let c = parse(&["--stream-connect", "10.0.0.2:7000"]).unwrap();
        assert_eq!(
            c.attachment,
            AttachmentConfig::StreamConnect {
                remote: "10.0.0.2:7000".parse().unwrap(),
                peer_hdr: false
            }
        );
        let l = parse(&["--stream-listen", "[::]:7000", "--vnet-hdr-peer"]).unwrap();
        assert_eq!(
            l.attachment,
            AttachmentConfig::StreamListen {
                local: "[::]:7000".parse().unwrap(),
                peer_hdr: true
            }
        );
        assert_ne!(
            parse(&["--stream-connect", "10.0.0.1:7000"]).unwrap().mac,
            parse(&["--stream-listen", "10.0.0.1:7000"]).unwrap().mac,
            "the two ends of one stream need different MACs"
        );
        for (argv, want) in [
            (&["--stream-connect", "peer:7000"][..], "use IP:PORT"),
            (&["--stream-connect", "10.0.0.2"], "use IP:PORT"),
            (&["--stream-connect", "10.0.0.2:0"], "port from 1 to 65535"),
            (&["--stream-connect", "0.0.0.0:7000"], "not 0.0.0.0"),
            (&["--stream-listen", "10.0.0.1:0"], "--stream-listen"),
            (
                &["--stream-listen", "10.0.0.1:7000", "--queue-pairs", "2"],
                "--stream-listen carries one queue pair",
            ),
            (
                &[
                    "--stream-connect",
                    "10.0.0.2:7000",
                    "--stream-listen",
                    "10.0.0.1:7000",
                ],
                "cannot be used with",
            ),
            (
                &["--stream-connect", "10.0.0.2:7000", "--tap", "t0"],
                "cannot be used with",
            ),
            (
                &[
                    "--stream-listen",
                    "10.0.0.1:7000",
                    "--udp",
                    "10.0.0.1:1,10.0.0.2:2",
                ],
                "cannot be used with",
            ),
            (&["--tap", "t0", "--vnet-hdr-peer"], "--stream-connect"),
            (&[], "--stream-listen"),
        ] {
            let err = parse(argv).unwrap_err();
            assert!(err.contains(want), "{argv:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn vxlan_attachment_and_its_defaults() {
        let c = parse(&[
            "--vxlan-vni",
            "42",
            "--vxlan-local",
            "10.0.0.1",
            "--vxlan-remote",
            "10.0.0.2",
            "--vxlan-remote",
            "10.0.0.3:8472",
            "--vxlan-fdb",
            "52:54:00:aa:bb:cc=10.0.0.3",
            "--queue-pairs",
            "2",
        ])
        .unwrap();
        assert_eq!(
            c.attachment,
            AttachmentConfig::Vxlan(VxlanArgs {
                vni: 42,
                local: "10.0.0.1:4789".parse().unwrap(),
                remotes: vec![
                    "10.0.0.2:4789".parse().unwrap(),
                    "10.0.0.3:8472".parse().unwrap()
                ],
                fdb: vec![(
                    [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
                    "10.0.0.3:4789".parse().unwrap()
                )],
                ageing: Duration::from_secs(300),
            })
        );
        assert_eq!(c.queue_pairs, 2, "VXLAN carries several queue pairs");
        let v6 = parse(&[
            "--vxlan-vni",
            "16777215",
            "--vxlan-local",
            "[2001:db8::1]",
            "--vxlan-remote",
            "2001:db8::2",
            "--vxlan-ageing",
            "30",
        ])
        .unwrap();
        let AttachmentConfig::Vxlan(v) = v6.attachment else {
            panic!("not VXLAN")
        };
        assert_eq!(v.local, "[2001:db8::1]:4789".parse().unwrap());
        assert_eq!(v.remotes, ["[2001:db8::2]:4789".parse().unwrap()]);
        assert_eq!(v.ageing, Duration::from_secs(30));
    }

    #[test]
    fn vxlan_mistakes_say_what_to_fix() {
        let base = |extra: &[&'static str]| {
            let mut v = vec![
                "--vxlan-vni",
                "42",
                "--vxlan-local",
                "10.0.0.1",
                "--vxlan-remote",
                "10.0.0.2",
            ];
            v.extend_from_slice(extra);
            v
        };
        for (argv, want) in [
            (
                vec!["--vxlan-vni", "16777216", "--vxlan-local", "10.0.0.1"],
                "0 to 16777215",
            ),
            (vec!["--vxlan-vni", "x"], "--vxlan-vni"),
            (
                vec!["--vxlan-vni", "1", "--vxlan-remote", "10.0.0.2"],
                "needs --vxlan-local",
            ),
            (
                vec!["--vxlan-vni", "1", "--vxlan-local", "10.0.0.1"],
                "at least one --vxlan-remote",
            ),
            (vec!["--vxlan-remote", "10.0.0.2"], "--vxlan-vni"),
            (base(&["--vxlan-remote", "fe80::1"]), "one IP version"),
            (base(&["--vxlan-remote", "10.0.0.2"]), "given twice"),
            (base(&["--vxlan-remote", "239.1.1.1"]), "unicast address"),
            (base(&["--vxlan-remote", "0.0.0.0"]), "unicast address"),
            (base(&["--vxlan-remote", "host:4789"]), "use IP or IP:PORT"),
            (
                base(&["--vxlan-remote", "10.0.0.9:0"]),
                "port from 1 to 65535",
            ),
            (base(&["--vxlan-fdb", "52:54:00:aa:bb:cc"]), "MAC=IP[:PORT]"),
            (
                base(&["--vxlan-fdb", "52:54:00:aa:bb=10.0.0.2"]),
                "MAC=IP[:PORT]",
            ),
            (
                base(&["--vxlan-fdb", "01:00:5e:00:00:01=10.0.0.2"]),
                "unicast MAC",
            ),
            (
                base(&["--vxlan-fdb", "52:54:00:aa:bb:cc=[::1]"]),
                "one IP version",
            ),
            (base(&["--vxlan-ageing", "0"]), "from 1 to 1000000"),
            (base(&["--vnet-hdr-peer"]), "plain Ethernet frames"),
            (base(&["--tap", "t0"]), "cannot be used with"),
            (
                base(&["--udp", "10.0.0.1:1,10.0.0.2:2"]),
                "cannot be used with",
            ),
        ] {
            let err = parse(&argv).unwrap_err();
            assert!(err.contains(want), "{argv:?}: {err:?} lacks {want:?}");
        }
    }
}
