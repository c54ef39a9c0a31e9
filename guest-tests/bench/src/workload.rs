//! The workloads: which frame goes which way, on how many queue pairs, and
//! how the fake guest's RX buffers are sized for it.

use serde::Serialize;

use zcnet_harness::frames::{self, GUEST_MAC, HOST_MAC, PACKET_HDR_LEN};
use zcnet_harness::guest::HDR_LEN;

use crate::measure::tap::{Engine, Side};

/// Where the frames go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Guest to host: the fake guest's TX ring, out through the tap.
    Tx,
    /// Host to guest: injected on the host side of the tap, into the fake
    /// guest's RX buffers.
    Rx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Tx64,
    Tx1500,
    TxTso,
    Rx1500,
    RxGso,
    Tx64TwoPairs,
    /// TX through the TCP stream attachment (`--stream-connect`).
    StreamTx1500,
    /// RX through the TCP stream attachment.
    StreamRx1500,
}

/// What zcnet carries the frames to and from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Tap,
    /// `--stream-connect` to a TCP peer in the next namespace.
    Stream,
}

/// A frame and the 12-byte virtio-net header that goes in front of it in a
/// TX chain, on a tap fd, or (as its first 10 bytes) on a packet socket.
pub struct Traffic {
    pub hdr: [u8; HDR_LEN],
    pub frame: Vec<u8>,
    /// The header asks for GSO: a packet socket that injects the frame
    /// needs `PACKET_VNET_HDR`.
    pub gso: bool,
}

impl Traffic {
    /// What a tap fd or a TX chain carries: header, then frame.
    pub fn with_hdr(&self) -> Vec<u8> {
        let mut v = self.hdr.to_vec();
        v.extend_from_slice(&self.frame);
        v
    }

    /// What a packet socket on the host side sends: the frame, after the
    /// 10-byte header when the socket has `PACKET_VNET_HDR`.
    pub fn for_packet_socket(&self) -> Vec<u8> {
        if !self.gso {
            return self.frame.clone();
        }
        let mut v = self.hdr[..PACKET_HDR_LEN].to_vec();
        v.extend_from_slice(&self.frame);
        v
    }
}

const TCP_HEADERS: usize = 14 + 20 + 20;
/// The MSS of the GSO frames, as a guest on a 1500-byte MTU link sends.
const MSS: u16 = 1448;
/// The "64 KiB" GSO frame: Ethernet, IPv4 and TCP headers and 45 full
/// segments, 65,214 bytes. The kernel segments in software any GSO frame
/// of 64 KiB (`gso_max_size`) or more that is sent into a device, so the
/// largest frame a guest sends or receives as one is a little smaller.
const GSO_FRAME_LEN: usize = TCP_HEADERS + 45 * MSS as usize;

impl Workload {
    /// In the order the table lists them and each repetition runs them.
    pub const ALL: [Workload; 8] = [
        Workload::Tx64,
        Workload::Tx1500,
        Workload::TxTso,
        Workload::Rx1500,
        Workload::RxGso,
        Workload::Tx64TwoPairs,
        Workload::StreamTx1500,
        Workload::StreamRx1500,
    ];

