//! Guest-to-host: descriptor chains from the TX queue, sent through the
//! queue pair's attachment straight from guest memory, in batches of up to
//! [`MAX_BATCH`] chains (the tap's `uring` engine writes a batch with one
//! `io_uring_enter`; its `syscall` engine, and the socket attachments, one
//! system call per frame). Every chain of a batch stays popped until the
//! attachment has returned: the guest-memory snapshot and the frames'
//! iovecs are borrowed for the whole call, so no write can outlive them.
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

use arrayvec::ArrayVec;
use log::debug;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use zcnet_tap::vnet_hdr::{VnetHdr, MAX_FRAME_LEN, MIN_FRAME_LEN};
use zcnet_tap::{Completion, SendMode, Sent, TxFrame, MAX_BATCH};

use crate::datapath::{Ctx, QueueError, VState, Vring};
use crate::iovec::{Direction, GuestIoVecs, Mem, MemView};
use crate::lending::{CopyReason, LendPolicy, Lending};
use crate::ring::RingState;

/// Per-connection TX state of one queue pair.
pub struct TxState {
    /// The iovecs of each chain of a batch (chain `i` in `iovs[i]`),
    /// reused from batch to batch.
    iovs: Vec<GuestIoVecs>,
    /// The chains of the batch being sent, in ring order.
    batch: Vec<Popped>,
    /// What the attachment made of each frame of the batch.
    modes: Vec<SendMode>,
    results: Vec<io::Result<Sent>>,
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
            iovs: (0..MAX_BATCH).map(|_| GuestIoVecs::new()).collect(),
            batch: Vec::with_capacity(MAX_BATCH),
            modes: Vec::with_capacity(MAX_BATCH),
            results: Vec::with_capacity(MAX_BATCH),
            blocked: false,
            lending: Lending::new(policy),
            completions: Vec::new(),
            done: Vec::new(),
            ring: RingState::default(),
        }
    }
}

/// A chain popped for the batch being built.
struct Popped {
    head: u16,
    /// The frame to send; `None` for a malformed chain.
    frame: Option<Frame>,
}

/// A valid chain's frame, checked before the batch is sent.
struct Frame {
    hdr: VnetHdr,
    /// Bytes after the virtio-net header.
    len: usize,
    mode: SendMode,
    /// Why it is copied although it could have been lent.
    reason: Option<CopyReason>,
}

/// What one drain did. Frames and bytes are counted per batch in `send`,
/// before the used ring shows any of its chains: whoever saw a chain come
/// back and then reads the counters finds its frame counted.
#[derive(Default)]
struct Stats {
    /// Chains went to the used ring since the guest was last notified.
    used: bool,
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
///
/// Chains go in batches of up to [`MAX_BATCH`]: popped and checked, then
/// handed to the attachment at once (the tap's io_uring engine writes a
/// batch with one system call), then returned in ring order. A chain
/// reaches the used ring only after its frame was sent or refused (or,
/// lent, when the kernel releases its pages). Frames the attachment could
/// not take (EAGAIN) are the batch's tail: those chains go back to the
/// avail ring in order, and the queue waits for the attachment to become
/// writable. After each full batch the guest is told (if it asked), so it
/// refills the ring while zcnet still works on it.
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
    let view = MemView::new(mem);
    let mut stats = Stats {
        used: reap(ctx, st, &mut vs)?,
    };
    let result = drain(ctx, st, &mut vs, &view, &mut stats);
    for iov in &mut st.iovs {
        iov.clear();
    }
    // Notifications that arrived during the drain, or that an attachment
    // read while a send failed (a refused lent send may have taken an id;
    // see `udp.rs`), are taken in now: nothing else may wake the worker
    // for them. Without lending this costs nothing (see `reap`).
    stats.used |= reap(ctx, st, &mut vs)?;
    ctx.metrics.lent_chains.set(st.lending.lent() as i64);
    ctx.metrics.lent_chains_max.set(st.lending.max_lent as i64);
    if stats.used {
        st.ring.notify(&mut vs)?;
    }
    result
}

