//! Host-to-guest: frames read from the attachment straight into the
//! guest's RX buffers.
//!
//! With MRG_RXBUF a frame may fill several descriptor chains; the device
//! writes how many into `num_buffers` of the first one. zcnet gathers
//! enough chains for the largest frame the attachment may hand over (64 KiB
//! once a GSO offload is on), or every chain the guest has posted if that
//! is less, reads once with `readv`, returns the chains the frame filled,
//! keeps the rest for the next frame, and gives the unused ones back to the
//! avail ring when it stops. With MRG_RXBUF it waits until the guest has
//! posted room for the largest frame. A frame larger than what the guest
//! posted is dropped and counted (an overflow byte after the guest's
//! buffers shows it), never delivered truncated.
//!
//! When the guest has posted no buffers the pair stops reading: the frames
//! wait in the tap's queue, and the guest's next RX kick resumes reading.

use std::io;

use vhost_user_backend::VringT;
use virtio_queue::QueueT;

use crate::datapath::{Ctx, QueueError, VState, Vring};
use crate::features::HDR_LEN_V1;
use crate::iovec::{Direction, GuestIoVecs, Mem, ReadIoVecs};
use crate::tx::MAX_FRAME_LEN;

/// Frames read per event before other work of the pair gets a turn.
pub const BUDGET: usize = 256;
/// The largest frame without GSO: a 9000-byte jumbo frame, Ethernet header
/// and VLAN tag.
const MAX_NON_GSO_FRAME: usize = 9000 + 14 + 4;
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest single RX chain taken (a sanity bound, not a frame limit).
const MAX_CHAIN_LEN: usize = 1 << 20;

/// A chain gathered for the next read.
#[derive(Clone, Copy)]
struct Gathered {
    head: u16,
    capacity: usize,
    segments: usize,
}

/// Per-connection RX state of one queue pair.
#[derive(Default)]
pub struct RxState {
    iov: GuestIoVecs,
    chains: Vec<Gathered>,
    /// The attachment may have frames waiting (it is edge-triggered).
    pub readable: bool,
    /// No guest buffers were available: waiting for an RX kick.
    pub starved: bool,
    /// The iovecs of one read, with an overflow byte after the guest's.
    read_iov: ReadIoVecs,
}

