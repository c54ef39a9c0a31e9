//! The VXLAN attachment's TX path: a guest frame to one VTEP (known
//! unicast) or to every remote (broadcast, multicast, unknown unicast:
//! head-end replication), as VXLAN datagrams whose header comes from
//! zcnet's memory and whose inner frame comes straight from guest memory.
//!
//! - A plain frame: the constant VXLAN header, then the frame's iovecs.
//! - A NEEDS_CSUM frame: the VXLAN header and the frame's start up to the
//!   checksum field, copied and completed (`partial_csum`), then the rest
//!   of the frame from guest memory. Guest memory is never written.
//! - A TSO frame: cut into MSS-sized inner segments (`segment`), each with
//!   its own headers in zcnet's memory, sent in `UDP_SEGMENT` batches of at
//!   most 64 datagrams and 65507 bytes, the payload slices pointing into
//!   guest memory. A 64 KiB frame takes two sends per VTEP.
//!
//! # What one lent send can carry
//! The kernel builds one skb per UDP `sendmsg` and pins each piece of a
//! lent send as a page fragment of it: at most `MAX_SKB_FRAGS` (17 unless
//! the kernel was built otherwise) fragments, one per page a piece touches
//! (pages never merge, even when contiguous). An 18th fails with EMSGSIZE
//! (measured here). So a lent send carries at most [`MAX_LENT_FRAGS`]
//! pages: a whole frame that spans more is copied, and a lent TSO frame is
//! cut into more sends than its plan's batches, each of at most that many
//! pages (every segment header one, its payload one or two): about seven
//! per VTEP for a 64 KiB frame with MSS 1448, where a copied one takes the
//! plan's two.
//!
//! So TSO frames are lent only when the attachment was opened with
//! `lend_tso` (zcnet's `--zerocopy on`); otherwise they are copied, in the
//! plan's batches.
//!
//! When lent (`MSG_ZEROCOPY`), every send takes the socket's next id and
//! the frame's engine ids are consecutive (one socket per frame), so
//! `Sent::Lent { first_id, last_id }` covers a flood and every batch. The
//! headers of lent sends stay unchanged until notified: the VXLAN header
//! is a constant, and checksummed prefixes and TSO segment headers sit in
//! slots held until the notifications of every send that used them. With
//! no slot free the frame is copied instead.
//!
//! The guest can rewrite a lent buffer while the kernel sends it (it owns
//! it): that corrupts only its own frame on the wire (a TCP segment whose
//! checksum no longer matches is dropped by the receiver). The headers
//! zcnet checked and the destination it chose come from its own copies.

use std::io;
use std::time::Instant;

use super::attachment::{VxlanAttachment, HEAD_LEN, IOV_MAX, PREFIX_SLOT_LEN, TX_SOCKETS};
use super::ether::MacAddr;
use super::fdb::Destination;
use super::flow_hash::FlowKey;
use super::header::VXLAN_HEADER_LEN;
use super::partial_csum::complete_checksum;
use super::segment::{SegmentError, TsoLimits, TsoPlan};
use super::socket;
use super::stats::TxDrop;
use crate::attachment::{SendMode, Sent};
use crate::frame::TxFrame;
use crate::vnet_hdr::GSO_NONE;

const PAGE_SIZE: usize = 4096;
/// The most page fragments one lent send may have: the kernel's default
/// (and smallest) `CONFIG_MAX_SKB_FRAGS`.
pub(super) const MAX_LENT_FRAGS: usize = 17;

/// What one `sendmsg` did.
enum SendOutcome {
    /// Lent, with this engine id.
    Lent(u32),
    /// The kernel copied it; `enobufs` when it was meant to be lent but
    /// the kernel had no room to pin more pages (the rest of the frame is
    /// copied too).
    Copied { enobufs: bool },
}

/// What the sends of one frame did so far.
#[derive(Default)]
struct Progress {
    first_id: Option<u32>,
    last_id: u32,
    /// Some send of the frame went out.
    sent: bool,
    last_err: Option<io::Error>,
}

impl Progress {
    fn record(&mut self, o: &SendOutcome) {
        self.sent = true;
        if let SendOutcome::Lent(id) = *o {
            self.first_id.get_or_insert(id);
            self.last_id = id;
        }
    }

    fn result(self) -> io::Result<Sent> {
        match self.first_id {
            Some(first_id) => Ok(Sent::Lent {
                first_id,
                last_id: self.last_id,
            }),
            None if self.sent => Ok(Sent::Copied),
            None => Err(self
                .last_err
                .unwrap_or_else(|| io::Error::other("no VTEP to send to"))),
        }
    }
}