/// The drain loop: notifications off (EVENT_IDX: the avail event stays
/// behind; without it: `VRING_USED_F_NO_NOTIFY`), batches until the ring
/// is empty, notifications on, and again if chains arrived meanwhile.
fn drain(
    ctx: &mut Ctx<'_>,
    st: &mut TxState,
    vs: &mut VState,
    view: &MemView<'_>,
    stats: &mut Stats,
) -> Result<(), QueueError> {
    loop {
        st.ring.disable_notification(vs, view.mem())?;
        loop {
            let broken = collect(ctx, st, vs, view, stats)?;
            let full = st.batch.len() == MAX_BATCH;
            if !st.batch.is_empty() {
                send(ctx, st, vs, view.mem(), stats)?;
            }
            if let Some(e) = broken {
                return Err(e);
            }
            if st.blocked {
                return Ok(());
            }
            if !full {
                break;
            }
            // A long drain tells the guest partway (if it asked), and takes
            // in completions of lent chains.
            stats.used |= reap(ctx, st, vs)?;
            if stats.used {
                st.ring.notify(vs)?;
                stats.used = false;
            }
        }
        if !st.ring.enable_notification(vs, view.mem())? {
            return Ok(());
        }
    }
}

/// Pops up to [`MAX_BATCH`] chains into `st.batch`, each checked: its
/// iovecs in `st.iovs`, its header validated. Returns the error of a
/// broken ring, met after the chains popped before it (which still go).
fn collect(
    ctx: &mut Ctx<'_>,
    st: &mut TxState,
    vs: &mut VState,
    view: &MemView<'_>,
    stats: &mut Stats,
) -> Result<Option<QueueError>, QueueError> {
    let ring_size = vs.get_queue().size();
    let hdr_len = ctx.hdr_len();
    let can_lend = ctx.attachment.can_lend();
    let mut to_lend = 0;
    st.batch.clear();
    while st.batch.len() < MAX_BATCH {
        let chain = match st.ring.pop(vs, view.mem()) {
            Ok(Some(chain)) => chain,
            Ok(None) => break,
            Err(e) => return Ok(Some(e)),
        };
        let head = chain.head_index();
        if can_lend && st.lending.at_cap(ring_size, to_lend) {
            // Take in what the kernel has released before copying for
            // the cap.
            stats.used |= reap(ctx, st, vs)?;
        }
        let iov = &mut st.iovs[st.batch.len()];
        iov.clear();
        let frame = match iov.push_chain(
            chain,
            view,
            Direction::Readable,
            hdr_len + MIN_FRAME_LEN,
            hdr_len + MAX_FRAME_LEN,
            usize::from(ring_size),
        ) {
            Ok(_) => check(ctx, iov),
            Err(e) => {
                ctx.guest_error(format_args!("TX chain {head}: {e}"));
                None
            }
        };
        let frame = frame.map(|(hdr, len)| {
            let (mode, reason) = if can_lend {
                st.lending.choose(len, ring_size, to_lend)
            } else {
                (SendMode::Copy, None)
            };
            if mode == SendMode::Lend {
                to_lend += 1;
            }
            Frame {
                hdr,
                len,
                mode,
                reason,
            }
        });
        st.batch.push(Popped { head, frame });
    }
    Ok(None)
}

/// The chain's virtio-net header, checked (and normalised) from a copy
/// (the guest cannot change what zcnet hands on after the check), and the
/// frame's length after it; `None` if the header is not one the guest
/// may send.
fn check(ctx: &mut Ctx<'_>, iov: &GuestIoVecs) -> Option<(VnetHdr, usize)> {
    let frame_len = iov.len() - ctx.hdr_len();
    let mut raw = [0u8; VnetHdr::FIELDS_LEN];
    iov.read_prefix(&mut raw);
    match VnetHdr::parse(&raw).validate(frame_len, &ctx.features.tx_offloads()) {
        Ok(hdr) => Some((hdr, frame_len)),
        Err(e) => {
            ctx.guest_error(format_args!("TX header: {e}"));
            None
        }
    }
}

