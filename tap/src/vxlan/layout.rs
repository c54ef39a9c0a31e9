//! Where the headers of a guest's TSO frame are: Ethernet (and at most one
//! VLAN tag), then IPv4 without options or IPv6 without extension headers,
//! then TCP. Everything is checked, since the guest wrote it.
//!
//! What is refused, and why:
//! - IPv4 options, IPv6 extension headers: each segment would need them
//!   copied and some of them rewritten; Linux guests do not put them on
//!   TSO frames.
//! - IPv4 fragments: a fragment cannot be segmented.
//! - An IP version other than the GSO type's (the kernel's
//!   `virtio_net_hdr_match_proto`).

use std::fmt;

use thiserror::Error;

use super::ether::{EtherHeader, ETHERTYPE_IPV4, ETHERTYPE_IPV6};

/// IANA protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the IPv6 fixed header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of a TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;
/// The longest headers a TSO frame can have: Ethernet, a VLAN tag, IPv6,
/// and TCP with 40 bytes of options. A caller that copies this many bytes
/// (or the whole frame, if shorter) always gives the parser enough.
pub const MAX_HEADERS_LEN: usize = 14 + 4 + IPV6_HEADER_LEN + 60;

/// The IP version of the inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpVersion::V4 => "IPv4",
            IpVersion::V6 => "IPv6",
        })
    }
}

/// Offsets of the headers in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpLayout {
    pub ip: IpVersion,
    /// Offset of the IP header (14, or 18 with a VLAN tag).
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
    /// Length of all headers: where the TCP payload starts.
    pub hdr_len: usize,
}

/// How a TSO frame's headers are unusable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("headers need {need} bytes but only {have} were given")]
    Truncated { need: usize, have: usize },
    #[error("headers of {hdr_len} bytes do not fit the {frame_len}-byte frame")]
    BeyondFrame { hdr_len: usize, frame_len: usize },
    #[error("EtherType {0:#06x} is not IPv4 or IPv6 (at most one VLAN tag is understood)")]
    Ethertype(u16),
    #[error("the GSO type says {expected} but the frame carries {found}")]
    VersionMismatch {
        expected: IpVersion,
        found: &'static str,
    },
    #[error("IPv4 header length field {ihl} (×4 bytes): only 5, no options, is supported")]
    Ipv4HeaderLen { ihl: u8 },
    #[error("an IPv4 fragment cannot be segmented")]
    Ipv4Fragment,
    #[error("IPv6 next header {next_header}: extension headers are not supported")]
    Ipv6ExtensionHeaders { next_header: u8 },
    #[error("IP protocol {protocol} is not TCP")]
    NotTcp { protocol: u8 },
    #[error("TCP data offset {data_offset} (×4 bytes) is shorter than a TCP header")]
    TcpHeaderLen { data_offset: u8 },
}

/// IPv6 next-header values that are extension headers (RFC 8200 §4, plus
/// Mobility 135, HIP 139, Shim6 140, ESP 50, AH 51).
const IPV6_EXTENSION_HEADERS: [u8; 9] = [0, 43, 44, 50, 51, 60, 135, 139, 140];

impl TcpLayout {
    /// Parses the headers at the start of `headers` (a copy of the frame's
    /// first bytes, at least [`MAX_HEADERS_LEN`] of them or the whole
    /// frame) of a frame of `frame_len` bytes, expecting IP version `ip`.
    pub fn parse(
        headers: &[u8],
        frame_len: usize,
        ip: IpVersion,
    ) -> Result<TcpLayout, LayoutError> {
        let have = headers.len().min(frame_len);
        let headers = &headers[..have];
        let need = |n: usize| -> Result<(), LayoutError> {
            if n > frame_len {
                Err(LayoutError::BeyondFrame {
                    hdr_len: n,
                    frame_len,
                })
            } else if n > have {
                Err(LayoutError::Truncated { need: n, have })
            } else {
                Ok(())
            }
        };
        let Some(eth) = EtherHeader::parse(headers) else {
            // Too short: for an untagged header (14 bytes) or a tagged one (18).
            let n = if have >= 14 { 18 } else { 14 };
            need(n)?;
            return Err(LayoutError::Truncated { need: n, have });
        };
        let l3 = eth.payload_offset;
        let mismatch = |found| LayoutError::VersionMismatch {
            expected: ip,
            found,
        };
        match (eth.ethertype, ip) {
            (ETHERTYPE_IPV4, IpVersion::V4) | (ETHERTYPE_IPV6, IpVersion::V6) => {}
            (ETHERTYPE_IPV4, IpVersion::V6) => return Err(mismatch("IPv4")),
            (ETHERTYPE_IPV6, IpVersion::V4) => return Err(mismatch("IPv6")),
            (other, _) => return Err(LayoutError::Ethertype(other)),
        }
        let (l4, protocol) = match ip {
            IpVersion::V4 => {
                need(l3 + IPV4_HEADER_LEN)?;
                let p = &headers[l3..];
                if p[0] >> 4 != 4 {
                    return Err(mismatch("another IP version in its header"));
                }
                let ihl = p[0] & 0x0f;
                if ihl != 5 {
                    return Err(LayoutError::Ipv4HeaderLen { ihl });
                }
                if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
                    return Err(LayoutError::Ipv4Fragment);
                }
                (l3 + IPV4_HEADER_LEN, p[9])
            }
            IpVersion::V6 => {
                need(l3 + IPV6_HEADER_LEN)?;
                let p = &headers[l3..];
                if p[0] >> 4 != 6 {
                    return Err(mismatch("another IP version in its header"));
                }
                let next_header = p[6];
                if IPV6_EXTENSION_HEADERS.contains(&next_header) {
                    return Err(LayoutError::Ipv6ExtensionHeaders { next_header });
                }
                (l3 + IPV6_HEADER_LEN, next_header)
            }
        };
        if protocol != IPPROTO_TCP {
            return Err(LayoutError::NotTcp { protocol });
        }
        need(l4 + TCP_HEADER_LEN)?;
        let data_offset = headers[l4 + 12] >> 4;
        if data_offset < 5 {
            return Err(LayoutError::TcpHeaderLen { data_offset });
        }
        let hdr_len = l4 + usize::from(data_offset) * 4;
        need(hdr_len)?;
        Ok(TcpLayout {
            ip,
            l3,
            l4,
            hdr_len,
        })
    }
}