/// The 4 KiB pages the memory `iov` describes spans.
fn pages(iov: &[libc::iovec]) -> u32 {
    iov.iter()
        .filter(|v| v.iov_len > 0)
        .map(|v| {
            let start = v.iov_base as usize / PAGE_SIZE;
            let end = (v.iov_base as usize + v.iov_len - 1) / PAGE_SIZE;
            (end - start + 1) as u32
        })
        .sum()
}

fn iovec(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    }
}

impl VxlanAttachment {
    pub(super) fn send_frame(
        &mut self,
        frame: &mut TxFrame<'_>,
        mode: SendMode,
    ) -> io::Result<Sent> {
        let now = Instant::now();
        self.shared.maybe_sweep(now);
        let lend = mode == SendMode::Lend && self.can_lend_now();
        let mut head = [0u8; HEAD_LEN];
        let got = frame.read_prefix(&mut head);
        let head = &head[..got];
        self.destinations(head, now);
        let sock = self.socket_for(head);
        let result = if frame.hdr().gso() != GSO_NONE {
            self.send_tso(frame, head, sock, lend && self.lend_tso)
        } else {
            self.send_whole(frame, head, sock, lend)
        };
        self.iov.clear();
        result
    }

    fn can_lend_now(&self) -> bool {
        crate::Attachment::can_lend(self)
    }

    /// Fills `self.dests` with the VTEPs a frame starting with `head` goes
    /// to: its destination MAC's, or every remote.
    fn destinations(&mut self, head: &[u8], now: Instant) {
        self.dests.clear();
        let dst = MacAddr::from_slice(head).unwrap_or(MacAddr::BROADCAST);
        let fdb = self.shared.fdb();
        match fdb.lookup(dst, now) {
            Destination::Unicast(vtep) => self.dests.extend(self.shared.vtep_index(&vtep)),
            Destination::Flood(list) => {
                for vtep in list {
                    self.dests.extend(self.shared.vtep_index(vtep));
                }
            }
        }
    }

    /// The transmit socket (outer source port) of the frame's flow.
    fn socket_for(&self, head: &[u8]) -> usize {
        let h = self.shared.hasher.hash(&FlowKey::of(head));
        (((h >> 32) * TX_SOCKETS as u64) >> 32) as usize
    }

    /// One `sendmsg` of `self.iov` on socket `sock` to VTEP `vtep`,
    /// carrying `frames` inner frames of `bytes` bytes in all, from
    /// `guest_pages` pages of guest memory.
    #[allow(clippy::too_many_arguments)]
    fn send_iov(
        &mut self,
        sock: usize,
        vtep: usize,
        gso: Option<u16>,
        lend: bool,
        frames: u64,
        bytes: u64,
        guest_pages: u32,
    ) -> io::Result<SendOutcome> {
        #[cfg(test)]
        if let Some(left) = self.eagain_after.as_mut() {
            if *left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            *left -= 1;
        }
        let to = &self.shared.raw[vtep];
        let mut enobufs = false;
        if lend {
            let t = &mut self.tx[sock];
            // SAFETY: `self.iov` holds the frame's iovecs (guest memory the
            // datapath keeps mapped; a lent chain goes back to the guest
            // only when the notification for this id is reaped) and header
            // iovecs into the constant VXLAN header of `Shared` (alive as
            // long as the `Arc`) or into a prefix or plan slot that the
            // caller holds, unchanged, until that notification.
            match unsafe { socket::send_to(t.sock_fd(), &self.iov, to, gso, true) } {
                Ok(_) => {
                    let id = self.next_id;
                    self.next_id = id.wrapping_add(1);
                    t.ids.lent(id, guest_pages);
                    let stats = &self.shared.stats;
                    stats.lent(self.pair, vtep, u64::from(guest_pages));
                    stats.sent(self.pair, vtep, frames, bytes);
                    return Ok(SendOutcome::Lent(id));
                }
                Err(e) => {
                    // The call may have taken an id all the same.
                    self.settle_failed_send(sock);
                    match e.raw_os_error() {
                        // Out of optmem or RLIMIT_MEMLOCK: copy instead.
                        Some(libc::ENOBUFS) => enobufs = true,
                        // More fragments than this kernel takes (the
                        // callers keep under the smallest limit; this is
                        // the backstop): copy.
                        Some(libc::EMSGSIZE) => {}
                        _ => return Err(e),
                    }
                }
            }
        }
        let to = &self.shared.raw[vtep];
        let t = &self.tx[sock];
        // SAFETY: every iovec describes memory mapped for this call (the
        // frame's, borrowed by the caller; headers in `self` or `Shared`);
        // without MSG_ZEROCOPY the kernel copies it before returning.
        unsafe { socket::send_to(t.sock_fd(), &self.iov, to, gso, false) }?;
        self.shared.stats.sent(self.pair, vtep, frames, bytes);
        Ok(SendOutcome::Copied { enobufs })
    }

