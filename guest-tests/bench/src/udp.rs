//! The UDP workloads: the fake guest's TX frames through zcnet's UDP
//! attachment (`--udp`) and out of an `ifb` device, lent to the kernel
//! (`--zerocopy on --zerocopy-min-bytes 0`) or copied (`--zerocopy off`).
//!
//! An `ifb` device frees every skb it is given without delivering it
//! locally, so lent pages really go uncopied (a veth, a tap or loopback
//! would copy them at delivery and report COPIED). The guest's buffers are
//! spread over 256 MiB of guest memory and used in turn, so the copy reads
//! them from memory, not from a cache it has just warmed.

use serde::Serialize;

use zcnet_harness::frames::{self, GUEST_MAC, HOST_MAC};
use zcnet_harness::guest::HDR_LEN;

/// Guest memory of the fake guest, nearly all of it buffers: eight times
/// this machine class's last-level cache and more.
pub const GUEST_MEM: u64 = 256 << 20;

/// The largest Ethernet frame the sweep sends. One IPv4 UDP datagram on an
/// MTU of 65535 carries at most 65,535 - 20 - 8 = 65,507 bytes without
/// fragmenting, and the UDP attachment puts one whole frame in each.
pub const BIG_FRAME: usize = 65_000;

/// The frame sizes of the full sweep, and of `--quick`.
pub const SWEEP: [usize; 6] = [1500, 4096, 8192, 16384, 32768, BIG_FRAME];
pub const SWEEP_QUICK: [usize; 2] = [1500, BIG_FRAME];

/// How zcnet sends the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxMode {
    /// Every frame lent with `MSG_ZEROCOPY`.
    ZeroCopy,
    /// Every frame copied by `sendmsg`.
    Copy,
}

impl TxMode {
    pub const BOTH: [TxMode; 2] = [TxMode::ZeroCopy, TxMode::Copy];

    /// zcnet's arguments beside `--udp`.
    pub fn zcnet_args(self) -> &'static [&'static str] {
        match self {
            TxMode::ZeroCopy => &["--zerocopy", "on", "--zerocopy-min-bytes", "0"],
            TxMode::Copy => &["--zerocopy", "off"],
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TxMode::ZeroCopy => "zero-copy",
            TxMode::Copy => "copy",
        }
    }
}

impl std::fmt::Display for TxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One frame size sent one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpCase {
    pub mode: TxMode,
    /// Bytes of each Ethernet frame, without the virtio-net header: the
    /// payload of each datagram.
    pub frame_len: usize,
}

impl UdpCase {
    /// The row label: the largest frames are the "64 KiB" rows.
    pub fn title(self) -> String {
        if self.frame_len == BIG_FRAME {
            format!(
                "UDP {}, 64 KiB frames (cold): {BIG_FRAME} B Ethernet frames",
                self.mode
            )
        } else {
            format!("UDP {}, {} B frames (cold)", self.mode, self.frame_len)
        }
    }

    /// What each TX buffer holds: a plain virtio-net header (no offloads:
    /// the UDP attachment offers none to a header-less peer), then the
    /// frame.
    pub fn packet(self) -> Vec<u8> {
        let mut v = frames::plain_hdr().to_vec();
        v.extend_from_slice(&frames::test_frame(self.frame_len, 0, HOST_MAC, GUEST_MAC));
        debug_assert_eq!(v.len(), HDR_LEN + self.frame_len);
        v
    }
}

/// How many buffers of `packet_len` bytes fill `room` bytes of guest
/// memory, as the fake guest lays them out (64-byte aligned, the last one
/// ending below the end of memory).
pub fn cold_buffers(room: u64, packet_len: usize) -> usize {
    let slot = (packet_len as u64 + 63) & !63;
    (room.saturating_sub(1) / slot) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_biggest_frame_fits_one_unfragmented_datagram() {
        const MAX_UDP_PAYLOAD_ON_MTU_65535: usize = 65_535 - 20 - 8;
        assert!(SWEEP.iter().all(|&n| n <= MAX_UDP_PAYLOAD_ON_MTU_65535));
        let case = UdpCase {
            mode: TxMode::ZeroCopy,
            frame_len: BIG_FRAME,
        };
        assert_eq!(case.packet().len(), HDR_LEN + BIG_FRAME);
        assert!(case.title().contains("64 KiB") && case.title().contains("65000 B"));
    }

    #[test]
    fn cold_buffers_fill_the_guest_memory() {
        // 256 MiB less the 8 MiB below the first buffer.
        let room = GUEST_MEM - (8 << 20);
        let n = cold_buffers(room, HDR_LEN + BIG_FRAME);
        assert_eq!(n, 3999);
        assert!(n as u64 * 65_024 < room);
        assert!(cold_buffers(room, HDR_LEN + 1500) > 150_000);
    }
}
