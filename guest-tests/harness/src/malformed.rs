//! Malformed TX descriptor chains a bad guest can queue: each must go back
//! with length 0, be counted, and never leave as a frame. Used by
//! `backend/tests/bad_guest.rs` (one case each) and the soak (at random).

use crate::frames::{self, GUEST_MAC, HOST_MAC};
use crate::guest::{FakeGuest, HDR_LEN};
use crate::ring::{Desc, F_INDIRECT, F_NEXT};

/// Bytes of guest memory a builder may write at its `scratch` address.
pub const SCRATCH_LEN: usize = 72 * 1024;

/// A malformed TX chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A descriptor past the end of guest memory.
    OutsideMemory,
    /// A descriptor in the memory hole (QEMU's 0xa0000..0xc0000).
    InTheHole,
    /// A descriptor that starts inside memory and runs past its end.
    CrossingTheEnd,
    /// A write-only descriptor on the TX queue.
    WriteOnly,
    /// A chain whose `next` fields loop (longer than the queue).
    DescriptorLoop,
    /// An indirect table whose entries loop.
    IndirectLoop,
    /// A frame over 64 KiB plus header.
    Over64KiB,
    /// A chain shorter than a virtio-net header and an Ethernet header.
    TooShort,
    /// A TSO header with an MSS of 0.
    GsoZeroMss,
    /// NEEDS_CSUM with the checksum offset outside the frame.
    CsumOutsideFrame,
}

impl Malformed {
    /// Every kind (all valid with the default guest features).
    pub const ALL: [Malformed; 10] = [
        Malformed::OutsideMemory,
        Malformed::InTheHole,
        Malformed::CrossingTheEnd,
        Malformed::WriteOnly,
        Malformed::DescriptorLoop,
        Malformed::IndirectLoop,
        Malformed::Over64KiB,
        Malformed::TooShort,
        Malformed::GsoZeroMss,
        Malformed::CsumOutsideFrame,
    ];

    /// Queues this chain on `pair`'s TX ring (published, not kicked),
    /// writing what it needs at `scratch` ([`SCRATCH_LEN`] bytes); frames
    /// it writes carry `tag`. Returns its head.
    pub fn queue(self, g: &mut FakeGuest, pair: usize, scratch: u64, tag: u32) -> u16 {
        let mem_end = g.mem_size();
        match self {
            Malformed::OutsideMemory => single(g, pair, mem_end + 0x1000, 100, false),
            Malformed::InTheHole => single(g, pair, 0xa0000 + 0x100, 100, false),
            Malformed::CrossingTheEnd => single(g, pair, mem_end - 50, 100, false),
            Malformed::WriteOnly => {
                let len = write_frame(g, scratch, 100, tag);
                let ring = g.tx(pair);
                let head = ring.add_chain(&[
                    Desc {
                        addr: scratch,
                        len: len as u32 - 20,
                        write: false,
                    },
                    Desc {
                        addr: scratch + len as u64 - 20,
                        len: 20,
                        write: true,
                    },
                ]);
                ring.publish(head);
                head
            }
            Malformed::DescriptorLoop => {
                write_frame(g, scratch, 100, tag);
                let ring = g.tx(pair);
                let (a, b) = (ring.take_slot(), ring.take_slot());
                ring.write_desc(a, scratch, 60, F_NEXT, b);
                ring.write_desc(b, scratch, 60, F_NEXT, a);
                ring.own(a, vec![a, b]);
                ring.publish(a);
                a
            }
            Malformed::IndirectLoop => {
                write_frame(g, scratch, 100, tag);
                let table = scratch + 4096;
                let mut raw = Vec::new();
                for next in [1u16, 0] {
                    raw.extend_from_slice(&scratch.to_le_bytes());
                    raw.extend_from_slice(&60u32.to_le_bytes());
                    raw.extend_from_slice(&F_NEXT.to_le_bytes());
                    raw.extend_from_slice(&next.to_le_bytes());
                }
                g.write(table, &raw);
                let ring = g.tx(pair);
                let head = ring.take_slot();
                ring.write_desc(head, table, 32, F_INDIRECT, 0);
                ring.own(head, vec![head]);
                ring.publish(head);
                head
            }
            Malformed::Over64KiB => {
                let len = write_frame(g, scratch, 70_000, tag);
                single(g, pair, scratch, len, false)
            }
            Malformed::TooShort => single(g, pair, scratch, 16, false),
            Malformed::GsoZeroMss => {
                let (gso, frame) = frames::tcp4_frame(2000, 1448, 1, HOST_MAC, GUEST_MAC);
                let mut hdr = frames::v1_hdr(&gso.hdr);
                hdr[4..6].copy_from_slice(&0u16.to_le_bytes());
                with_header(g, pair, scratch, &hdr, &frame)
            }
            Malformed::CsumOutsideFrame => {
                let mut hdr = [0u8; HDR_LEN];
                hdr[0] = 1; // NEEDS_CSUM
                hdr[6..8].copy_from_slice(&5000u16.to_le_bytes());
                hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
                let frame = frames::test_frame(3000, tag, HOST_MAC, GUEST_MAC);
                with_header(g, pair, scratch, &hdr, &frame)
            }
        }
    }
}

/// A frame of `len` bytes with `tag`, after a plain header, at `addr`;
/// returns the bytes written.
fn write_frame(g: &mut FakeGuest, addr: u64, len: usize, tag: u32) -> usize {
    let mut bytes = frames::plain_hdr().to_vec();
    bytes.extend(frames::test_frame(len, tag, HOST_MAC, GUEST_MAC));
    g.write(addr, &bytes);
    bytes.len()
}

fn with_header(g: &mut FakeGuest, pair: usize, addr: u64, hdr: &[u8], frame: &[u8]) -> u16 {
    let mut bytes = hdr.to_vec();
    bytes.extend_from_slice(frame);
    g.write(addr, &bytes);
    single(g, pair, addr, bytes.len(), false)
}

fn single(g: &mut FakeGuest, pair: usize, addr: u64, len: usize, write: bool) -> u16 {
    let ring = g.tx(pair);
    let head = ring.add_chain(&[Desc {
        addr,
        len: len as u32,
        write,
    }]);
    ring.publish(head);
    head
}
