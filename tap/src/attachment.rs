//! The interface between a queue pair and the host side it carries frames
//! to. Each queue pair owns one attachment (`&mut self` everywhere): only
//! that pair's worker calls it, or the frontend's thread while it holds
//! the pair's lock.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use crate::frame::{RxBuffers, TxFrame};
use crate::Offloads;

/// The most frames handed to [`Attachment::send_batch`] at once.
pub const MAX_BATCH: usize = crate::uring::MAX_WRITES;

/// What became of a frame handed to [`Attachment::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The kernel took its own copy: the guest's buffers may go back now.
    Copied,
    /// The kernel holds references to the guest's pages. The chain may go
    /// back only when zero-copy notifications cover every id in
    /// `first_id..=last_id` (ids wrap at 2^32).
    Lent { first_id: u32, last_id: u32 },
}

/// How the datapath asks for a frame to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// Let the kernel copy the frame; the chain completes at once.
    Copy,
    /// Lend the guest's pages to the kernel (`MSG_ZEROCOPY`) if the
    /// attachment can; it may still copy (then it returns `Sent::Copied`).
    Lend,
}

/// A zero-copy notification: the kernel released the pages of every send
/// with an id in `first..=last` (wrapping at 2^32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub first: u32,
    pub last: u32,
    /// The kernel copied these sends after all (`SO_EE_CODE_ZEROCOPY_COPIED`).
    pub copied: bool,
}

/// What the datapath should do after the attachment's fd woke the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Frames may be waiting: RX reads until `WouldBlock`.
    pub readable: bool,
    /// A TX queue blocked on `WouldBlock` may go on.
    pub writable: bool,
    /// Zero-copy notifications (or completions of any kind) may be
    /// waiting: reap them.
    pub notified: bool,
}

/// What the guest negotiated that the attachment must follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestConfig {
    /// Length of the virtio-net header before every frame in guest
    /// buffers (10 or 12 bytes).
    pub hdr_len: usize,
    /// What the attachment may deliver to the guest on RX (GUEST_*).
    pub rx_offloads: Offloads,
}

/// A host attachment: where guest TX frames go and guest RX frames come
/// from.
///
/// Frames cross as [`TxFrame`] and [`RxBuffers`], borrowed from guest
/// memory for one call. An attachment copies no frame in user space, with
/// one exception: the TCP stream's RX, which must find record boundaries in
/// a byte stream (see `stream`). It allocates nothing per frame.
pub trait Attachment: Send {
    /// The fd the queue pair's worker polls for readiness.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Sends one frame. The attachment puts on the wire whatever header
    /// it carries (the tap: the frame's normalised virtio-net header).
    ///
    /// `Err(WouldBlock)` means nothing was sent and the caller should wait
    /// for the fd to become writable. Other errors drop the frame.
    fn send(&mut self, frame: &mut TxFrame<'_>, mode: SendMode) -> io::Result<Sent>;

    /// Sends `frames` in order, frame `i` as `modes[i]` asks, and puts the
    /// outcome of each frame sent or refused in `results[i]`. Returns how
    /// many frames that is, from the front. When it is fewer than all,
    /// the next frame would block: neither it nor any frame after it was
    /// sent, and the caller waits for the fd to become writable before it
    /// sends them again. `Err(WouldBlock)` is never among the outcomes.
    ///
    /// An attachment that can hand the kernel many frames at once (the
    /// tap with io_uring) overrides this; the default sends them one by
    /// one with [`send`](Self::send). At most [`MAX_BATCH`] frames come at
    /// once, and `modes` and `results` are at least as long as `frames`.
    fn send_batch(
        &mut self,
        frames: &mut [TxFrame<'_>],
        modes: &[SendMode],
        results: &mut [io::Result<Sent>],
    ) -> usize {
        send_each(self, frames, modes, results)
    }

    /// Receives one frame into `bufs`, behind a virtio-net header of the
    /// configured length that the attachment writes too; returns header
    /// plus frame bytes. A result above `bufs.guest_len()` means the frame
    /// reached the overflow room or (sockets) was longer than the room;
    /// the caller decides.
    fn recv(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize>;

    /// Whether [`SendMode::Lend`] can ever lend pages.
    fn can_lend(&self) -> bool {
        false
    }

    /// Appends the zero-copy notifications the kernel has queued (never
    /// blocks).
    fn reap(&mut self, _out: &mut Vec<Completion>) -> io::Result<()> {
        Ok(())
    }

    /// Called each time [`fd`](Self::fd) woke the worker, with what epoll
    /// reported for it; returns what the datapath should act on.
    ///
    /// An attachment whose fd is the very socket or tap it moves frames
    /// through returns `polled` unchanged (the default). One whose fd only
    /// stands for other fds (an epoll set of its own, which reports nothing
    /// but "readable") does its own housekeeping here and says what may
    /// have become possible.
    fn ready(&mut self, polled: Readiness) -> Readiness {
        polled
    }

    /// Blocks at most `timeout`, returning early when zero-copy
    /// notifications may be waiting (used while a stopping queue drains
    /// its lent chains).
    fn wait_notifications(&mut self, timeout: Duration) {
        // Notifications raise POLLERR, which poll reports unasked.
        let mut pfd = libc::pollfd {
            fd: self.fd().as_raw_fd(),
            events: 0,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd on our stack, count 1; the fd is borrowed
        // from `self`, so it stays open for the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// The offloads this attachment can carry in both directions (TX:
    /// what the guest may send, HOST_*).
    fn supported_offloads(&self) -> Offloads;

    /// The offloads this attachment may deliver to the guest on RX
    /// (GUEST_*); by default the same as [`supported_offloads`](Self::supported_offloads).
    fn rx_offloads(&self) -> Offloads {
        self.supported_offloads()
    }

    /// Follows what a guest negotiated (called on every SET_FEATURES).
    fn configure(&mut self, guest: GuestConfig) -> io::Result<()>;

    /// The guest enabled or disabled the queue pair this attachment
    /// serves (SET_VRING_ENABLE of its RX ring). A multi-queue tap stops
    /// taking frames on a disabled pair's queue, so the kernel steers them
    /// to enabled ones.
    fn set_enabled(&mut self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }
}

/// [`Attachment::send_batch`] done with one [`Attachment::send`] per frame
/// (the default, and what an overriding attachment falls back to).
pub fn send_each<A: Attachment + ?Sized>(
    attachment: &mut A,
    frames: &mut [TxFrame<'_>],
    modes: &[SendMode],
    results: &mut [io::Result<Sent>],
) -> usize {
    for (i, frame) in frames.iter_mut().enumerate() {
        match attachment.send(frame, modes[i]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return i,
            outcome => results[i] = outcome,
        }
    }
    frames.len()
}
