//! Command-line arguments and the validated configuration they become.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use thiserror::Error;

/// The most queue pairs: one worker thread each, and the vhost-user
/// worker map holds 64 queues.
pub const MAX_QUEUE_PAIRS: usize = 32;

/// zcnet: a vhost-user virtio-net backend for QEMU and cloud-hypervisor.
#[derive(Debug, Parser)]
#[command(name = "zcnet", version, about)]
pub struct Args {
    /// Path of the vhost-user Unix socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub socket_path: PathBuf,
    /// Tap device to attach to: opened if it exists (make it with `ip tuntap
    /// add dev NAME mode tap multi_queue vnet_hdr`), otherwise created.
    #[arg(long, value_name = "NAME")]
    pub tap: String,
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
}

/// A configuration zcnet can run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub socket_path: PathBuf,
    pub tap: String,
    pub queue_pairs: usize,
    pub queue_size: u16,
    pub mac: [u8; 6],
    pub mtu: Option<u16>,
    pub metrics: Option<SocketAddr>,
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
        if a.tap.is_empty() || a.tap.len() > 15 || a.tap.contains(['/', ' ', '\0']) {
            return Err(ConfigError::TapName(a.tap));
        }
        let mtu = match a.mtu {
            Some(m) if !(68..=65535).contains(&m) => return Err(ConfigError::Mtu(m)),
            m => m.map(|m| m as u16),
        };
        let mac = match a.mac {
            Some(s) => parse_mac(&s)?,
            None => default_mac(&a.tap),
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
            tap: a.tap,
            queue_pairs: a.queue_pairs,
            queue_size: a.queue_size as u16,
            mac,
            mtu,
            metrics: a.metrics,
        })
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

/// A stable, locally administered MAC derived from the tap name, so a
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
}
