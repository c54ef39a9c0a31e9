//! The VXLAN header (RFC 7348 §5): encoding it for TX, and checking a
//! received datagram before its inner frame goes to the guest.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! # What is accepted
//! RFC 7348 §5 says reserved bits "MUST be set to zero on transmission and
//! ignored on receipt". The kernel's `vxlan_rcv`
//! (`drivers/net/vxlan/vxlan_core.c`) does not ignore them: it drops a
//! datagram without the I bit, then one whose VNI names no device, then
//! one with any bit set outside the I flag and the 24-bit VNI (its
//! `reserved_bits` default, from `vxlan_nl2conf`, is everything the
//! enabled extensions do not use; with no GBP, GPE or RCO that is all of
//! them), "for backwards compatibility" and so that a peer speaking an
//! extension zcnet does not know is not misread as plain VXLAN. zcnet does
//! the same, in the same order, and also drops an inner frame too short to
//! hold an Ethernet header (the kernel's `__iptunnel_pull_header` fails
//! without `ETH_HLEN` bytes after the VXLAN header).

use std::net::SocketAddr;
use std::ops::Range;

use thiserror::Error;

use super::ether::ETH_HEADER_LEN;

/// IANA's UDP port for VXLAN (RFC 7348 §5). The Linux `vxlan` device uses
/// 8472 unless created with `dstport 4789`.
pub const VXLAN_PORT: u16 = 4789;
/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid (RFC 7348 §5). The only flag zcnet sends.
pub const VXLAN_FLAG_I: u8 = 0x08;
/// Bytes VXLAN adds around an inner IP packet over an IPv4 underlay:
/// outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). The kernel's
/// `VXLAN_HEADROOM`: a `vxlan` device's MTU is its lower device's minus this.
pub const VXLAN_OVERHEAD_IPV4: usize = 50;
/// The same over an IPv6 underlay (outer IPv6 header of 40 bytes):
/// the kernel's `VXLAN6_HEADROOM`.
pub const VXLAN_OVERHEAD_IPV6: usize = 70;
/// Length of the UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// A 24-bit VXLAN Network Identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