impl RxState {
    /// A fresh state that assumes frames may be waiting.
    pub fn new() -> Self {
        RxState {
            readable: true,
            ..Self::default()
        }
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
/// ring. That rewind is only sound if the held chains are the last ones
/// popped, so a malformed chain met while chains are held is put back
/// too and dealt with when it comes first.
pub fn process(
    ctx: &mut Ctx<'_>,
    st: &mut RxState,
    vring: &Vring,
    mem: &Mem,
) -> Result<RxStop, QueueError> {
    if !st.readable {
        return Ok(RxStop::Idle);
    }
    let mut vs = vring.get_mut();
    if !vs.get_queue().ready() || !vs.is_enabled() {
        return Ok(RxStop::Idle);
    }
    st.iov.clear();
    st.chains.clear();
    let result = read_frames(ctx, st, &mut vs, mem);
    rewind(&mut vs, st.chains.len());
    st.iov.clear();
    st.chains.clear();
    let (stop, stats) = result?;
    ctx.metrics.rx_frames.inc_by(stats.frames);
    ctx.metrics.rx_bytes.inc_by(stats.bytes);
    if stats.used && vs.needs_notification()? {
        vs.signal_used_queue().map_err(QueueError::Signal)?;
    }
    Ok(stop)
}

#[derive(Default)]
struct Stats {
    frames: u64,
    bytes: u64,
    used: bool,
}

fn read_frames(
    ctx: &mut Ctx<'_>,
    st: &mut RxState,
    vs: &mut VState,
    mem: &Mem,
) -> Result<(RxStop, Stats), QueueError> {
    let hdr_len = ctx.hdr_len();
    let mergeable = ctx.features.mergeable_rx();
    let need = hdr_len
        + if ctx.features.rx_offloads().any_gso() {
            MAX_FRAME_LEN
        } else {
            MAX_NON_GSO_FRAME
        };
    let event_idx = vs.get_queue().event_idx_enabled();
    let mut stats = Stats::default();

    for _ in 0..BUDGET {
        // Gather buffers: one chain without MRG_RXBUF, else enough for the
        // largest frame (or every chain the guest has posted).
        let mut stopped_by_malformed = false;
        while st.chains.is_empty() || (mergeable && st.iov.len() < need) {
            let Some(chain) = vs.get_queue_mut().pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let before = st.iov.segments();
            match st
                .iov
                .push_chain(chain, mem, Direction::Writable, hdr_len, MAX_CHAIN_LEN)
            {
                Ok(capacity) => st.chains.push(Gathered {
                    head,
                    capacity,
                    segments: st.iov.segments() - before,
                }),
                Err(e) if st.chains.is_empty() => {
                    ctx.guest_error(format_args!("RX chain {head}: {e}"));
                    ctx.metrics.malformed_chains.inc();
                    vs.add_used(head, 0)?;
                    stats.used = true;
                }
                Err(_) => {
                    rewind(vs, 1);
                    stopped_by_malformed = true;
                    break;
                }
            }
        }
        // Too little posted for the largest frame: wait for more rather
        // than risk a frame that does not fit (vhost-net waits too),
        // unless the guest's whole ring is popped or a malformed chain
        // stopped the gathering.
        let short = mergeable
            && !st.chains.is_empty()
            && st.iov.len() < need
            && !stopped_by_malformed
            && st.chains.len() < usize::from(vs.get_queue().size());
        if st.chains.is_empty() || short {
            // Ask for a kick while every posted chain is popped, so the
            // avail event lands past them.
            if event_idx && vs.get_queue_mut().enable_notification(mem)? {
                continue; // buffers arrived meanwhile
            }
            st.starved = true;
            return Ok((RxStop::Idle, stats));
        }
        st.starved = false;
        let frame_iov = if mergeable {
            st.iov.as_slice()
        } else {
            &st.iov.as_slice()[..st.chains[0].segments]
        };
        let read_iov = st.read_iov.with_overflow(frame_iov);
        // SAFETY: every iovec but the last was built by `push_chain` from
        // device-writable descriptors, bounds-checked against `mem`, which
        // is borrowed for this whole call so the mapping stays in place. No
        // Rust reference points into guest memory. The last is the overflow
        // byte `ReadIoVecs` owns, not otherwise borrowed during the call.
        let n = match unsafe { ctx.attachment.recv(read_iov) } {
            Ok(n) => n,
            Err(e) => {
                st.readable = false;
                if e.kind() != io::ErrorKind::WouldBlock {
                    ctx.metrics.rx_dropped.inc();
                    ctx.host_error(format_args!("cannot read from the attachment: {e}"));
                }
                return Ok((RxStop::Idle, stats));
            }
        };
        let capacity = if mergeable {
            st.iov.len()
        } else {
            st.chains[0].capacity
        };
        if n > capacity {
            // The frame reached the overflow byte (tun) or the attachment
            // reported its full length (sockets): it did not fit what the
            // guest posted. Drop it and keep the buffers (their contents
            // are not returned).
            ctx.metrics.rx_dropped.inc();
            ctx.host_error(format_args!(
                "dropped a {n}-byte frame: the guest had posted only {capacity} bytes of RX buffers"
            ));
            continue;
        }
        // The chains the frame filled go to the guest.
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
        if hdr_len == HDR_LEN_V1 {
            st.iov
                .write_at(NUM_BUFFERS_OFFSET, &(filled as u16).to_le_bytes());
        }
        let mut remaining = n;
        for g in &st.chains[..filled] {
            let take = remaining.min(g.capacity);
            vs.add_used(g.head, take as u32)?;
            remaining -= take;
        }
        st.chains.drain(..filled);
        st.iov.drain_front(segments, bytes);
        stats.used = true;
        stats.frames += 1;
        stats.bytes += n.saturating_sub(hdr_len) as u64;
    }
    Ok((RxStop::Budget, stats))
}

/// Gives the last `count` popped chains back to the avail ring.
fn rewind(vs: &mut VState, count: usize) {
    let q = vs.get_queue_mut();
    q.set_next_avail(q.next_avail().wrapping_sub(count as u16));
}