    /// A frame sent whole: one datagram per destination.
    fn send_whole(
        &mut self,
        frame: &TxFrame<'_>,
        head: &[u8],
        sock: usize,
        mut lend: bool,
    ) -> io::Result<Sent> {
        let len = frame.len();
        let max = self.shared.max_inner_frame();
        if len > max {
            self.shared
                .stats
                .tx_dropped(self.pair, None, TxDrop::TooBig);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a {len}-byte frame does not fit one underlay packet (at most {max} bytes \
                     inside VXLAN); the outer datagram is never fragmented"
                ),
            ));
        }
        let hdr = *frame.hdr();
        self.iov.clear();
        let mut slot = None;
        let skip = if hdr.needs_csum() {
            let need = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
            let VxlanAttachment {
                long_head,
                csum_out,
                shared,
                ..
            } = self;
            let src: &[u8] = if need <= head.len() {
                head
            } else {
                long_head.resize(need.min(len), 0);
                let n = frame.read_prefix(long_head);
                &long_head[..n]
            };
            let n = match complete_checksum(&hdr, src, len, frame, &shared.header, csum_out) {
                Ok(n) => n,
                Err(e) => {
                    self.shared
                        .stats
                        .tx_dropped(self.pair, None, TxDrop::BadOffload);
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
                }
            };
            if lend && self.csum_out.len() <= PREFIX_SLOT_LEN {
                slot = self.prefixes.take();
            }
            match slot {
                Some(s) => {
                    let prefix = &mut self.prefixes.slot_mut(s)[..self.csum_out.len()];
                    prefix.copy_from_slice(&self.csum_out);
                    self.iov.push(iovec(prefix));
                }
                None => {
                    // No slot to hold the prefix while lent: copy it all.
                    lend = false;
                    self.iov.push(iovec(&self.csum_out));
                }
            }
            n
        } else {
            self.iov.push(iovec(&self.shared.header));
            0
        };
        frame.slice_into(skip, len - skip, &mut self.iov);
        if self.iov.len() > IOV_MAX {
            if let Some(s) = slot {
                self.prefixes.put_back(s);
            }
            self.shared
                .stats
                .tx_dropped(self.pair, None, TxDrop::SendError);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a frame in {} pieces: more than one send takes",
                    self.iov.len()
                ),
            ));
        }

        if pages(&self.iov) as usize > MAX_LENT_FRAGS {
            // More pages than one lent send may pin: copied.
            lend = false;
        }
        let guest_pages = pages(&self.iov[1..]);
        let mut p = Progress::default();
        for d in 0..self.dests.len() {
            let vtep = self.dests[d];
            match self.send_iov(sock, vtep, None, lend, 1, len as u64, guest_pages) {
                Ok(o) => {
                    if let SendOutcome::Copied { enobufs: true } = o {
                        lend = false;
                    }
                    p.record(&o);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !p.sent {
                        if let Some(s) = slot {
                            self.prefixes.put_back(s);
                        }
                        self.want_writable(sock);
                        return Err(e);
                    }
                    self.drop_rest(d);
                    break;
                }
                Err(e) => {
                    self.shared
                        .stats
                        .tx_dropped(self.pair, Some(vtep), TxDrop::SendError);
                    p.last_err = Some(e);
                }
            }
        }
        if let Some(s) = slot {
            match p.first_id {
                Some(first) => self.prefixes.hold_range(s, first, p.last_id),
                None => self.prefixes.put_back(s),
            }
        }
        p.result()
    }

    /// The kernel's buffers filled after part of a frame went out, so the
    /// frame cannot be retried whole: the destinations from `dests[d]` on
    /// (the one that failed included) get nothing more of it, counted. The
    /// ids already taken stay with the chain, which completes when they are
    /// notified (never early, never lost); TCP retransmits what was cut.
    fn drop_rest(&mut self, d: usize) {
        for &vtep in &self.dests[d..] {
            self.shared
                .stats
                .tx_dropped(self.pair, Some(vtep), TxDrop::EagainMidFrame);
        }
    }

    /// A TSO frame: planned into segments, sent in `UDP_SEGMENT` batches to
    /// each destination.
    fn send_tso(
        &mut self,
        frame: &TxFrame<'_>,
        head: &[u8],
        sock: usize,
        lend: bool,
    ) -> io::Result<Sent> {
        let slot = if lend { self.plan_holds.take() } else { None };
        // Taken out of `self` while it is used (an empty plan allocates
        // nothing), and put back below.
        let mut plan = match slot {
            Some(s) => std::mem::take(&mut self.plans[s]),
            None => std::mem::take(&mut self.copy_plan),
        };
        let limits = TsoLimits {
            underlay: self.shared.underlay,
            underlay_mtu: self.shared.underlay_mtu,
        };
        let result = match plan.plan(
            frame.hdr(),
            head,
            frame.len(),
            frame,
            &self.shared.header,
            limits,
        ) {
            Ok(()) => self.send_plan(frame, &plan, sock, slot.is_some()),
            Err(e) => {
                let why = match e {
                    SegmentError::SegmentTooBig { .. } => TxDrop::TooBig,
                    _ => TxDrop::BadOffload,
                };
                self.shared.stats.tx_dropped(self.pair, None, why);
                Err(io::Error::new(io::ErrorKind::InvalidInput, e))
            }
        };
        match slot {
            Some(s) => {
                self.plans[s] = plan;
                match &result {
                    Ok(Sent::Lent { first_id, last_id }) => {
                        self.plan_holds.hold(s, *first_id, *last_id)
                    }
                    _ => self.plan_holds.put_back(s),
                }
            }
            None => self.copy_plan = plan,
        }
        result
    }

    fn send_plan(
        &mut self,
        frame: &TxFrame<'_>,
        plan: &TsoPlan,
        sock: usize,
        mut lend: bool,
    ) -> io::Result<Sent> {
        // Every datagram but the last of the frame is exactly this long.
        let gso = Some(plan.gso_size() as u16);
        let mut p = Progress::default();
        'dests: for d in 0..self.dests.len() {
            let vtep = self.dests[d];
            for batch in plan.batches() {
                let mut i = batch.start;
                while i < batch.end {
                    // One send: whole segments, at most IOV_MAX iovecs and,
                    // when lent, MAX_LENT_FRAGS pages (see the module doc).
                    // A cut batch still has full-size segments only, but
                    // for the frame's last.
                    self.iov.clear();
                    let (first, mut bytes, mut frags, mut guest_pages) = (i, 0u64, 0, 0);
                    while i < batch.end {
                        let s = plan.segment(i).expect("planned segment");
                        let before = self.iov.len();
                        self.iov.push(iovec(s.header));
                        frame.slice_into(s.payload.0, s.payload.1, &mut self.iov);
                        let payload = pages(&self.iov[before + 1..]);
                        let seg_frags = pages(&self.iov[before..before + 1]) + payload;
                        let over_frags = lend && frags + seg_frags as usize > MAX_LENT_FRAGS;
                        if i > first && (self.iov.len() > IOV_MAX || over_frags) {
                            self.iov.truncate(before);
                            break;
                        }
                        frags += seg_frags as usize;
                        guest_pages += payload;
                        bytes += (s.header.len() - VXLAN_HEADER_LEN + s.payload.1) as u64;
                        i += 1;
                    }
                    let frames = (i - first) as u64;
                    // A lone segment over the budget (a payload in many
                    // tiny pieces) is copied.
                    let lend_this = lend && frags <= MAX_LENT_FRAGS;
                    match self.send_iov(sock, vtep, gso, lend_this, frames, bytes, guest_pages) {
                        Ok(o) => {
                            if let SendOutcome::Copied { enobufs: true } = o {
                                lend = false;
                            }
                            p.record(&o);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if !p.sent {
                                self.want_writable(sock);
                                return Err(e);
                            }
                            // Part of the frame is out (the first batch
                            // of a 64 KiB frame, say): see `drop_rest`.
                            self.drop_rest(d);
                            break 'dests;
                        }
                        Err(e) => {
                            self.shared
                                .stats
                                .tx_dropped(self.pair, Some(vtep), TxDrop::SendError);
                            p.last_err = Some(e);
                            continue 'dests;
                        }
                    }
                }
            }
        }
        p.result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_count_every_page_a_range_touches() {
        let at = |addr: usize, len: usize| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        assert_eq!(pages(&[at(4096, 4096)]), 1);
        assert_eq!(pages(&[at(4095, 2)]), 2);
        assert_eq!(pages(&[at(100, 0), at(8192, 65536)]), 16);
    }
}