/// A VNI that does not fit 24 bits.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("VNI {0} does not fit 24 bits (0..=16777215)")]
pub struct VniOutOfRange(pub u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: u32 = 0x00ff_ffff;

    /// `value` as a VNI; fails above [`Vni::MAX`].
    pub const fn new(value: u32) -> Result<Vni, VniOutOfRange> {
        if value > Self::MAX {
            Err(VniOutOfRange(value))
        } else {
            Ok(Vni(value))
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

/// The 8-byte header in front of every inner frame zcnet sends: the I flag,
/// `vni`, every reserved bit zero (RFC 7348 §5).
pub const fn encode(vni: Vni) -> [u8; VXLAN_HEADER_LEN] {
    let v = vni.0.to_be_bytes();
    [VXLAN_FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// Why a received datagram was dropped. The order of the variants is the
/// order of the checks (the kernel's, see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the 8-byte VXLAN header.
    TooShort,
    /// The I flag is clear: no VNI (the kernel: `VXLAN_INVALID_HDR`).
    NoVniFlag,
    /// The VNI is not ours (the kernel: `VXLAN_VNI_NOT_FOUND`).
    WrongVni,
    /// A reserved bit is set: flags other than I, or a reserved byte
    /// (the kernel: `VXLAN_INVALID_HDR`, counted as `rx_frame_errors`).
    ReservedBits,
    /// The inner frame is shorter than an Ethernet header (14 bytes).
    InnerTooShort,
}

impl DropReason {
    /// Every reason, in check order (to register one metric per reason).
    pub const ALL: [DropReason; 5] = [
        DropReason::TooShort,
        DropReason::NoVniFlag,
        DropReason::WrongVni,
        DropReason::ReservedBits,
        DropReason::InnerTooShort,
    ];

    /// A stable snake_case label for per-reason metrics. Never changes
    /// once released: dashboards depend on it.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::NoVniFlag => "no_vni_flag",
            DropReason::WrongVni => "wrong_vni",
            DropReason::ReservedBits => "reserved_bits",
            DropReason::InnerTooShort => "inner_too_short",
        }
    }
}

/// Checks a received VXLAN datagram (the UDP payload) and returns where its
/// inner Ethernet frame lies: `8..datagram_len`.
///
/// `head` is the start of the datagram as received into zcnet's memory;
/// the rest may already be in the guest's buffers. Only `head[..8]` is
/// read, so `head` may be the whole datagram or just its first 8 bytes. A
/// `head` shorter than 8 bytes is reported as [`DropReason::TooShort`].
/// `datagram_len` is the datagram's real length (`recvmsg` with
/// `MSG_TRUNC`), which the caller must check against its buffers.
pub fn decapsulate(
    head: &[u8],
    datagram_len: usize,
    ours: Vni,
) -> Result<Range<usize>, DropReason> {
    let Some(h) = head
        .get(..VXLAN_HEADER_LEN)
        .filter(|_| datagram_len >= VXLAN_HEADER_LEN)
    else {
        return Err(DropReason::TooShort);
    };
    if h[0] & VXLAN_FLAG_I == 0 {
        return Err(DropReason::NoVniFlag);
    }
    let vni = u32::from_be_bytes([0, h[4], h[5], h[6]]);
    if vni != ours.get() {
        return Err(DropReason::WrongVni);
    }
    if h[0] != VXLAN_FLAG_I || h[1..4] != [0, 0, 0] || h[7] != 0 {
        return Err(DropReason::ReservedBits);
    }
    if datagram_len - VXLAN_HEADER_LEN < ETH_HEADER_LEN {
        return Err(DropReason::InnerTooShort);
    }
    Ok(VXLAN_HEADER_LEN..datagram_len)
}

/// The IP version of the network between the VTEPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    Ipv4,
    Ipv6,
}

impl Underlay {
    /// The underlay of a VTEP at `addr`.
    pub const fn of(addr: &SocketAddr) -> Underlay {
        match addr {
            SocketAddr::V4(_) => Underlay::Ipv4,
            SocketAddr::V6(_) => Underlay::Ipv6,
        }
    }

    /// Length of the outer IP header (no options, no extension headers).
    pub const fn ip_header_len(self) -> usize {
        match self {
            Underlay::Ipv4 => 20,
            Underlay::Ipv6 => 40,
        }
    }

    /// [`VXLAN_OVERHEAD_IPV4`] or [`VXLAN_OVERHEAD_IPV6`].
    pub const fn overhead(self) -> usize {
        match self {
            Underlay::Ipv4 => VXLAN_OVERHEAD_IPV4,
            Underlay::Ipv6 => VXLAN_OVERHEAD_IPV6,
        }
    }

    /// The largest inner IP packet that fits one underlay packet of
    /// `underlay_mtu` bytes: the MTU minus 50 (IPv4) or 70 (IPv6), as the
    /// kernel sizes a `vxlan` device. This is the MTU to offer the guest
    /// (`VIRTIO_NET_F_MTU`). `None` if the MTU cannot carry the overhead.
    pub const fn inner_mtu(self, underlay_mtu: usize) -> Option<usize> {
        underlay_mtu.checked_sub(self.overhead())
    }

    /// The largest inner Ethernet frame, header and any VLAN tag included,
    /// that fits one underlay packet: the MTU minus the outer IP, UDP and
    /// VXLAN headers (36 bytes over IPv4, 56 over IPv6). A tagged frame
    /// therefore carries 4 bytes less IP than [`inner_mtu`](Self::inner_mtu)
    /// says. `None` if the MTU cannot carry the headers.
    pub const fn max_inner_frame(self, underlay_mtu: usize) -> Option<usize> {
        underlay_mtu.checked_sub(self.ip_header_len() + UDP_HEADER_LEN + VXLAN_HEADER_LEN)
    }

    /// The most UDP payload one `sendmsg` may carry, `UDP_SEGMENT` or not:
    /// 65535 - 20 - 8 = 65507 bytes over IPv4 (`__ip_append_data` with
    /// `mtu = IP_MAX_MTU` for GSO), 65535 - 8 = 65527 over IPv6
    /// (`__ip6_append_data`, `IP6_MAX_MTU` less the IPv6 header).
    pub const fn max_udp_payload(self) -> usize {
        match self {
            Underlay::Ipv4 => 65535 - 20 - UDP_HEADER_LEN,
            Underlay::Ipv6 => 65535 - UDP_HEADER_LEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    fn datagram(header: [u8; 8], inner_len: usize) -> Vec<u8> {
        let mut d = header.to_vec();
        d.resize(8 + inner_len, 0xab);
        d
    }

    #[test]
    fn encodes_the_rfc_layout() {
        assert_eq!(encode(vni(0x123456)), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(encode(vni(0)), [0x08, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(vni(Vni::MAX)), [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
        assert_eq!(Vni::new(1 << 24), Err(VniOutOfRange(1 << 24)));
    }

    #[test]
    fn accepts_its_own_encoding_and_returns_the_inner_frame() {
        let d = datagram(encode(vni(42)), 60);
        assert_eq!(decapsulate(&d, d.len(), vni(42)), Ok(8..68));
        // Only the header in zcnet's memory, the rest already in the guest.
        assert_eq!(decapsulate(&d[..8], d.len(), vni(42)), Ok(8..68));
        // Exactly an Ethernet header inside.
        let d = datagram(encode(vni(42)), 14);
        assert_eq!(decapsulate(&d, d.len(), vni(42)), Ok(8..22));
    }

    #[test]
    fn each_drop_reason() {
        let ok = encode(vni(42));
        let d = datagram(ok, 60);
        assert_eq!(decapsulate(&d[..7], 7, vni(42)), Err(DropReason::TooShort));
        assert_eq!(decapsulate(&[], 0, vni(42)), Err(DropReason::TooShort));
        // A head cut short by the caller is not read past.
        assert_eq!(
            decapsulate(&d[..5], d.len(), vni(42)),
            Err(DropReason::TooShort)
        );

        let mut h = ok;
        h[0] = 0;
        assert_eq!(decapsulate(&h, 68, vni(42)), Err(DropReason::NoVniFlag));
        h[0] = 0x80; // some other flag, still no I
        assert_eq!(decapsulate(&h, 68, vni(42)), Err(DropReason::NoVniFlag));

        assert_eq!(decapsulate(&ok, 68, vni(43)), Err(DropReason::WrongVni));

        for (byte, value) in [
            (0, 0x08 | 0x80),
            (0, 0x08 | 0x01),
            (1, 1),
            (2, 0x80),
            (3, 1),
            (7, 1),
        ] {
            let mut h = ok;
            h[byte] = value;
            assert_eq!(
                decapsulate(&h, 68, vni(42)),
                Err(DropReason::ReservedBits),
                "byte {byte} = {value:#x}"
            );
        }

        assert_eq!(decapsulate(&ok, 8, vni(42)), Err(DropReason::InnerTooShort));
        assert_eq!(
            decapsulate(&ok, 21, vni(42)),
            Err(DropReason::InnerTooShort)
        );
    }

    #[test]
    fn checks_run_in_the_kernels_order() {
        // No I flag and a wrong VNI: the flag is checked first.
        let h = [0, 0, 0, 0, 0, 0, 7, 0];
        assert_eq!(decapsulate(&h, 68, vni(42)), Err(DropReason::NoVniFlag));
        // Reserved bits and a wrong VNI: the VNI is looked up first.
        let h = [0x0c, 0, 0, 0, 0, 0, 7, 0];
        assert_eq!(decapsulate(&h, 68, vni(42)), Err(DropReason::WrongVni));
        // Reserved bits and a short inner frame: the header comes first.
        let h = [0x08, 0, 0, 0, 0, 0, 42, 1];
        assert_eq!(decapsulate(&h, 9, vni(42)), Err(DropReason::ReservedBits));
    }

    #[test]
    fn labels_are_stable_and_distinct() {
        let labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "too_short",
                "no_vni_flag",
                "wrong_vni",
                "reserved_bits",
                "inner_too_short"
            ]
        );
    }

    #[test]
    fn underlay_sizes() {
        assert_eq!(Underlay::Ipv4.inner_mtu(1500), Some(1450));
        assert_eq!(Underlay::Ipv6.inner_mtu(1500), Some(1430));
        assert_eq!(Underlay::Ipv4.max_inner_frame(1500), Some(1464));
        assert_eq!(Underlay::Ipv6.max_inner_frame(1500), Some(1444));
        // The inner frame is the inner IP packet plus its Ethernet header.
        for u in [Underlay::Ipv4, Underlay::Ipv6] {
            assert_eq!(
                u.max_inner_frame(9000).unwrap() - ETH_HEADER_LEN,
                u.inner_mtu(9000).unwrap()
            );
        }
        assert_eq!(Underlay::Ipv4.inner_mtu(40), None);
        assert_eq!(Underlay::Ipv4.max_udp_payload(), 65507);
        assert_eq!(Underlay::Ipv6.max_udp_payload(), 65527);
        assert_eq!(Underlay::of(&"[::1]:4789".parse().unwrap()), Underlay::Ipv6);
    }
}
