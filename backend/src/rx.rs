//! Host-to-guest: frames read from the attachment straight into the
//! guest's RX buffers.
//!
//! With MRG_RXBUF a frame may fill several descriptor chains; the device
//! writes how many into `num_buffers` of the first one (virtio 1.x,
//! 5.1.6.3). zcnet gathers the chains the guest has posted, up to enough
//! for the largest frame the attachment may hand over (64 KiB once a GSO
//! offload is on), reads once with the guest's buffers followed by
//! overflow room of zcnet's own, returns the chains the frame filled,
//! keeps the rest for the next frame, and gives the unused ones back to
//! the avail ring when it stops.
//!
//! A frame is delivered as soon as the posted buffers can hold it; it is
//! never cut short, and never dropped or delayed because a larger frame
//! might have come. A frame larger than what the guest has posted so far
//! lands partly in the guest's buffers and partly in the overflow room;
//! it is *held*: its chains go back to the avail ring unreturned (they
//! are the device's until used, so the guest leaves them alone), no other
//! frame is read, and when the guest posts more buffers the same chains
//! are popped again, the overflow bytes are copied after them, and the
//! frame is delivered whole. Only a frame larger than the guest's whole
//! ring, or (without MRG_RXBUF) larger than one chain, is dropped and
//! counted. A tap cannot be peeked from user space (vhost-net peeks at
//! the next skb's length in the kernel), which is why the room is read
//! into rather than measured.
//!
//! When the guest has posted no buffers the pair stops reading: the frames
//! wait in the tap's queue, and the guest's next RX kick resumes reading.

use std::io;

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use zcnet_tap::vnet_hdr::{HDR_LEN_V1, MAX_FRAME_LEN, MAX_NON_GSO_FRAME_LEN, NUM_BUFFERS_OFFSET};

use crate::datapath::{Ctx, QueueError, VState, Vring};
use crate::iovec::{Direction, GuestIoVecs, Mem, MemView, ReadIoVecs};
use crate::ring::RingState;

/// Frames read per event before other work of the pair gets a turn.
pub const BUDGET: usize = 256;
/// The largest single RX chain taken (a sanity bound, not a frame limit).
const MAX_CHAIN_LEN: usize = 1 << 20;
/// Overflow room after the guest's buffers: any frame fits in it alone,
/// so a read that fills guest buffers and overflow was cut by the kernel.
const OVERFLOW_LEN: usize = HDR_LEN_V1 + MAX_FRAME_LEN + 1;

/// A chain gathered for the next read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gathered {
    head: u16,
    capacity: usize,
    segments: usize,
}

/// A frame read but not yet delivered, waiting for the guest to post room.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// Header plus frame bytes.
    len: usize,
    /// Bytes of the frame in the chains of `RxState::held_chains`; the
    /// rest is at the start of the overflow room.
    in_guest: usize,
}

/// Per-connection RX state of one queue pair.
pub struct RxState {
    iov: GuestIoVecs,
    chains: Vec<Gathered>,
    /// The attachment may have frames waiting (it is edge-triggered).
    pub readable: bool,
    /// No guest buffers were available: waiting for an RX kick.
    pub starved: bool,
    /// The iovecs of one read, with the overflow room.
    read_iov: ReadIoVecs,
    held: Option<Held>,
    /// The chains a held frame's first part landed in, in order; popped
    /// again (and checked to be the same) before the rest is copied after
    /// them. Reused, so holding allocates nothing.
    held_chains: Vec<Gathered>,
    /// Broken or not, and whether the guest was notified since start.
    pub ring: RingState,
}

impl RxState {
    /// A fresh state that assumes frames may be waiting.
    pub fn new() -> Self {
        RxState {
            iov: GuestIoVecs::new(),
            chains: Vec::new(),
            readable: true,
            starved: false,
            read_iov: ReadIoVecs::new(OVERFLOW_LEN),
            held: None,
            held_chains: Vec::new(),
            ring: RingState::default(),
        }
    }

    /// Forgets a held frame (its chains were given back to the avail ring
    /// when it was held); returns whether there was one.
    pub fn drop_held(&mut self) -> bool {
        self.held.take().is_some()
    }
}

