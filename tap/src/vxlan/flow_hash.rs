//! The outer UDP source port: a hash of the inner flow, so that the
//! underlay's ECMP spreads flows over its paths while keeping each flow on
//! one path (RFC 7348 §5, "Source Port").
//!
//! The inner frame is parsed as far as its headers allow: Ethernet, at
//! most one VLAN tag, IPv4 or IPv6, and the TCP or UDP ports. The hash
//! covers the VLAN ID, both IP addresses, the protocol and both ports, as
//! the kernel's flow dissector does for `skb_get_hash`. A frame that is
//! not IP (ARP, say), or whose IP header is cut short, is hashed by its
//! MAC addresses and EtherType instead (the kernel's fallback in
//! `udp_flow_src_port` hashes the MACs). IPv4 fragments and IPv6 packets
//! with extension headers are hashed without ports, so every fragment of
//! a datagram takes the same path.
//!
//! # The port range
//! RFC 7348 §5 recommends the dynamic/private range 49152-65535 (RFC 6335),
//! which is zcnet's default, [`PortRange::DYNAMIC`]. The kernel's `vxlan`
//! device uses the host's `ip_local_port_range` (32768-60999 by default)
//! unless created with `srcport MIN MAX`; [`PortRange::LINUX_EPHEMERAL`] is
//! that range, for a fabric tuned to the kernel's choice. The kernel maps
//! its hash to `[min, max)`; zcnet maps to `[min, max]`, both ends used.
//!
//! The hash is seeded (pick the seed at random when the attachment starts),
//! so the mapping from flows to paths is not predictable from outside.

use thiserror::Error;

use super::ether::{EtherHeader, ETHERTYPE_IPV4, ETHERTYPE_IPV6};

/// Enough of a frame to find its flow: Ethernet (14), one VLAN tag (4),
/// the longest IPv4 header (60) and the two ports (4).
pub const FLOW_HEADER_BYTES: usize = 14 + 4 + 60 + 4;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// An inclusive range of UDP source ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    min: u16,
    max: u16,
}

/// A port range that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("source port range {min}-{max} is empty or includes port 0")]
pub struct PortRangeError {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// 49152-65535, the dynamic/private ports (RFC 6335), as RFC 7348 §5
    /// recommends. zcnet's default.
    pub const DYNAMIC: PortRange = PortRange {
        min: 49152,
        max: 65535,
    };
    /// 32768-60999, Linux's default `net.ipv4.ip_local_port_range`, which
    /// the kernel's `vxlan` device draws from.
    pub const LINUX_EPHEMERAL: PortRange = PortRange {
        min: 32768,
        max: 60999,
    };

    /// `min..=max`; fails if empty or if it includes port 0.
    pub const fn new(min: u16, max: u16) -> Result<PortRange, PortRangeError> {
        if min == 0 || min > max {
            Err(PortRangeError { min, max })
        } else {
            Ok(PortRange { min, max })
        }
    }

    pub const fn min(&self) -> u16 {
        self.min
    }

    pub const fn max(&self) -> u16 {
        self.max
    }

    /// How many ports the range holds.
    pub const fn len(&self) -> u32 {
        (self.max - self.min) as u32 + 1
    }

    /// Always false: a range holds at least one port.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// The port a 32-bit hash falls on: `min + hash * len / 2^32`.
    const fn pick(&self, hash32: u32) -> u16 {
        self.min + ((hash32 as u64 * self.len() as u64) >> 32) as u16
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::DYNAMIC
    }
}

/// The fields of an inner frame that name its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKey {
    /// An IP packet. Addresses are 16 bytes; an IPv4 address fills the
    /// first 4. `ports` is `None` for other protocols, fragments, IPv6
    /// extension headers, or a frame cut short before the ports.
    Ip {
        vlan: Option<u16>,
        src: [u8; 16],
        dst: [u8; 16],
        protocol: u8,
        ports: Option<(u16, u16)>,
    },
    /// Not IP, or an IP header cut short: the Ethernet header.
    Ethernet {
        vlan: Option<u16>,
        src: [u8; 6],
        dst: [u8; 6],
        ethertype: u16,
    },
    /// Shorter than an Ethernet header.
    Runt,
}

