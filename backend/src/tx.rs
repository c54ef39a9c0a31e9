//! Guest-to-host: descriptor chains from the TX queue, sent through the
//! queue pair's attachment straight from guest memory.
//!
//! A chain's completion may be immediate (the attachment copied the frame,
//! as the tap always does) or deferred (the kernel holds the guest's pages
//! until a zero-copy notification arrives). A deferred chain is kept by the
//! completion engine (`lending`) by head index and id range only, never by
//! pointer, so SET_MEM_TABLE can change the memory map while pages are lent.
//!
//! The guest can rewrite a buffer after it was checked here and before (or
//! while) the kernel reads it. That harms only the guest's own frame: the
//! header was validated from a copy and the kernel validates the header it
//! reads again; the bytes sent are whatever the guest left there.

use std::io;

use log::debug;
use vhost_user_backend::VringT;
use virtio_queue::{QueueOwnedT, QueueT};
use zcnet_tap::vnet_hdr::{VnetHdr, MAX_FRAME_LEN, MIN_FRAME_LEN};
use zcnet_tap::{Completion, SendMode, Sent};

use crate::datapath::{Ctx, QueueError, VState, Vring};
use crate::iovec::{Direction, GuestIoVecs, Mem};
use crate::lending::{LendPolicy, Lending};
use crate::ring::RingState;

/// Chains handled between two looks at whether the guest wants a call.
const SIGNAL_BATCH: usize = 64;

/// Per-connection TX state of one queue pair.
pub struct TxState {
    iov: GuestIoVecs,
    /// The attachment said EAGAIN: wait for it to be writable.
    pub blocked: bool,
    /// Chains the kernel still holds pages of.
    pub lending: Lending,
    completions: Vec<Completion>,
    done: Vec<u16>,
    /// Broken or not, and whether the guest was notified since start.
    pub ring: RingState,
}

impl TxState {
    pub fn new(policy: LendPolicy) -> Self {
        TxState {
            iov: GuestIoVecs::default(),
            blocked: false,
            lending: Lending::new(policy),
            completions: Vec::new(),
            done: Vec::new(),
            ring: RingState::default(),
        }
    }
}

/// What happened to one chain.
enum Outcome {
    Done {
        bytes: usize,
    },
    Lent {
        first_id: u32,
        last_id: u32,
        bytes: usize,
    },
    Malformed,
    Dropped,
    WouldBlock,
}

/// Puts on the used ring every lent chain the kernel's notifications
/// finished. Returns whether it used any chain. Notifications for chains
/// zcnet no longer holds (abandoned at a queue stop) are counted only.
pub fn reap(ctx: &mut Ctx<'_>, st: &mut TxState, vs: &mut VState) -> Result<bool, QueueError> {
    if st.lending.lent() == 0 && !ctx.attachment.can_lend() {
        return Ok(false);
    }
    st.completions.clear();
    if let Err(e) = ctx.attachment.reap(&mut st.completions) {
        ctx.host_error(format_args!("cannot read zero-copy notifications: {e}"));
    }
    st.done.clear();
    for c in &st.completions {
        let ids = u64::from(c.last.wrapping_sub(c.first)) + 1;
        ctx.metrics.zc_completed.inc_by(ids);
        if c.copied {
            ctx.metrics.zc_copied.inc_by(ids);
        }
        st.lending.complete(*c, ctx.pair, &mut st.done);
    }
    for &head in &st.done {
        st.ring.add_used(vs, head, 0)?;
    }
    ctx.metrics.lent_chains.set(st.lending.lent() as i64);
    Ok(!st.done.is_empty())
}

/// Reaps completions and notifies the guest if that used any chain.
pub fn complete(ctx: &mut Ctx<'_>, st: &mut TxState, vring: &Vring) -> Result<(), QueueError> {
    let mut vs = vring.get_mut();
    // Reaped even on a stopped queue: the notifications of abandoned
    // chains must leave the error queue; they complete no chain.
    if reap(ctx, st, &mut vs)? && vs.get_queue().ready() {
        st.ring.notify(&mut vs)?;
    }
    Ok(())
}

