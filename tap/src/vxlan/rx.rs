//! The VXLAN attachment's RX path: one `recvmsg` per datagram, its VXLAN
//! header into zcnet's memory and the inner frame straight into the guest's
//! buffers, behind an all-zero virtio-net header (no offloads; the RX path
//! sets `num_buffers`).
//!
//! The underlay is not trusted. A datagram is dropped, counted by reason,
//! and the next one read, when:
//! - its sender is no VTEP zcnet knows (a configured remote or a static
//!   FDB entry's VTEP): checked first, so strangers' floods cost one
//!   `recvmsg` each and teach the FDB nothing;
//! - its VXLAN header fails `decapsulate` (too short, no I flag, another
//!   VNI, reserved bits set, an inner frame shorter than an Ethernet
//!   header), in the kernel's order;
//! - the inner frame is longer than any frame the guest takes (9018 bytes:
//!   no receive GSO is offered), or than the buffers (`MSG_TRUNC` shows
//!   the datagram's real length);
//! - the inner source MAC is multicast or zero, or has a static FDB entry
//!   for another VTEP (the kernel drops both).
//!
//! What was written into the guest's buffers for a dropped datagram is
//! overwritten by the next one and never returned to the guest.

use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

use super::attachment::VxlanAttachment;
use super::ether::MacAddr;
use super::fdb::{Learned, Refusal};
use super::header::decapsulate;
use super::socket;
use super::stats::RxDrop;
use crate::frame::RxBuffers;
use crate::vnet_hdr::MAX_NON_GSO_FRAME_LEN;

impl VxlanAttachment {
    pub(super) fn recv_frame(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        let Some(rx) = self.rx.as_ref() else {
            // The guest disabled this pair: nothing is received on it.
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let hdr_len = self.hdr_len;
        if !bufs.zero_prefix(hdr_len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "RX buffers shorter than the virtio-net header",
            ));
        }
        let room = bufs.capacity() - hdr_len;
        self.rx_iov.clear();
        self.rx_iov.push(libc::iovec {
            iov_base: self.rx_hdr.as_mut_ptr().cast(),
            iov_len: self.rx_hdr.len(),
        });
        self.rx_iov.extend_from_slice(bufs.skip(hdr_len));
        loop {
            // SAFETY: the socket is ours; `rx_iov[0]` is `self.rx_hdr`, which
            // no reference points into during the call, and the rest are the
            // RX buffers' iovecs, mapped, writable and unaliased for the
            // borrow of `bufs` (`RxBuffers`' contract).
            let n = unsafe { socket::recv_from(rx.as_fd(), &self.rx_iov, &mut self.from) };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.rx_iov.clear();
                    return Err(e);
                }
            };
            if let Some(inner) = self.accept(bufs, n, room) {
                self.rx_iov.clear();
                return Ok(hdr_len + inner);
            }
        }
    }

    /// Checks the `n`-byte datagram just received (its inner frame at the
    /// start of `bufs`); learns from it; returns the inner frame's length,
    /// or `None` when it was dropped (and counted).
    fn accept(&self, bufs: &RxBuffers<'_>, n: usize, room: usize) -> Option<usize> {
        let shared = &*self.shared;
        let from = self.from.ip();
        let vtep = from.and_then(|ip| shared.vtep_of(ip));
        let drop = |why| {
            shared.stats.rx_dropped(self.pair, vtep, why);
            None
        };
        let (Some(vtep), Some(from)) = (vtep, from) else {
            return drop(RxDrop::UnknownVtep);
        };
        let inner = match decapsulate(&self.rx_hdr, n, shared.vni) {
            Ok(range) => range.len(),
            Err(why) => return drop(RxDrop::Header(why)),
        };
        if inner > MAX_NON_GSO_FRAME_LEN || inner > room {
            return drop(RxDrop::TooLong);
        }
        let mut eth = [0u8; 12];
        if !bufs.read_at(0, &mut eth) {
            return drop(RxDrop::TooLong);
        }
        let src = MacAddr([eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]);
        if !src.is_valid_source() {
            return drop(RxDrop::InvalidSource);
        }
        // Learn only from configured remotes (the FDB would refuse a VTEP
        // only static entries name); take the write lock only when the
        // entry needs changing.
        let now = Instant::now();
        shared.maybe_sweep(now);
        if vtep < shared.remotes && !shared.fdb().is_current(src, from, now) {
            if let Learned::Refused(Refusal::StaticConflict) =
                shared.fdb_mut().learn(src, from, now)
            {
                return drop(RxDrop::StaticConflict);
            }
        }
        shared.stats.received(self.pair, vtep, inner as u64);
        Some(inner)
    }
}