impl FlowKey {
    /// The flow of the frame whose first bytes are `frame` (give it at
    /// least [`FLOW_HEADER_BYTES`] when the frame has them). Never fails:
    /// what cannot be parsed falls back as the module doc says.
    pub fn of(frame: &[u8]) -> FlowKey {
        let Some(eth) = EtherHeader::parse(frame) else {
            return FlowKey::Runt;
        };
        let l3 = &frame[eth.payload_offset..];
        let ip = match eth.ethertype {
            ETHERTYPE_IPV4 => Self::ipv4(l3, eth.vlan),
            ETHERTYPE_IPV6 => Self::ipv6(l3, eth.vlan),
            _ => None,
        };
        ip.unwrap_or(FlowKey::Ethernet {
            vlan: eth.vlan,
            src: eth.src.0,
            dst: eth.dst.0,
            ethertype: eth.ethertype,
        })
    }

    fn ipv4(p: &[u8], vlan: Option<u16>) -> Option<FlowKey> {
        let ihl = usize::from(*p.first()? & 0x0f) * 4;
        if *p.first()? >> 4 != 4 || ihl < 20 || p.len() < 20 {
            return None;
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&p[12..16]);
        dst[..4].copy_from_slice(&p[16..20]);
        let protocol = p[9];
        let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0; // MF or offset
        let ports = if fragment {
            None
        } else {
            Self::ports(p, ihl, protocol)
        };
        Some(FlowKey::Ip {
            vlan,
            src,
            dst,
            protocol,
            ports,
        })
    }

    fn ipv6(p: &[u8], vlan: Option<u16>) -> Option<FlowKey> {
        if p.len() < 40 || p[0] >> 4 != 6 {
            return None;
        }
        let protocol = p[6];
        Some(FlowKey::Ip {
            vlan,
            src: p[8..24].try_into().ok()?,
            dst: p[24..40].try_into().ok()?,
            protocol,
            ports: Self::ports(p, 40, protocol),
        })
    }

    fn ports(p: &[u8], l4: usize, protocol: u8) -> Option<(u16, u16)> {
        if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
            return None;
        }
        let b = p.get(l4..l4 + 4)?;
        Some((
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ))
    }
}

/// Maps inner flows to outer UDP source ports.
#[derive(Clone, Copy, Debug)]
pub struct FlowHasher {
    seed: u64,
    range: PortRange,
}

