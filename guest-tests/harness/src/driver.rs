//! The fake guest's datapath loops, one thread per ring, run the way a
//! virtio-net driver under load runs them with EVENT_IDX:
//!
//! - TX keeps the ring full of the same frame: each used element's buffer
//!   is queued again at once, the device is kicked only when its
//!   `avail_event` asks for it, and when the ring is full and nothing came
//!   back the driver asks for a call once three quarters are back and
//!   sleeps on it (a stopped queue).
//! - RX keeps every buffer posted: each used buffer is counted and posted
//!   again at once, and with nothing to reclaim the driver sleeps on the
//!   call, as its interrupt handler would.
//!
//! Buffers are written once and reused in turn, oldest returned first (with
//! more buffers than ring entries, each waits for all the others); only
//! descriptors and ring indexes are written per frame.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::guest::{FakeGuest, HDR_LEN};
use crate::ring::{Desc, Ring, Used};

/// How long a driver sleeps on its call eventfd before it looks at the
/// stop flag again.
const CALL_WAIT: Duration = Duration::from_millis(50);
/// Where `num_buffers` sits in the 12-byte header.
const NUM_BUFFERS_OFFSET: u64 = 10;

/// Frames and their bytes (without the virtio-net header), added by the
/// thread that moves them and read by the measuring thread.
#[derive(Default)]
pub struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    pub fn add(&self, frames: u64, bytes: u64) {
        self.frames.fetch_add(frames, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn read(&self) -> (u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Buffers of guest memory, all of one length.
pub struct Buffers {
    addrs: Vec<u64>,
    len: usize,
}

/// A ring with one single-descriptor chain per buffer, and the buffer that
/// each descriptor slot points at.
struct Chains {
    ring: Ring,
    len: u32,
    write: bool,
    /// The buffer address behind each head (descriptor slot).
    slot_buf: Vec<u64>,
    /// Buffers the device has returned and the driver not yet queued,
    /// oldest first.
    free: VecDeque<u64>,
}

impl Chains {
    fn new(ring: Ring, bufs: Buffers, write: bool) -> Chains {
        Chains {
            slot_buf: vec![0; usize::from(ring.size)],
            ring,
            len: bufs.len as u32,
            write,
            free: bufs.addrs.into(),
        }
    }

    /// Queues free buffers until the ring is full, kicking as soon as the
    /// device asks for a kick so it starts while the rest is being queued.
    fn queue_free(&mut self) {
        while self.ring.outstanding() < self.ring.size {
            let Some(addr) = self.free.pop_front() else {
                break;
            };
            let old = self.ring.avail_idx();
            let head = self.ring.add_chain(&[Desc {
                addr,
                len: self.len,
                write: self.write,
            }]);
            self.slot_buf[usize::from(head)] = addr;
            self.ring.publish(head);
            self.ring.kick_if_needed(old);
        }
    }

    /// The used elements since the last call. If there are none, asks for
    /// a call (on the next used element, or with `delayed` once three
    /// quarters of the outstanding chains are back) and waits for it,
    /// bounded. Empty when the wait timed out.
    fn reclaim(&mut self, delayed: bool) -> Vec<Used> {
        let used = self.ring.take_used();
        if !used.is_empty() {
            return used;
        }
        if delayed {
            self.ring
                .request_call_after(self.ring.outstanding() * 3 / 4);
        } else {
            self.ring.request_call();
        }
        let used = self.ring.take_used();
        if !used.is_empty() {
            return used;
        }
        self.ring.wait_call(CALL_WAIT);
        self.ring.take_used()
    }

    fn buffer_of(&self, used: Used) -> u64 {
        self.slot_buf[usize::from(used.id)]
    }
}

/// Writes `bytes` into `count` buffers of guest memory.
pub fn fill_buffers(g: &mut FakeGuest, count: usize, bytes: &[u8]) -> Buffers {
    let addrs = (0..count)
        .map(|_| {
            let addr = g.alloc(bytes.len());
            g.write(addr, bytes);
            addr
        })
        .collect();
    Buffers {
        addrs,
        len: bytes.len(),
    }
}

/// Reserves `count` buffers of `len` bytes of guest memory.
pub fn alloc_buffers(g: &mut FakeGuest, count: usize, len: usize) -> Buffers {
    Buffers {
        addrs: (0..count).map(|_| g.alloc(len)).collect(),
        len,
    }
}

/// Sends the frame in `bufs` (each holds the header and the frame) until
/// `stop`, counting each frame the device has returned.
pub fn run_tx(ring: Ring, bufs: Buffers, counters: &Counters, stop: &AtomicBool) {
    let frame_len = (bufs.len - HDR_LEN) as u64;
    let mut tx = Chains::new(ring, bufs, false);
    while !stop.load(Ordering::Relaxed) {
        tx.queue_free();
        // A stopped queue: Linux waits for three quarters to come back.
        let used = tx.reclaim(true);
        for u in &used {
            let buf = tx.buffer_of(*u);
            tx.free.push_back(buf);
        }
        counters.add(used.len() as u64, used.len() as u64 * frame_len);
    }
}

/// Keeps `bufs` posted on the RX ring until `stop`.
/// A frame spans `num_buffers` used elements (MRG_RXBUF); each one of
/// `frame_len` bytes after the header counts in `whole`, any other in
/// `damaged` (a frame cut short, or not the frame that was sent).
pub fn run_rx(
    ring: Ring,
    mem: GuestMemoryMmap,
    bufs: Buffers,
    frame_len: usize,
    whole: &Counters,
    damaged: &Counters,
    stop: &AtomicBool,
) {
    let mut rx = Chains::new(ring, bufs, true);
    let expected = (HDR_LEN + frame_len) as u64;
    // Buffers still to come of the frame being received, and its bytes
    // (header included) so far.
    let (mut rest_of_frame, mut frame_bytes) = (0u16, 0u64);
    while !stop.load(Ordering::Relaxed) {
        rx.queue_free();
        let (mut good, mut bad, mut bad_bytes) = (0u64, 0u64, 0u64);
        // NAPI: the interrupt comes with the first used buffer.
        for u in rx.reclaim(false) {
            let buf = rx.buffer_of(u);
            if rest_of_frame == 0 {
                // The first buffer of a frame: the header says how many
                // buffers the frame fills.
                let n: u16 = mem
                    .read_obj(GuestAddress(buf + NUM_BUFFERS_OFFSET))
                    .expect("RX buffer is guest memory");
                rest_of_frame = u16::from_le(n).max(1);
                frame_bytes = 0;
            }
            rest_of_frame -= 1;
            frame_bytes += u64::from(u.len);
            rx.free.push_back(buf);
            if rest_of_frame == 0 {
                if frame_bytes == expected {
                    good += 1;
                } else {
                    bad += 1;
                    bad_bytes += frame_bytes.saturating_sub(HDR_LEN as u64);
                }
            }
        }
        whole.add(good, good * frame_len as u64);
        damaged.add(bad, bad_bytes);
    }
}