impl Default for RxState {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the RX loop stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum RxStop {
    /// Nothing more to read, or no buffers: an event will wake us.
    Idle,
    /// The budget ran out with frames still waiting.
    Budget,
}

/// Reads frames into the guest until the attachment is empty, the guest
/// has no buffers, or the budget is spent.
///
/// Chains are popped in order and the ones a frame did not fill are kept
/// for the next frame; at the end the unused ones go back to the avail
/// ring. That rewind is only sound if the kept chains are the last ones
/// popped, so a malformed chain met while chains are kept is put back
/// too and dealt with when it comes first.
pub fn process(
    ctx: &mut Ctx<'_>,
    st: &mut RxState,
    vring: &Vring,
    mem: &Mem,
) -> Result<RxStop, QueueError> {
    if !st.readable && st.held.is_none() {
        return Ok(RxStop::Idle);
    }
    let mut vs = vring.get_mut();
    if !vs.get_queue().ready() || !vs.is_enabled() || st.ring.is_broken() {
        return Ok(RxStop::Idle);
    }
    st.iov.clear();
    st.chains.clear();
    let mut stats = Stats::default();
    let result = read_frames(ctx, st, &mut vs, &MemView::new(mem), &mut stats);
    st.ring.unpop(&mut vs, st.chains.iter().map(|g| g.head));
    st.iov.clear();
    st.chains.clear();
    if stats.used {
        st.ring.notify(&mut vs)?;
    }
    result
}

/// What one pass did. Frames and bytes are counted in `deliver`, before
/// the used ring shows each frame.
#[derive(Default)]
struct Stats {
    /// Chains went to the used ring since the guest was last notified.
    used: bool,
}

/// What gathering found.
enum Gather {
    /// Chains are ready for a read (or a held frame).
    Ready,
    /// The guest posted nothing (more): wait for its kick.
    Starved,
}

fn read_frames(
    ctx: &mut Ctx<'_>,
    st: &mut RxState,
    vs: &mut VState,
    view: &MemView<'_>,
    stats: &mut Stats,
) -> Result<RxStop, QueueError> {
    let hdr_len = ctx.hdr_len();
    let mergeable = ctx.features.mergeable_rx();
    let largest = hdr_len
        + if ctx.features.rx_offloads().any_gso() {
            MAX_FRAME_LEN
        } else {
            MAX_NON_GSO_FRAME_LEN
        };
    for _ in 0..BUDGET {
        let want = st.held.as_ref().map_or(largest, |h| h.len);
        if let Gather::Starved = gather(ctx, st, vs, view, stats, want)? {
            st.starved = true;
            return Ok(RxStop::Idle);
        }
        st.starved = false;
        if st.held.is_some() {
            if !deliver_held(ctx, st, vs, stats)? {
                // Still too little room: ask for a kick while every posted
                // chain is popped (so the avail event lands past them),
                // and wait for more buffers.
                if vs.get_queue().event_idx_enabled()
                    && st.ring.enable_notification(vs, view.mem())?
                {
                    continue; // buffers arrived meanwhile
                }
                st.starved = true;
                return Ok(RxStop::Idle);
            }
            continue;
        }
        if !st.readable {
            return Ok(RxStop::Idle);
        }
        let (segments, capacity) = if mergeable {
            (st.iov.segments(), st.iov.len())
        } else {
            (st.chains[0].segments, st.chains[0].capacity)
        };
        let mut bufs = st.read_iov.buffers(&st.iov, segments, capacity, view.mem());
        let n = match ctx.attachment.recv(&mut bufs) {
            Ok(n) => n,
            Err(e) => {
                st.readable = false;
                if e.kind() != io::ErrorKind::WouldBlock {
                    ctx.metrics.rx_dropped.inc();
                    ctx.host_error(format_args!("cannot read from the attachment: {e}"));
                }
                return Ok(RxStop::Idle);
            }
        };
        if n <= capacity {
            deliver(ctx, st, vs, n, stats)?;
            continue;
        }
        // The read filled the guest's buffers (and went on into the
        // overflow room): whatever becomes of the frame, those bytes of
        // guest memory changed.
        if let Some(log) = ctx.dirty {
            st.iov.mark_written(log, 0, capacity);
        }
        if mergeable && n < capacity + OVERFLOW_LEN && n <= largest {
            // Larger than what the guest posted so far: hold it until
            // the guest posts more (see the module documentation).
            st.held_chains.clear();
            st.held_chains.extend_from_slice(&st.chains);
            st.held = Some(Held {
                len: n,
                in_guest: capacity,
            });
            // The chains go back to the avail ring with the rest.
            continue;
        } else {
            // Larger than one chain without MRG_RXBUF, or than any frame
            // the guest accepts (the kernel cut it): never delivered cut.
            ctx.metrics.rx_dropped.inc();
            ctx.host_error(format_args!(
                "dropped a {n}-byte frame: the guest's buffers hold {capacity} bytes{}",
                if mergeable {
                    ""
                } else {
                    " (one chain, no MRG_RXBUF)"
                }
            ));
        }
    }
    Ok(RxStop::Budget)
}

/// Pops chains until they hold `want` bytes (one chain without
/// MRG_RXBUF), or the guest has no more posted.
fn gather(
    ctx: &mut Ctx<'_>,
    st: &mut RxState,
    vs: &mut VState,
    view: &MemView<'_>,
    stats: &mut Stats,
    want: usize,
) -> Result<Gather, QueueError> {
    let hdr_len = ctx.hdr_len();
    let mergeable = ctx.features.mergeable_rx();
    let event_idx = vs.get_queue().event_idx_enabled();
    let queue_size = usize::from(vs.get_queue().size());
    loop {
        while st.chains.is_empty() || (mergeable && st.iov.len() < want) {
            let Some(chain) = st.ring.pop(vs, view.mem())? else {
                break;
            };
            let head = chain.head_index();
            let before = st.iov.segments();
            match st.iov.push_chain(
                chain,
                view,
                Direction::Writable,
                hdr_len,
                MAX_CHAIN_LEN,
                queue_size,
            ) {
                Ok(capacity) => st.chains.push(Gathered {
                    head,
                    capacity,
                    segments: st.iov.segments() - before,
                }),
                Err(e) if st.chains.is_empty() => {
                    ctx.guest_error(format_args!("RX chain {head}: {e}"));
                    ctx.metrics.malformed_chains.inc();
                    st.ring.add_used(vs, head, 0)?;
                    stats.used = true;
                }
                Err(_) => {
                    // Chains are kept before it: put it back, so the rewind
                    // at the end stays contiguous; it is returned when it
                    // comes first.
                    st.ring.unpop(vs, [head].into_iter());
                    return Ok(Gather::Ready);
                }
            }
        }
        if !st.chains.is_empty() {
            return Ok(Gather::Ready);
        }
        // Nothing posted: ask for a kick while every posted chain is
        // popped, so the avail event lands past them.
        if event_idx && st.ring.enable_notification(vs, view.mem())? {
            continue; // buffers arrived meanwhile
        }
        return Ok(Gather::Starved);
    }
}

/// Returns the chains the `n`-byte frame just read filled, with
/// `num_buffers` written; keeps the rest for the next frame.
fn deliver(
    ctx: &mut Ctx<'_>,
    st: &mut RxState,
    vs: &mut VState,
    n: usize,
    stats: &mut Stats,
) -> Result<(), QueueError> {
    let mut remaining = n;
    let mut filled = 0;
    let (mut segments, mut bytes) = (0, 0);
    for g in &st.chains {
        if remaining == 0 && filled > 0 {
            break;
        }
        remaining -= remaining.min(g.capacity);
        filled += 1;
        segments += g.segments;
        bytes += g.capacity;
    }
    if ctx.hdr_len() == HDR_LEN_V1 {
        st.iov
            .write_at(NUM_BUFFERS_OFFSET, &(filled as u16).to_le_bytes());
    }
    // Everything written into the frame's buffers (the read, a held
    // frame's tail, `num_buffers`), marked before the used ring shows it.
    if let Some(log) = ctx.dirty {
        st.iov.mark_written(log, 0, n);
    }
    // Counted before the used ring shows the frame: whoever saw it arrive
    // and then reads the counters finds it counted.
    ctx.metrics.rx_frames.inc();
    ctx.metrics
        .rx_bytes
        .inc_by(n.saturating_sub(ctx.hdr_len()) as u64);
    let mut remaining = n;
    for g in &st.chains[..filled] {
        let take = remaining.min(g.capacity);
        st.ring.add_used(vs, g.head, take as u32)?;
        remaining -= take;
    }
    st.chains.drain(..filled);
    st.iov.drain_front(segments, bytes);
    stats.used = true;
    Ok(())
}

/// Delivers the held frame if the chains gathered now hold it. Returns
/// false when the guest has still not posted enough (the frame stays
/// held), true when the frame went to the guest or had to be dropped.
fn deliver_held(
    ctx: &mut Ctx<'_>,
    st: &mut RxState,
    vs: &mut VState,
    stats: &mut Stats,
) -> Result<bool, QueueError> {
    let Some(held) = st.held else {
        return Ok(true);
    };
    let len = held.len;
    let same_chains = st.chains.len() >= st.held_chains.len()
        && st.chains[..st.held_chains.len()] == st.held_chains[..];
    if !same_chains {
        // The chains the first part went into changed under the device
        // (a reset, or a guest rewriting posted descriptors): the frame
        // is lost, never delivered with another's bytes.
        st.held = None;
        ctx.metrics.rx_dropped.inc();
        ctx.host_error(format_args!(
            "dropped a held {len}-byte frame: the guest's posted buffers changed"
        ));
        return Ok(true);
    }
    if st.iov.len() < len {
        if st.chains.len() >= usize::from(vs.get_queue().size()) {
            // The guest's whole ring cannot hold it.
            st.held = None;
            ctx.metrics.rx_dropped.inc();
            ctx.host_error(format_args!(
                "dropped a {len}-byte frame: larger than the guest's whole RX ring"
            ));
            return Ok(true);
        }
        return Ok(false);
    }
    let in_guest = held.in_guest;
    let rest = &st.read_iov.overflow()[..len - in_guest];
    st.iov.write_at(in_guest, rest);
    st.held = None;
    deliver(ctx, st, vs, len, stats)?;
    Ok(true)
}
