//! The virtio-net header: its layout, its constants, the frame sizes it
//! implies, and the check of a header a guest sent. The one place in zcnet
//! that knows these facts (virtio 1.x, section 5.1.6 "Device Operation";
//! `include/uapi/linux/virtio_net.h`).

use thiserror::Error;

use crate::Offloads;

/// Length of `struct virtio_net_hdr_v1` (VERSION_1 or MRG_RXBUF), bytes.
pub const HDR_LEN_V1: usize = 12;
/// Length of the legacy `struct virtio_net_hdr` (neither), bytes.
pub const HDR_LEN_LEGACY: usize = 10;
/// Byte offset of `num_buffers` in a v1 header (little endian u16).
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// `flags`: the checksum from `csum_start` on is left to the device.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags` (RX only): the checksum was already checked.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP segments carry ECN (CWR on the first).
pub const GSO_ECN: u8 = 0x80;

/// The shortest frame: an Ethernet header, bytes.
pub const MIN_FRAME_LEN: usize = 14;
/// The largest frame after the header: 64 KiB of GSO payload and headers
/// plus an Ethernet header and a VLAN tag, bytes.
pub const MAX_FRAME_LEN: usize = 65536 + 14 + 4;
/// The largest frame without GSO: a 9000-byte jumbo frame, an Ethernet
/// header and a VLAN tag, bytes.
pub const MAX_NON_GSO_FRAME_LEN: usize = 9000 + 14 + 4;

/// The fields of `virtio_net_hdr` before `num_buffers` (little endian, as
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

/// How a TX header lies. The chain goes back with length 0.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HdrError {
    #[error("GSO type {0:#x} is unknown or was not negotiated")]
    GsoNotNegotiated(u8),
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
    #[error("checksum at {start}+{offset} lies outside the {frame_len}-byte frame")]
    CsumOutsideFrame {
        start: u16,
        offset: u16,
        frame_len: usize,
    },
    #[error(
        "GSO checksum at {start}+{offset} ends past the 65535 bytes a header length can cover"
    )]
    CsumPastHdrLen { start: u16, offset: u16 },
    #[error("checksum offload asked but the device offered no CSUM")]
    CsumNotNegotiated,
    #[error("unknown header flags {0:#x}")]
    UnknownFlags(u8),
}

impl VnetHdr {
    /// The byte length of the fields parsed here.
    pub const FIELDS_LEN: usize = 10;

