//! The virtio-net header the guest puts in front of every TX frame, checked
//! before the frame is handed to the host.

use thiserror::Error;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
};

use crate::features::Negotiated;

/// The fields of `virtio_net_hdr` that matter on TX (little endian, as
/// VERSION_1 requires).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// How a header lies.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HdrError {
    #[error("GSO type {0:#x} is unknown or was not negotiated")]
    GsoNotNegotiated(u8),
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
    #[error("GSO frame claims {hdr_len} header bytes but holds only {frame_len}")]
    HdrLenBeyondFrame { hdr_len: u16, frame_len: usize },
    #[error("checksum at {start}+{offset} lies outside the {frame_len}-byte frame")]
    CsumOutsideFrame {
        start: u16,
        offset: u16,
        frame_len: usize,
    },
}

impl VnetHdr {
    /// The byte length of the fields parsed here.
    pub const LEN: usize = 10;

    pub fn parse(b: &[u8; Self::LEN]) -> Self {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        }
    }

    /// Checks the header against the frame behind it (`frame_len` bytes,
    /// header excluded) and the features the guest negotiated.
    pub fn validate(&self, frame_len: usize, features: &Negotiated) -> Result<(), HdrError> {
        let gso = self.gso_type & !(VIRTIO_NET_HDR_GSO_ECN as u8);
        if u32::from(gso) != VIRTIO_NET_HDR_GSO_NONE {
            let ecn_ok =
                self.gso_type & (VIRTIO_NET_HDR_GSO_ECN as u8) == 0 || features.tx_ecn_allowed();
            if !features.tx_gso_allowed(gso) || !ecn_ok {
                return Err(HdrError::GsoNotNegotiated(self.gso_type));
            }
            if self.gso_size == 0 {
                return Err(HdrError::ZeroGsoSize);
            }
            if usize::from(self.hdr_len) > frame_len {
                return Err(HdrError::HdrLenBeyondFrame {
                    hdr_len: self.hdr_len,
                    frame_len,
                });
            }
        }
        if u32::from(self.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(HdrError::CsumOutsideFrame {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    frame_len,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    };

    fn tso4() -> Negotiated {
        Negotiated {
            bits: 1 << VIRTIO_NET_F_HOST_TSO4,
        }
    }

    fn gso_hdr(gso_type: u32) -> VnetHdr {
        VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: gso_type as u8,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn parses_little_endian_fields() {
        let h = VnetHdr::parse(&[1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(h, gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4));
    }

    #[test]
    fn honest_tso_header_passes() {
        assert_eq!(
            gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4).validate(65000, &tso4()),
            Ok(())
        );
    }

    #[test]
    fn lies_are_caught() {
        let h = gso_hdr(VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(
            h.validate(65000, &tso4()),
            Err(HdrError::GsoNotNegotiated(4))
        );
        let h = VnetHdr {
            gso_size: 0,
            ..gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4)
        };
        assert_eq!(h.validate(65000, &tso4()), Err(HdrError::ZeroGsoSize));
        let h = gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4);
        assert!(matches!(
            h.validate(40, &tso4()),
            Err(HdrError::HdrLenBeyondFrame { .. })
        ));
        let h = VnetHdr {
            csum_start: 1000,
            ..gso_hdr(VIRTIO_NET_HDR_GSO_NONE)
        };
        assert!(matches!(
            h.validate(500, &tso4()),
            Err(HdrError::CsumOutsideFrame { .. })
        ));
        let ecn = VnetHdr {
            gso_type: (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN) as u8,
            ..gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4)
        };
        assert!(ecn.validate(65000, &tso4()).is_err());
    }
}
