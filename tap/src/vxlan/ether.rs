//! The inner Ethernet header: MAC addresses, the EtherType, and at most one
//! VLAN tag (IEEE 802.1Q, or an 802.1ad service tag).
//!
//! Only the 14-byte header (and a 4-byte tag) is looked at; the frame has
//! no FCS (RFC 7348 §5: "the inner Ethernet frame ... without FCS").

use std::fmt;

/// Length of an Ethernet header without a VLAN tag.
pub const ETH_HEADER_LEN: usize = 14;
/// Length of one VLAN tag (TPID and TCI).
pub const VLAN_TAG_LEN: usize = 4;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// TPID of an IEEE 802.1Q customer VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// TPID of an IEEE 802.1ad service VLAN tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The address in the first 6 bytes of `bytes`, if there are 6.
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        bytes.get(..6)?.try_into().ok().map(MacAddr)
    }

    /// The group bit (bit 0 of the first octet) is set: multicast or
    /// broadcast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Neither multicast nor all-zero: what the kernel's
    /// `is_valid_ether_addr` accepts as a frame's source.
    pub fn is_valid_source(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the Ethernet header (and its VLAN tag, if any) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtherHeader {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The VLAN ID (12 bits) of the one tag, if the frame has one.
    pub vlan: Option<u16>,
    /// The EtherType after the tag: what the payload is.
    pub ethertype: u16,
    /// Offset of the payload (the network header): 14, or 18 with a tag.
    pub payload_offset: usize,
}

impl EtherHeader {
    /// Parses the header at the start of `frame`; `None` if `frame` is too
    /// short for it (14 bytes, 18 with a tag). A second tag is not looked
    /// into: its TPID is returned as the EtherType.
    pub fn parse(frame: &[u8]) -> Option<EtherHeader> {
        let be16 = |i: usize| -> Option<u16> {
            Some(u16::from_be_bytes(frame.get(i..i + 2)?.try_into().ok()?))
        };
        let dst = MacAddr::from_slice(frame)?;
        let src = MacAddr::from_slice(frame.get(6..)?)?;
        let outer = be16(12)?;
        if outer == ETHERTYPE_VLAN || outer == ETHERTYPE_QINQ {
            let tci = be16(14)?;
            Some(EtherHeader {
                dst,
                src,
                vlan: Some(tci & 0x0fff),
                ethertype: be16(16)?,
                payload_offset: ETH_HEADER_LEN + VLAN_TAG_LEN,
            })
        } else {
            Some(EtherHeader {
                dst,
                src,
                vlan: None,
                ethertype: outer,
                payload_offset: ETH_HEADER_LEN,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_and_tagged_headers() {
        let mut f = vec![0u8; 18];
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let h = EtherHeader::parse(&f).unwrap();
        assert_eq!(h.dst, MacAddr([0x02, 0, 0, 0, 0, 1]));
        assert_eq!(h.src, MacAddr([0x02, 0, 0, 0, 0, 2]));
        assert_eq!((h.vlan, h.ethertype, h.payload_offset), (None, 0x0800, 14));

        f[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f[14..16].copy_from_slice(&0xe00au16.to_be_bytes()); // PCP 7, VID 10
        f[16..18].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let h = EtherHeader::parse(&f).unwrap();
        assert_eq!(
            (h.vlan, h.ethertype, h.payload_offset),
            (Some(10), 0x86dd, 18)
        );
        assert_eq!(EtherHeader::parse(&f[..17]), None);
        assert_eq!(EtherHeader::parse(&f[..13]), None);
    }

    #[test]
    fn address_classes() {
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_multicast());
        assert!(!MacAddr::default().is_valid_source());
        assert!(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]).is_valid_source());
        assert_eq!(
            MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]).to_string(),
            "52:54:00:12:34:56"
        );
    }
}
