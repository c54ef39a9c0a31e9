//! The fields of the guest's `virtio_net_hdr` that say how to finish a TX
//! frame: checksum offload and GSO (virtio 1.2 §5.1.6, "Device
//! Operation"; values from `<linux/virtio_net.h>`).
//!
//! The backend parses the header from guest memory and checks it against
//! the negotiated features (`backend/src/vnet_hdr.rs`); this module only
//! names the fields and their values for the segmenter.

/// `flags`: the checksum from `csum_start` to the end of the frame is left
/// for the device to compute and store at `csum_start + csum_offset`.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation (UFO).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP frame has ECN's CWR flag set
/// (`VIRTIO_NET_F_HOST_ECN`).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The TX-relevant fields of `virtio_net_hdr`, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// A hint (virtio 1.2 §5.1.6.2: exact only with
    /// `VIRTIO_NET_F_GUEST_HDRLEN`); Linux guests send their linear length,
    /// which may include payload. The segmenter finds the real header
    /// length by parsing, and only checks that this one fits the frame.
    pub hdr_len: u16,
    /// The MSS: payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// The length of these fields on the wire (`num_buffers` excluded).
    pub const LEN: usize = 10;

    /// Parses the little-endian fields (VERSION_1).
    pub fn parse(b: &[u8; Self::LEN]) -> VirtioNetHdr {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        }
    }

    /// `flags` has [`VIRTIO_NET_HDR_F_NEEDS_CSUM`].
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !VIRTIO_NET_HDR_GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_little_endian_fields() {
        let h = VirtioNetHdr::parse(&[1, 0x81, 54, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(
            h,
            VirtioNetHdr {
                flags: 1,
                gso_type: 0x81,
                hdr_len: 54,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(h.needs_csum());
        assert_eq!(h.gso(), VIRTIO_NET_HDR_GSO_TCPV4);
    }
}