/// Hands the batch's frames to the attachment at once, then returns the
/// chains in ring order: sent, lent, refused or malformed. From the first
/// frame the attachment could not take, the chains go back to the avail
/// ring and the queue is blocked.
fn send(
    ctx: &mut Ctx<'_>,
    st: &mut TxState,
    vs: &mut VState,
    mem: &Mem,
    stats: &mut Stats,
) -> Result<(), QueueError> {
    let hdr_len = ctx.hdr_len();
    let TxState {
        iovs,
        batch,
        modes,
        results,
        ..
    } = st;
    // The frames borrow their chains' iovecs and the memory snapshot, so
    // neither can go away while the attachment holds them; they live on
    // this stack until the attachment returns.
    //
    // A lent frame is read by the kernel after the call returns. The
    // guest can rewrite the buffer meanwhile (it owns it); that corrupts
    // only its own frame on the wire: the header was validated from a
    // copy and the kernel parses what it sends again, so no host state
    // depends on those bytes.
    let mut frames: ArrayVec<TxFrame<'_>, MAX_BATCH> = ArrayVec::new();
    modes.clear();
    for (p, iov) in batch.iter().zip(iovs.iter_mut()) {
        if let Some(f) = &p.frame {
            modes.push(f.mode);
            frames.push(iov.tx_frame(mem, hdr_len, f.hdr));
        }
    }
    let count = frames.len();
    results.clear();
    results.resize_with(count, || Ok(Sent::Copied));
    let taken = if count == 0 {
        0
    } else {
        ctx.attachment.send_batch(&mut frames, modes, results)
    };
    drop(frames);

    // Counted before any chain of the batch reaches the used ring (see
    // `Stats`): every frame the attachment took, sent or lent.
    let (mut sent, mut sent_bytes) = (0, 0);
    for (p, r) in st
        .batch
        .iter()
        .filter_map(|p| p.frame.as_ref())
        .zip(&st.results[..taken])
    {
        if r.is_ok() {
            sent += 1;
            sent_bytes += p.len as u64;
        }
    }
    ctx.metrics.tx_frames.inc_by(sent);
    ctx.metrics.tx_bytes.inc_by(sent_bytes);

    let mut next = 0;
    for (i, p) in st.batch.iter().enumerate() {
        let Some(f) = &p.frame else {
            ctx.metrics.malformed_chains.inc();
            st.ring.add_used(vs, p.head, 0)?;
            stats.used = true;
            continue;
        };
        if next == taken {
            // Give this chain and every later one back to the avail ring:
            // they are sent when the attachment is writable again.
            st.ring.unpop(vs, st.batch[i..].iter().map(|p| p.head));
            st.blocked = true;
            break;
        }
        let result = std::mem::replace(&mut st.results[next], Ok(Sent::Copied));
        next += 1;
        match result {
            Ok(Sent::Copied) => {
                if f.reason.is_some() || f.mode == SendMode::Lend {
                    ctx.metrics.zc_copy_fallbacks.inc();
                }
                st.ring.add_used(vs, p.head, 0)?;
                stats.used = true;
            }
            Ok(Sent::Lent { first_id, last_id }) => {
                // Not on the used ring until the kernel releases the
                // pages: see `reap`.
                ctx.metrics.zc_sends.inc();
                st.lending.lend(p.head, first_id, last_id);
            }
            Err(e) => {
                // The header zcnet wrote is one the host accepts, so a
                // refusal is the host's (tap down, peer gone, a frame the
                // kernel will not take), not the guest's: counted as a
                // drop.
                debug!("queue pair {}: TX frame dropped: {e}", ctx.pair);
                ctx.host_error(format_args!("TX frame dropped: {e}"));
                ctx.metrics.tx_dropped.inc();
                st.ring.add_used(vs, p.head, 0)?;
                stats.used = true;
            }
        }
    }
    Ok(())
}