/// Drains the TX queue until it is empty or the attachment is full.
pub fn process(
    ctx: &mut Ctx<'_>,
    st: &mut TxState,
    vring: &Vring,
    mem: &Mem,
) -> Result<(), QueueError> {
    let mut vs = vring.get_mut();
    if !vs.get_queue().ready() || !vs.is_enabled() || st.ring.is_broken() {
        return Ok(());
    }
    st.blocked = false;
    let event_idx = vs.get_queue().event_idx_enabled();
    let ring_size = vs.get_queue().size();
    let (mut frames, mut bytes) = (0u64, 0u64);
    let mut used = reap(ctx, st, &mut vs)?;
    let mut batch = 0usize;
    let mut failure = None;
    'drain: loop {
        if event_idx {
            st.ring.disable_notification(&mut vs, mem)?;
        }
        loop {
            let chain = match st.ring.pop(&mut vs, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break 'drain;
                }
            };
            let head = chain.head_index();
            if st.lending.at_cap(ring_size) {
                // Take in what the kernel has released before copying
                // for the cap.
                used |= reap(ctx, st, &mut vs)?;
            }
            st.iov.clear();
            let outcome = match st.iov.push_chain(
                chain,
                mem,
                Direction::Readable,
                ctx.hdr_len() + MIN_FRAME_LEN,
                ctx.hdr_len() + MAX_FRAME_LEN,
                usize::from(ring_size),
            ) {
                Ok(_) => send(ctx, &mut st.lending, ring_size, &mut st.iov, mem),
                Err(e) => {
                    ctx.guest_error(format_args!("TX chain {head}: {e}"));
                    Outcome::Malformed
                }
            };
            match outcome {
                Outcome::Done { bytes: n } => {
                    frames += 1;
                    bytes += n as u64;
                    st.ring.add_used(&mut vs, head, 0)?;
                    used = true;
                }
                Outcome::Lent {
                    first_id,
                    last_id,
                    bytes: n,
                } => {
                    // Not on the used ring until the kernel releases the
                    // pages: see `reap`.
                    frames += 1;
                    bytes += n as u64;
                    ctx.metrics.zc_sends.inc();
                    st.lending.lend(head, first_id, last_id);
                }
                Outcome::Malformed => {
                    ctx.metrics.malformed_chains.inc();
                    st.ring.add_used(&mut vs, head, 0)?;
                    used = true;
                }
                Outcome::Dropped => {
                    ctx.metrics.tx_dropped.inc();
                    st.ring.add_used(&mut vs, head, 0)?;
                    used = true;
                }
                Outcome::WouldBlock => {
                    // Give the chain back to the avail ring: it is sent
                    // when the attachment reports it is writable again.
                    vs.get_queue_mut().go_to_previous_position();
                    st.blocked = true;
                    break 'drain;
                }
            }
            batch += 1;
            if batch == SIGNAL_BATCH {
                // A long drain tells the guest partway (if it asked), so
                // it refills the ring while zcnet still works on it, and
                // takes in completions of lent chains.
                batch = 0;
                used |= reap(ctx, st, &mut vs)?;
                if used {
                    st.ring.notify(&mut vs)?;
                    used = false;
                }
            }
        }
        if !event_idx || !st.ring.enable_notification(&mut vs, mem)? {
            break;
        }
    }
    st.iov.clear();
    ctx.metrics.lent_chains.set(st.lending.lent() as i64);
    ctx.metrics.lent_chains_max.set(st.lending.max_lent as i64);
    ctx.metrics.tx_frames.inc_by(frames);
    ctx.metrics.tx_bytes.inc_by(bytes);
    if used {
        st.ring.notify(&mut vs)?;
    }
    failure.map_or(Ok(()), Err)
}

fn send(
    ctx: &mut Ctx<'_>,
    lending: &mut Lending,
    ring_size: u16,
    iov: &mut GuestIoVecs,
    mem: &Mem,
) -> Outcome {
    let hdr_len = ctx.hdr_len();
    let frame_len = iov.len() - hdr_len;
    let mut raw = [0u8; VnetHdr::FIELDS_LEN];
    iov.read_prefix(&mut raw);
    // The header is checked (and normalised) from this copy; the guest
    // cannot change what zcnet hands on after the check.
    let hdr = match VnetHdr::parse(&raw).validate(frame_len, &ctx.features.tx_offloads()) {
        Ok(h) => h,
        Err(e) => {
            ctx.guest_error(format_args!("TX header: {e}"));
            return Outcome::Malformed;
        }
    };
    let (mode, reason) = if ctx.attachment.can_lend() {
        lending.choose(frame_len, ring_size)
    } else {
        (SendMode::Copy, None)
    };
    let mut frame = iov.tx_frame(mem, hdr_len, hdr);
    // With SendMode::Lend the kernel reads the guest's pages after this
    // call returns. The guest can rewrite the buffer meanwhile (it owns
    // it); that corrupts only its own frame on the wire: the header was
    // validated from a copy above and the kernel parses what it sends
    // again, so no host state depends on those bytes.
    match ctx.attachment.send(&mut frame, mode) {
        Ok(Sent::Copied) => {
            if reason.is_some() || mode == SendMode::Lend {
                ctx.metrics.zc_copy_fallbacks.inc();
            }
            Outcome::Done { bytes: frame_len }
        }
        Ok(Sent::Lent { first_id, last_id }) => Outcome::Lent {
            first_id,
            last_id,
            bytes: frame_len,
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::WouldBlock,
        Err(e) => {
            // The header zcnet wrote is one the host accepts, so a refusal
            // is the host's (tap down, peer gone, a frame the kernel will
            // not take), not the guest's: counted as a drop.
            debug!("queue pair {}: TX frame dropped: {e}", ctx.pair);
            ctx.host_error(format_args!("TX frame dropped: {e}"));
            Outcome::Dropped
        }
    }
}
