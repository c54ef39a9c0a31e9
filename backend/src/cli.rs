//! Command-line arguments and the validated configuration they become.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::Parser;
use thiserror::Error;

use crate::lending::ZeroCopyMode;

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
}

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
        Ok(Config {
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
            io_engine: a.io_engine,
        })
    }
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
    fn defaults_are_one_pair_and_a_stable_mac() {
        let c = args(&[]).unwrap();
        assert_eq!(c.queue_pairs, 1);
        assert_eq!(c.queue_size, 1024);
        assert_eq!(c.mac, args(&[]).unwrap().mac);
        assert_eq!(&c.mac[..3], &[0x52, 0x54, 0x00]);
        assert_eq!(c.mtu, None);
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
}
