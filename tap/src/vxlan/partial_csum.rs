//! Checksum offload for a frame that is not segmented: the guest set
//! NEEDS_CSUM and left the checksum from `csum_start` to the end of the
//! frame for the device to compute and store at `csum_start + csum_offset`
//! (virtio 1.2 §5.1.6.2).
//!
//! The guest's buffer is device-readable only, so zcnet never writes it.
//! It copies the frame's first bytes, up to and including the checksum
//! field, into its own memory, computes the checksum, and stores it in
//! that copy. The attachment sends the copy from zcnet's memory and the
//! rest of the frame from guest memory.
//!
//! The sum covers the checksum field as the guest left it: a Linux guest
//! stores the pseudo-header's sum there (`CHECKSUM_PARTIAL`), so the
//! result is the full TCP or UDP checksum without zcnet knowing the
//! protocol. A result of 0 is sent as 0xffff, as the kernel's
//! `skb_checksum_help` does (`CSUM_MANGLED_0`): for UDP, 0 would mean "no
//! checksum"; for TCP the two are the same number.
//!
//! The guest may rewrite its buffer after the sum was taken: that spoils
//! only its own frame's checksum (see [`segment`](super::segment)).

use thiserror::Error;

use super::csum::{Csum, PayloadSum};
use crate::vnet_hdr::VnetHdr;

/// Why a NEEDS_CSUM frame's checksum cannot be completed. The guest's
/// fault in every case.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CsumError {
    #[error("GSO type {0:#04x}: a GSO frame is segmented (TsoPlan), not checksummed whole")]
    GsoFrame(u8),
    #[error("checksum at {csum_start}+{csum_offset} lies outside the {frame_len}-byte frame")]
    OutsideFrame {
        csum_start: u16,
        csum_offset: u16,
        frame_len: usize,
    },
    #[error("the checksum field ends at byte {need} but only {have} bytes were copied")]
    Truncated { need: usize, have: usize },
}

/// Completes the checksum of a non-GSO frame of `frame_len` bytes.
///
/// `head` is a copy of the frame's first bytes (at least
/// `csum_start + csum_offset + 2` of them; more is fine); `frame` sums the
/// rest, in guest memory. `out` is cleared and receives `prefix` (the
/// VXLAN header, or nothing) followed by the frame's first `n` bytes with
/// the checksum stored; the function returns `n`. Send `out`, then the
/// frame from byte `n` on. Without NEEDS_CSUM, `n` is 0 and `out` holds
/// only `prefix`.
///
/// `out` keeps its capacity from call to call: no allocation once it has
/// held the largest prefix.
pub fn complete_checksum<P: PayloadSum + ?Sized>(
    vnet: &VnetHdr,
    head: &[u8],
    frame_len: usize,
    frame: &P,
    prefix: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, CsumError> {
    out.clear();
    out.extend_from_slice(prefix);
    if vnet.gso() != 0 {
        return Err(CsumError::GsoFrame(vnet.gso_type));
    }
    if !vnet.needs_csum() {
        return Ok(0);
    }
    let start = usize::from(vnet.csum_start);
    let field = start + usize::from(vnet.csum_offset);
    let n = field + 2;
    if n > frame_len {
        return Err(CsumError::OutsideFrame {
            csum_start: vnet.csum_start,
            csum_offset: vnet.csum_offset,
            frame_len,
        });
    }
    let Some(copied) = head.get(..n) else {
        return Err(CsumError::Truncated {
            need: n,
            have: head.len(),
        });
    };
    let mut c = Csum::new();
    c.add(&copied[start..]);
    c.add_partial(frame.sum(n, frame_len - n), frame_len - n);
    let check = match c.finish() {
        0 => 0xffff,
        v => v,
    };
    out.extend_from_slice(copied);
    let at = prefix.len() + field;
    out[at..at + 2].copy_from_slice(&check.to_be_bytes());
    Ok(n)
}