    /// Reads the fields from the first [`FIELDS_LEN`](Self::FIELDS_LEN)
    /// bytes of a header.
    pub fn parse(b: &[u8; Self::FIELDS_LEN]) -> Self {
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

    /// The header as `virtio_net_hdr_v1` bytes, `num_buffers` 0. A legacy
    /// (10-byte) header is the first 10 of them.
    pub fn to_bytes(&self) -> [u8; HDR_LEN_V1] {
        let mut b = [0u8; HDR_LEN_V1];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// Whether the checksum is left to the device.
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// Checks a TX header against the frame behind it (`frame_len` bytes,
    /// header excluded) and the offloads the guest may use on TX (`tx`:
    /// HOST_* features), and returns it normalised: every field is one a
    /// tap accepts, whatever the guest wrote where the spec lets it write
    /// anything.
    ///
    /// - `hdr_len` is a hint (virtio 1.x 5.1.6.2.1: the device must not
    ///   rely on it unless GUEST_HDRLEN was negotiated, which zcnet never
    ///   offers): without GSO it becomes 0; with GSO the guest's value is
    ///   kept if it lies inside the frame, else 0, and raised to cover the
    ///   checksum field (as `tun_get_user` does).
    /// - Without NEEDS_CSUM, `csum_start`/`csum_offset` are ignored (0).
    /// - Without GSO, `gso_size` is ignored (0). DATA_VALID (an RX flag) is
    ///   dropped.
    pub fn validate(&self, frame_len: usize, tx: &Offloads) -> Result<VnetHdr, HdrError> {
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(HdrError::UnknownFlags(self.flags));
        }
        let mut out = VnetHdr::default();
        if self.needs_csum() {
            if !tx.csum {
                return Err(HdrError::CsumNotNegotiated);
            }
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(HdrError::CsumOutsideFrame {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    frame_len,
                });
            }
            out.flags = F_NEEDS_CSUM;
            out.csum_start = self.csum_start;
            out.csum_offset = self.csum_offset;
        }
        let gso = self.gso();
        if gso != GSO_NONE {
            let ecn = self.gso_type & GSO_ECN != 0;
            let allowed = match gso {
                GSO_TCPV4 => tx.tso4,
                GSO_TCPV6 => tx.tso6,
                GSO_UDP => tx.ufo,
                GSO_UDP_L4 => tx.uso4 && tx.uso6,
                _ => false,
            };
            if !allowed || (ecn && !tx.tso_ecn) {
                return Err(HdrError::GsoNotNegotiated(self.gso_type));
            }
            if self.gso_size == 0 {
                return Err(HdrError::ZeroGsoSize);
            }
            out.gso_type = self.gso_type;
            out.gso_size = self.gso_size;
            let hint = if usize::from(self.hdr_len) <= frame_len {
                self.hdr_len
            } else {
                0
            };
            let csum_end = if out.needs_csum() {
                // Inside the frame (checked above), which may be longer
                // than a u16 can say: a GSO header length cannot cover a
                // checksum field that ends past 65535 bytes.
                let end = usize::from(out.csum_start) + usize::from(out.csum_offset) + 2;
                u16::try_from(end).map_err(|_| HdrError::CsumPastHdrLen {
                    start: out.csum_start,
                    offset: out.csum_offset,
                })?
            } else {
                0
            };
            out.hdr_len = hint.max(csum_end);
        } else if self.gso_type != GSO_NONE {
            // The ECN bit alone, without a GSO type.
            return Err(HdrError::GsoNotNegotiated(self.gso_type));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tso4() -> Offloads {
        Offloads {
            csum: true,
            tso4: true,
            ..Offloads::default()
        }
    }

    fn gso_hdr(gso_type: u8) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn parses_and_writes_little_endian_fields() {
        let raw = [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0];
        let h = VnetHdr::parse(&raw);
        assert_eq!(h, gso_hdr(GSO_TCPV4));
        assert_eq!(&h.to_bytes()[..10], &raw);
        assert_eq!(&h.to_bytes()[10..], &[0, 0], "num_buffers is 0");
    }

    #[test]
    fn an_honest_tso_header_passes_unchanged() {
        let h = gso_hdr(GSO_TCPV4);
        assert_eq!(h.validate(65000, &tso4()), Ok(h));
    }

    #[test]
    fn lies_are_caught() {
        let h = gso_hdr(GSO_TCPV6);
        assert_eq!(
            h.validate(65000, &tso4()),
            Err(HdrError::GsoNotNegotiated(4))
        );
        let h = VnetHdr {
            gso_size: 0,
            ..gso_hdr(GSO_TCPV4)
        };
        assert_eq!(h.validate(65000, &tso4()), Err(HdrError::ZeroGsoSize));
        let h = VnetHdr {
            csum_start: 1000,
            ..gso_hdr(GSO_NONE)
        };
        assert!(matches!(
            h.validate(500, &tso4()),
            Err(HdrError::CsumOutsideFrame { .. })
        ));
        let ecn = VnetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..gso_hdr(GSO_TCPV4)
        };
        assert!(ecn.validate(65000, &tso4()).is_err());
        let ecn_alone = VnetHdr {
            gso_type: GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(ecn_alone.validate(100, &tso4()).is_err());
        let flags = VnetHdr {
            flags: 0x40,
            ..VnetHdr::default()
        };
        assert_eq!(
            flags.validate(100, &tso4()),
            Err(HdrError::UnknownFlags(0x40))
        );
        let csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        assert_eq!(
            csum.validate(100, &Offloads::default()),
            Err(HdrError::CsumNotNegotiated)
        );
    }

    /// Found by the fuzzer (backend/fuzz/corpus/vnet_hdr/crash-*): a GSO
    /// header whose checksum field ends past 65535 bytes, in a frame that
    /// long, overflowed the u16 sum that raises `hdr_len` (a panic with
    /// debug assertions, a wrong `hdr_len` without).
    #[test]
    fn a_gso_checksum_past_what_hdr_len_can_cover_is_refused() {
        let h = VnetHdr {
            csum_start: 65000,
            csum_offset: 540,
            ..gso_hdr(GSO_TCPV4)
        };
        assert_eq!(
            h.validate(MAX_FRAME_LEN, &tso4()),
            Err(HdrError::CsumPastHdrLen {
                start: 65000,
                offset: 540
            })
        );
        let edge = VnetHdr {
            csum_start: 65000,
            csum_offset: 533,
            ..gso_hdr(GSO_TCPV4)
        };
        assert_eq!(
            edge.validate(MAX_FRAME_LEN, &tso4()).unwrap().hdr_len,
            65535
        );
    }

    /// Issue 12, case 4: `hdr_len` is a hint; whatever the guest put there
    /// (and in fields its flags say are unused), the header handed on is
    /// one the tap accepts.
    #[test]
    fn hints_and_unused_fields_are_normalised() {
        for hdr_len in [0u16, 2, 10, 14, 60, 2000, u16::MAX] {
            for frame_len in [60usize, 100, 1514] {
                let h = VnetHdr {
                    hdr_len,
                    gso_size: 777,
                    csum_start: 9,
                    csum_offset: 9,
                    flags: F_DATA_VALID,
                    ..VnetHdr::default()
                };
                assert_eq!(
                    h.validate(frame_len, &tso4()),
                    Ok(VnetHdr::default()),
                    "hdr_len {hdr_len}, frame {frame_len}"
                );
            }
            let gso = VnetHdr {
                hdr_len,
                ..gso_hdr(GSO_TCPV4)
            };
            let out = gso.validate(1514, &tso4()).unwrap();
            assert!(usize::from(out.hdr_len) <= 1514, "{out:?}");
            assert!(out.hdr_len >= 34 + 16 + 2, "covers the checksum: {out:?}");
        }
        let csum_only = VnetHdr {
            flags: F_NEEDS_CSUM,
            hdr_len: 2000,
            gso_size: 5,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        assert_eq!(
            csum_only.validate(100, &tso4()),
            Ok(VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..VnetHdr::default()
            })
        );
    }
}
