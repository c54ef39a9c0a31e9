//! The VXLAN workloads: the fake guest's TX frames through zcnet's VXLAN
//! attachment (`--vxlan-vni`) and out of an `ifb` device, lent or copied
//! as the UDP workloads are (`udp::TxMode`), in three kinds of frames:
//! 1514-byte frames, 64 KiB TSO frames that zcnet cuts into MSS-sized
//! segments, and the same TCP stream segmented by the guest itself
//! (MSS-sized frames whose checksum zcnet completes).
//!
//! The frames are unicast to a MAC with a static FDB entry, so each goes
//! to one VTEP (a flood would send it to both of the lab's remotes).

use serde::Serialize;

use zcnet_harness::frames::{self, GUEST_MAC, HOST_MAC};
use zcnet_harness::guest::HDR_LEN;

use crate::udp::TxMode;

/// The MSS of the TCP frames.
pub const MSS: usize = 1448;
/// TCP payload of a TSO frame: 44 full segments and a short one, a frame
/// of 64 KiB less a little.
pub const TSO_PAYLOAD: usize = 64_000;

/// Which frames the guest sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VxlanFrames {
    /// 1514-byte Ethernet frames, no offloads.
    Mtu,
    /// 64 KiB TCP frames with GSO TCPV4 and MSS 1448.
    Tso,
    /// MSS-sized TCP frames with NEEDS_CSUM: the guest segmented itself.
    Segmented,
}

/// One kind of frame sent one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanCase {
    pub mode: TxMode,
    pub frames: VxlanFrames,
}

impl VxlanCase {
    /// Every case, in report order.
    pub const ALL: [VxlanCase; 6] = [
        VxlanCase {
            mode: TxMode::ZeroCopy,
            frames: VxlanFrames::Mtu,
        },
        VxlanCase {
            mode: TxMode::Copy,
            frames: VxlanFrames::Mtu,
        },
        VxlanCase {
            mode: TxMode::ZeroCopy,
            frames: VxlanFrames::Tso,
        },
        VxlanCase {
            mode: TxMode::Copy,
            frames: VxlanFrames::Tso,
        },
        VxlanCase {
            mode: TxMode::ZeroCopy,
            frames: VxlanFrames::Segmented,
        },
        VxlanCase {
            mode: TxMode::Copy,
            frames: VxlanFrames::Segmented,
        },
    ];

    pub fn title(self) -> String {
        match self.frames {
            VxlanFrames::Mtu => format!("VXLAN {}, 1514 B frames", self.mode),
            VxlanFrames::Tso => format!(
                "VXLAN {}, 64 KiB TSO frames ({} B, MSS {MSS})",
                self.mode,
                self.frame_len()
            ),
            VxlanFrames::Segmented => format!(
                "VXLAN {}, the guest segments: {} B frames with NEEDS_CSUM",
                self.mode,
                self.frame_len()
            ),
        }
    }

    /// zcnet's arguments beside the lab's `--vxlan-*`: the lending mode
    /// and a static FDB entry for the frames' destination.
    pub fn zcnet_args(self) -> Vec<&'static str> {
        let mut v = self.mode.zcnet_args().to_vec();
        v.extend_from_slice(&["--vxlan-fdb", "02:00:00:00:00:01=10.9.0.2"]);
        v
    }

    /// Bytes of each Ethernet frame, without the virtio-net header.
    pub fn frame_len(self) -> usize {
        match self.frames {
            VxlanFrames::Mtu => 1514,
            VxlanFrames::Tso => 54 + TSO_PAYLOAD,
            VxlanFrames::Segmented => 54 + MSS,
        }
    }

    /// What each TX buffer holds: the virtio-net header, then the frame.
    pub fn packet(self) -> Vec<u8> {
        let tcp = |payload: usize| {
            frames::tcp4_frame_between(
                payload,
                MSS as u16,
                40_000,
                HOST_MAC,
                GUEST_MAC,
                [192, 168, 42, 100],
                [192, 168, 42, 2],
            )
        };
        let (hdr, frame) = match self.frames {
            VxlanFrames::Mtu => (
                frames::plain_hdr(),
                frames::test_frame(1514, 0, HOST_MAC, GUEST_MAC),
            ),
            VxlanFrames::Tso => {
                let (gso, f) = tcp(TSO_PAYLOAD);
                (frames::v1_hdr(&gso.hdr), f)
            }
            VxlanFrames::Segmented => {
                let (gso, f) = tcp(MSS);
                let mut hdr = frames::v1_hdr(&gso.hdr);
                // NEEDS_CSUM stays; no GSO.
                hdr[1] = 0;
                hdr[2..6].fill(0);
                (hdr, f)
            }
        };
        let mut v = hdr.to_vec();
        v.extend_from_slice(&frame);
        debug_assert_eq!(v.len(), HDR_LEN + self.frame_len());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_carry_the_headers_their_case_says() {
        let tso = VxlanCase {
            mode: TxMode::ZeroCopy,
            frames: VxlanFrames::Tso,
        };
        let p = tso.packet();
        assert_eq!(p.len(), HDR_LEN + 54 + TSO_PAYLOAD);
        assert_eq!((p[0], p[1]), (1, 1), "NEEDS_CSUM, GSO TCPV4");
        assert_eq!(u16::from_le_bytes([p[4], p[5]]), MSS as u16);
        let seg = VxlanCase {
            frames: VxlanFrames::Segmented,
            ..tso
        };
        let p = seg.packet();
        assert_eq!(p.len(), HDR_LEN + 1502);
        assert_eq!((p[0], p[1]), (1, 0), "NEEDS_CSUM, no GSO");
        assert!(VxlanCase::ALL
            .iter()
            .all(|c| c.packet().len() == HDR_LEN + c.frame_len()));
    }
}