    /// Who carries this workload's frames, each in its own window. TX on
    /// a tap: zcnet with both engines (and, for 64 and 1500 B frames, fed
    /// by DPDK as well as by the fake guest) against the limits of one
    /// writev per frame, of a batched io_uring writer, and (frames without
    /// GSO, one queue) of one write per frame on a plain tap. RX: zcnet
    /// (its RX is the same with either engine) against one readv per
    /// frame. The stream: zcnet alone.
    pub fn sides(self) -> &'static [Side] {
        use Engine::{Syscall, Uring};
        match self {
            Workload::Tx64 | Workload::Tx1500 => &[
                Side::Zcnet(Uring),
                Side::Zcnet(Syscall),
                Side::ZcnetDpdk(Uring),
                Side::ZcnetDpdk(Syscall),
                Side::Raw,
                Side::RawUring,
                Side::RawPlain,
            ],
            Workload::TxTso | Workload::Tx64TwoPairs => &[
                Side::Zcnet(Uring),
                Side::Zcnet(Syscall),
                Side::Raw,
                Side::RawUring,
            ],
            Workload::Rx1500 | Workload::RxGso => &[Side::Zcnet(Uring), Side::Raw],
            Workload::StreamTx1500 | Workload::StreamRx1500 => &[Side::Zcnet(Uring)],
        }
    }

    pub fn carrier(self) -> Carrier {
        match self {
            Workload::StreamTx1500 | Workload::StreamRx1500 => Carrier::Stream,
            _ => Carrier::Tap,
        }
    }

    /// A stable name for the JSON.
    pub fn id(self) -> &'static str {
        match self {
            Workload::Tx64 => "tx-64",
            Workload::Tx1500 => "tx-1500",
            Workload::TxTso => "tx-64k-tso",
            Workload::Rx1500 => "rx-1500",
            Workload::RxGso => "rx-64k-gso",
            Workload::Tx64TwoPairs => "tx-64-2qp",
            Workload::StreamTx1500 => "stream-tx-1500",
            Workload::StreamRx1500 => "stream-rx-1500",
        }
    }

    /// The row label of the table.
    pub fn title(self) -> &'static str {
        match self {
            Workload::Tx64 => "TX 64 B",
            Workload::Tx1500 => "TX 1500 B",
            Workload::TxTso => "TX 64 KiB TSO",
            Workload::Rx1500 => "RX 1500 B",
            Workload::RxGso => "RX 64 KiB GSO",
            Workload::Tx64TwoPairs => "TX 64 B, 2 queue pairs",
            Workload::StreamTx1500 => "TCP stream TX 1500 B",
            Workload::StreamRx1500 => "TCP stream RX 1500 B",
        }
    }

    pub fn direction(self) -> Direction {
        match self {
            Workload::Rx1500 | Workload::RxGso | Workload::StreamRx1500 => Direction::Rx,
            _ => Direction::Tx,
        }
    }

    pub fn pairs(self) -> usize {
        match self {
            Workload::Tx64TwoPairs => 2,
            _ => 1,
        }
    }

    /// The frames are TCPv4 GSO frames with a header that says so.
    pub fn gso(self) -> bool {
        matches!(self, Workload::TxTso | Workload::RxGso)
    }

    pub fn frame_len(self) -> usize {
        match self {
            Workload::Tx64 | Workload::Tx64TwoPairs => 64,
            Workload::Tx1500
            | Workload::Rx1500
            | Workload::StreamTx1500
            | Workload::StreamRx1500 => 1500,
            Workload::TxTso | Workload::RxGso => GSO_FRAME_LEN,
        }
    }

    /// The frame the workload carries. TX frames are addressed to the host
    /// side's MAC, not the tap's, so the namespace's stack drops them on
    /// arrival; RX frames are addressed to the guest.
    pub fn traffic(self) -> Traffic {
        let len = self.frame_len();
        let (dst, src) = match self.direction() {
            Direction::Tx => (HOST_MAC, GUEST_MAC),
            Direction::Rx => (GUEST_MAC, HOST_MAC),
        };
        match self {
            _ if self.gso() => {
                let (gso, frame) = frames::tcp4_frame(len - TCP_HEADERS, MSS, 40_000, dst, src);
                debug_assert_eq!(frame.len(), len);
                Traffic {
                    hdr: frames::v1_hdr(&gso.hdr),
                    frame,
                    gso: true,
                }
            }
            _ => Traffic {
                hdr: frames::plain_hdr(),
                frame: frames::test_frame(len, 0, dst, src),
                gso: false,
            },
        }
    }

    /// The size of each RX buffer the fake guest posts, as a Linux guest
    /// with mergeable RX buffers sizes them: one buffer per 1500-byte
    /// frame, pages for GSO frames (which then span several buffers).
    pub fn rx_buffer_len(self) -> usize {
        match self {
            Workload::RxGso => 4096,
            _ => 2048,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_sizes_the_table_names() {
        for w in Workload::ALL {
            let t = w.traffic();
            assert_eq!(t.frame.len(), w.frame_len(), "{}", w.id());
            assert_eq!(t.with_hdr().len(), HDR_LEN + w.frame_len());
        }
    }

    #[test]
    fn gso_frames_carry_a_tcpv4_header_with_the_mss() {
        let t = Workload::TxTso.traffic();
        assert!(t.gso);
        assert_eq!(t.hdr[1], 1, "GSO TCPv4");
        assert_eq!(u16::from_le_bytes([t.hdr[4], t.hdr[5]]), MSS);
        assert_eq!(t.hdr[0] & 1, 1, "NEEDS_CSUM");
        assert_eq!(
            t.for_packet_socket().len(),
            PACKET_HDR_LEN + GSO_FRAME_LEN,
            "packet sockets take the 10-byte header"
        );
        assert_eq!(Workload::Rx1500.traffic().for_packet_socket().len(), 1500);
    }
}