/// The 64-bit finaliser of MurmurHash3: a bijection whose every output bit
/// depends on every input bit.
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl FlowHasher {
    pub const fn new(seed: u64, range: PortRange) -> FlowHasher {
        FlowHasher { seed, range }
    }

    pub const fn range(&self) -> PortRange {
        self.range
    }

    /// The 64-bit hash of `key` under this hasher's seed.
    pub fn hash(&self, key: &FlowKey) -> u64 {
        let mut h = fmix64(self.seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut word = |w: u64| h = fmix64(h ^ w);
        let vlan = |v: Option<u16>| v.map_or(0, |v| u64::from(v) | 1 << 16);
        match *key {
            FlowKey::Ip {
                vlan: v,
                src,
                dst,
                protocol,
                ports,
            } => {
                for half in [&src[..8], &src[8..], &dst[..8], &dst[8..]] {
                    word(u64::from_be_bytes(half.try_into().unwrap_or_default()));
                }
                let (sport, dport) = ports.unwrap_or_default();
                word(
                    1 << 56
                        | u64::from(protocol) << 48
                        | u64::from(sport) << 32
                        | u64::from(dport) << 16,
                );
                word(vlan(v));
            }
            FlowKey::Ethernet {
                vlan: v,
                src,
                dst,
                ethertype,
            } => {
                let mac =
                    |m: [u8; 6]| u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]]);
                word(2 << 56 | mac(src));
                word(mac(dst) << 16 | u64::from(ethertype));
                word(vlan(v));
            }
            FlowKey::Runt => word(3 << 56),
        }
        h
    }

    /// The outer UDP source port for the frame whose first bytes are
    /// `frame` (at least [`FLOW_HEADER_BYTES`] of it when it has them):
    /// the same flow always gets the same port.
    pub fn source_port(&self, frame: &[u8]) -> u16 {
        self.range
            .pick((self.hash(&FlowKey::of(frame)) >> 32) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u64 = 0x5eed_0f2c_0e2e_7a11;

    fn eth(ethertype: u16, vlan: Option<u16>) -> Vec<u8> {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2];
        if let Some(v) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = eth(ETHERTYPE_IPV4, None);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[8] = 64;
        ip[9] = protocol;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.resize(f.len() + 16, 0);
        f
    }

    fn ipv6(src_last: u16, dst_last: u16, protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = eth(ETHERTYPE_IPV6, None);
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[6] = protocol;
        ip[7] = 64;
        ip[8..10].copy_from_slice(&[0x20, 0x01]);
        ip[22..24].copy_from_slice(&src_last.to_be_bytes());
        ip[24..26].copy_from_slice(&[0x20, 0x01]);
        ip[38..40].copy_from_slice(&dst_last.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn parses_the_five_tuple() {
        let f = ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 40000, 80);
        let FlowKey::Ip {
            src,
            dst,
            protocol,
            ports,
            vlan,
        } = FlowKey::of(&f)
        else {
            panic!("not IP");
        };
        assert_eq!(
            (&src[..4], &dst[..4]),
            (&[10, 0, 0, 1][..], &[10, 0, 0, 2][..])
        );
        assert_eq!((protocol, ports, vlan), (6, Some((40000, 80)), None));

        let f = ipv6(1, 2, IPPROTO_UDP, 5000, 53);
        assert!(matches!(
            FlowKey::of(&f),
            FlowKey::Ip {
                protocol: 17,
                ports: Some((5000, 53)),
                ..
            }
        ));
    }

    #[test]
    fn fallbacks() {
        // ARP: by MACs.
        let mut arp = eth(0x0806, Some(7));
        arp.resize(60, 0);
        assert!(matches!(
            FlowKey::of(&arp),
            FlowKey::Ethernet {
                ethertype: 0x0806,
                vlan: Some(7),
                ..
            }
        ));
        // An IPv4 header cut short: by MACs.
        let f = ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 1, 2);
        assert!(matches!(FlowKey::of(&f[..30]), FlowKey::Ethernet { .. }));
        // Ports cut short: the addresses still count.
        assert!(matches!(
            FlowKey::of(&f[..35]),
            FlowKey::Ip { ports: None, .. }
        ));
        // ICMP has no ports.
        let f = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 1, 1, 2);
        assert!(matches!(
            FlowKey::of(&f),
            FlowKey::Ip {
                ports: None,
                protocol: 1,
                ..
            }
        ));
        // A non-first fragment, and a first fragment (MF): no ports.
        let mut f = ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_UDP, 1, 2);
        f[14 + 6] = 0x20;
        assert!(matches!(FlowKey::of(&f), FlowKey::Ip { ports: None, .. }));
        f[14 + 6] = 0x00;
        f[14 + 7] = 0x10;
        assert!(matches!(FlowKey::of(&f), FlowKey::Ip { ports: None, .. }));
        // An IPv6 extension header (hop-by-hop): no ports.
        let f = ipv6(1, 2, 0, 1, 2);
        assert!(matches!(FlowKey::of(&f), FlowKey::Ip { ports: None, .. }));
        assert_eq!(FlowKey::of(&[0u8; 13]), FlowKey::Runt);
        // A bad IHL is not IP.
        let mut f = ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 1, 2);
        f[14] = 0x44;
        assert!(matches!(FlowKey::of(&f), FlowKey::Ethernet { .. }));
    }

    #[test]
    fn the_same_flow_gets_the_same_port_and_each_field_counts() {
        let h = FlowHasher::new(SEED, PortRange::DYNAMIC);
        let base = ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 40000, 80);
        let p = h.source_port(&base);
        assert!((49152..=65535).contains(&p));
        assert_eq!(h.source_port(&base), p);
        // Payload bytes past the headers do not count.
        let mut more = base.clone();
        more.extend_from_slice(&[0xaa; 100]);
        assert_eq!(h.source_port(&more), p);

        let variants = [
            ipv4([10, 0, 0, 9], [10, 0, 0, 2], IPPROTO_TCP, 40000, 80),
            ipv4([10, 0, 0, 1], [10, 0, 0, 9], IPPROTO_TCP, 40000, 80),
            ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_UDP, 40000, 80),
            ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 40001, 80),
            ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 40000, 81),
        ];
        let key = FlowKey::of(&base);
        for v in &variants {
            assert_ne!(h.hash(&FlowKey::of(v)), h.hash(&key));
        }
        // The VLAN counts.
        let tagged = |vlan| {
            let mut f = eth(ETHERTYPE_IPV4, Some(vlan));
            f.extend_from_slice(&base[14..]);
            h.hash(&FlowKey::of(&f))
        };
        assert_ne!(tagged(10), tagged(11));
        assert_ne!(tagged(0), h.hash(&key), "a VLAN 0 tag is not no tag");
        // Another seed, another mapping.
        assert_ne!(
            FlowHasher::new(SEED + 1, PortRange::DYNAMIC).hash(&key),
            h.hash(&key)
        );
    }

    /// Pearson's chi-squared statistic of `ports` over 16 equal buckets of
    /// `range`.
    fn chi_squared(ports: &[u16], range: PortRange) -> f64 {
        let mut buckets = [0u32; 16];
        for &p in ports {
            assert!((range.min()..=range.max()).contains(&p));
            let i = (u64::from(p - range.min()) * 16 / u64::from(range.len())) as usize;
            buckets[i] += 1;
        }
        let expected = ports.len() as f64 / 16.0;
        buckets
            .iter()
            .map(|&n| (f64::from(n) - expected).powi(2) / expected)
            .sum()
    }

    /// 4096 TCP flows that differ only in their client address and port
    /// (the usual fan-in to one server) spread evenly: the chi-squared
    /// statistic over 16 buckets stays below 37.70, the 0.1% critical
    /// value for 15 degrees of freedom, for each of 8 seeds and both
    /// ranges, and nearly every flow gets a port of its own.
    #[test]
    fn flows_spread_over_the_range() {
        let flows: Vec<Vec<u8>> = (0..4096u32)
            .map(|i| {
                let [_, _, hi, lo] = i.to_be_bytes();
                ipv4(
                    [10, 0, hi, lo],
                    [10, 1, 0, 1],
                    IPPROTO_TCP,
                    1024 + i as u16,
                    443,
                )
            })
            .collect();
        for range in [PortRange::DYNAMIC, PortRange::LINUX_EPHEMERAL] {
            for seed in 0..8u64 {
                let h = FlowHasher::new(seed.wrapping_mul(0x1234_5678_9abc_def1), range);
                let ports: Vec<u16> = flows.iter().map(|f| h.source_port(f)).collect();
                let chi2 = chi_squared(&ports, range);
                assert!(chi2 < 37.70, "seed {seed}, {range:?}: chi2 {chi2}");
                let mut distinct = ports.clone();
                distinct.sort_unstable();
                distinct.dedup();
                // Expected for 4096 balls in 16384 bins: 16384 * (1 - e^-0.25) = 3625.
                assert!(
                    distinct.len() > 3400,
                    "seed {seed}: only {} ports",
                    distinct.len()
                );
            }
        }
        // IPv6 flows and non-IP flows spread too.
        let h = FlowHasher::new(SEED, PortRange::DYNAMIC);
        let v6: Vec<u16> = (0..4096u16)
            .map(|i| h.source_port(&ipv6(i, 1, IPPROTO_TCP, 50000, 443)))
            .collect();
        assert!(chi_squared(&v6, PortRange::DYNAMIC) < 37.70);
        let l2: Vec<u16> = (0..4096u16)
            .map(|i| {
                let mut f = eth(0x0806, None);
                f[10..12].copy_from_slice(&i.to_be_bytes());
                h.source_port(&f)
            })
            .collect();
        assert!(chi_squared(&l2, PortRange::DYNAMIC) < 37.70);
    }

    #[test]
    fn hashing_allocates_nothing() {
        let h = FlowHasher::new(SEED, PortRange::DYNAMIC);
        let frames = [
            ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 1, 2),
            ipv6(1, 2, IPPROTO_UDP, 3, 4),
            eth(0x0806, Some(3)),
        ];
        let n = zcnet_harness::alloc::allocations(|| {
            for f in &frames {
                h.source_port(f);
            }
        });
        assert_eq!(n, 0);
    }

    #[test]
    fn ranges() {
        assert_eq!(
            PortRange::new(0, 10),
            Err(PortRangeError { min: 0, max: 10 })
        );
        assert_eq!(
            PortRange::new(20, 10),
            Err(PortRangeError { min: 20, max: 10 })
        );
        let one = PortRange::new(4000, 4000).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(FlowHasher::new(SEED, one).source_port(&[0u8; 60]), 4000);
        // Both ends of a range are reachable.
        let r = PortRange::DYNAMIC;
        assert_eq!(r.pick(0), 49152);
        assert_eq!(r.pick(u32::MAX), 65535);
        assert_eq!(PortRange::LINUX_EPHEMERAL.pick(u32::MAX), 60999);
        assert_eq!(PortRange::default(), PortRange::DYNAMIC);
    }
}
