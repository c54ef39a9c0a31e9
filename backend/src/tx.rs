//! Guest-to-host: descriptor chains from the TX queue, sent through the
//! queue pair's attachment straight from guest memory.
//!
//! A chain's completion may be immediate (the attachment copied the frame,
//! as the tap always does) or deferred (the kernel holds the guest's pages
//! until a zero-copy notification arrives). A deferred chain is kept in
//! `TxState::lent` by head index and length only, never by pointer, so
//! SET_MEM_TABLE can change the memory map while pages are lent.
//!
//! The guest can rewrite a buffer after it was checked here and before (or
//! while) the kernel reads it. That harms only the guest's own frame: the
//! header was validated from a copy and the kernel validates the header it
//! reads again; the bytes sent are whatever the guest left there.

use std::io;

use log::debug;
use vhost_user_backend::VringT;
use virtio_queue::{QueueOwnedT, QueueT};
use zcnet_tap::Sent;

use crate::datapath::{Ctx, QueueError, VState, Vring};
use crate::iovec::{Direction, GuestIoVecs, Mem};
use crate::vnet_hdr::VnetHdr;

/// The largest frame accepted after the virtio-net header: 64 KiB of GSO
/// payload and headers plus an Ethernet header and a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65536 + 14 + 4;
/// The shortest frame: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// A chain lent to the kernel, waiting for its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LentChain {
    pub head: u16,
    pub first_id: u32,
    pub last_id: u32,
}

/// Per-connection TX state of one queue pair.
#[derive(Default)]
pub struct TxState {
    iov: GuestIoVecs,
    /// The attachment said EAGAIN: wait for it to be writable.
    pub blocked: bool,
    /// Chains the kernel still holds pages of.
    pub lent: Vec<LentChain>,
}

/// What happened to one chain.
enum Outcome {
    Done { bytes: usize },
    Lent { first_id: u32, last_id: u32 },
    Malformed,
    Dropped,
    WouldBlock,
}

/// Drains the TX queue until it is empty or the attachment is full.
pub fn process(
    ctx: &mut Ctx<'_>,
    st: &mut TxState,
    vring: &Vring,
    mem: &Mem,
) -> Result<(), QueueError> {
    let mut vs = vring.get_mut();
    if !vs.get_queue().ready() || !vs.is_enabled() {
        return Ok(());
    }
    st.blocked = false;
    let event_idx = vs.get_queue().event_idx_enabled();
    let (mut frames, mut bytes, mut used) = (0u64, 0u64, false);
    'drain: loop {
        if event_idx {
            vs.get_queue_mut().disable_notification(mem)?;
        }
        while let Some(chain) = vs.get_queue_mut().pop_descriptor_chain(mem) {
            let head = chain.head_index();
            st.iov.clear();
            let outcome = match st.iov.push_chain(
                chain,
                mem,
                Direction::Readable,
                ctx.hdr_len() + MIN_FRAME_LEN,
                ctx.hdr_len() + MAX_FRAME_LEN,
            ) {
                Ok(_) => send(ctx, &st.iov),
                Err(e) => {
                    ctx.guest_error(format_args!("TX chain {head}: {e}"));
                    Outcome::Malformed
                }
            };
            match outcome {
                Outcome::Done { bytes: n } => {
                    frames += 1;
                    bytes += n as u64;
                    add_used(&mut vs, head)?;
                    used = true;
                }
                Outcome::Lent { first_id, last_id } => st.lent.push(LentChain {
                    head,
                    first_id,
                    last_id,
                }),
                Outcome::Malformed => {
                    ctx.metrics.malformed_chains.inc();
                    add_used(&mut vs, head)?;
                    used = true;
                }
                Outcome::Dropped => {
                    ctx.metrics.tx_dropped.inc();
                    add_used(&mut vs, head)?;
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
        }
        if !event_idx || !vs.get_queue_mut().enable_notification(mem)? {
            break;
        }
    }
    st.iov.clear();
    ctx.metrics.tx_frames.inc_by(frames);
    ctx.metrics.tx_bytes.inc_by(bytes);
    if used && vs.needs_notification()? {
        vs.signal_used_queue().map_err(QueueError::Signal)?;
    }
    Ok(())
}

/// TX used length is 0: the device wrote nothing into the chain.
fn add_used(vs: &mut VState, head: u16) -> Result<(), QueueError> {
    vs.add_used(head, 0).map_err(QueueError::Queue)
}

fn send(ctx: &mut Ctx<'_>, iov: &GuestIoVecs) -> Outcome {
    let hdr_len = ctx.hdr_len();
    let frame_len = iov.len() - hdr_len;
    let mut raw = [0u8; VnetHdr::LEN];
    iov.read_prefix(&mut raw);
    let hdr = VnetHdr::parse(&raw);
    if let Err(e) = hdr.validate(frame_len, &ctx.features) {
        ctx.guest_error(format_args!("TX header: {e}"));
        return Outcome::Malformed;
    }
    match ctx.attachment.send(iov.as_slice()) {
        Ok(Sent::Copied) => Outcome::Done { bytes: frame_len },
        Ok(Sent::Lent { first_id, last_id }) => Outcome::Lent { first_id, last_id },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::WouldBlock,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            ctx.guest_error(format_args!("the kernel refused a TX frame: {e}"));
            Outcome::Malformed
        }
        Err(e) => {
            debug!("queue pair {}: TX frame dropped: {e}", ctx.pair);
            ctx.host_error(format_args!("TX frame dropped: {e}"));
            Outcome::Dropped
        }
    }
}
