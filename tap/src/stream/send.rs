//! The transmit side of the stream framing: one record (prefix, optional
//! virtio-net header, frame) written into the TCP socket without ever
//! waiting, the frame lent to the kernel with `MSG_ZEROCOPY` when asked.
//!
//! Records reach the peer whole and in order. When the kernel takes only
//! part of one, the rest is copied at once into the tail, a buffer
//! allocated once at the largest record's size, and the socket is watched
//! for EPOLLOUT. While the tail holds anything, nothing else is sent
//! (`send` says WouldBlock), so records never interleave; when the socket
//! reports room the tail is written, and TX goes on.
//!
//! The kernel reports room (EPOLLOUT) only after it found the socket full
//! itself; a send that returns WouldBlock or leaves a tail has just made
//! it find so, so the wait always ends.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use log::debug;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::conn::Conn;
use super::ids::SocketIds;
use super::records::PREFIX_LEN;
use super::{StreamAttachment, MAX_FRAME, WIRE_HDR_LEN};
use crate::attachment::{SendMode, Sent};
use crate::frame::TxFrame;
use crate::zerocopy;

/// The largest record: prefix, wire header and the largest frame.
const MAX_RECORD: usize = PREFIX_LEN + WIRE_HDR_LEN + MAX_FRAME;

/// What TX keeps between frames.
pub(super) struct Tx {
    /// The iovecs of one `sendmsg`, rebuilt for each call (its capacity
    /// stays: no allocation once it has grown to the longest frame).
    iov: Vec<libc::iovec>,
    tail: Tail,
    /// The socket is watched for EPOLLOUT.
    want_space: bool,
}

// SAFETY: `iov` is the only field that is not `Send` (raw pointers). It
// is empty whenever the attachment can change threads: `record` fills it
// for one `sendmsg` and clears it before returning, so between calls it
// is only capacity. Even filled it would hold plain addresses (of guest
// memory every thread maps, and of a head on the caller's stack) that
// only the kernel dereferences, during that one call.
unsafe impl Send for Tx {}

impl Tx {
    pub(super) fn new() -> Self {
        Tx {
            iov: Vec::with_capacity(64),
            tail: Tail::new(MAX_RECORD),
            want_space: false,
        }
    }

    /// The socket is gone: so are its tail and its watch for room.
    pub(super) fn reset(&mut self) {
        self.tail.clear();
        self.want_space = false;
    }
}

/// The copied rest of a record the kernel took only part of.
struct Tail {
    buf: Box<[u8]>,
    /// `buf[start..end]` is still to be written.
    start: usize,
    end: usize,
}

impl Tail {
    fn new(len: usize) -> Self {
        Tail {
            buf: vec![0u8; len].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Copies what is left of the record `head` + `frame` past its first
    /// `done` bytes. The tail must be empty, and the record at most
    /// `MAX_RECORD` bytes.
    fn fill(&mut self, head: &[u8], frame: &TxFrame<'_>, done: usize) {
        debug_assert!(self.is_empty());
        let mut n = 0;
        if done < head.len() {
            n = head.len() - done;
            self.buf[..n].copy_from_slice(&head[done..]);
        }
        let skip = done.saturating_sub(head.len());
        let want = frame.len().saturating_sub(skip);
        n += frame.read_at(skip, &mut self.buf[n..n + want]);
        self.start = 0;
        self.end = n;
    }

    /// Writes as much as `sock` (non-blocking) takes; returns whether all
    /// of it is out.
    fn flush(&mut self, mut sock: impl Write) -> io::Result<bool> {
        while !self.is_empty() {
            match sock.write(&self.buf[self.start..self.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.clear();
        Ok(true)
    }
}

/// What became of a record.
#[derive(Debug)]
enum Outcome {
    /// In the socket, or its rest in the tail. `ids` are the engine ids
    /// the `MSG_ZEROCOPY` calls took (first, last), if any.
    Sent { ids: Option<(u32, u32)> },
    /// Nothing was written: the socket is full.
    WouldBlock,
    /// The socket failed (the connection is gone). `ids` were taken
    /// before it did, so those pages are lent all the same.
    Failed {
        err: io::Error,
        ids: Option<(u32, u32)>,
    },
}

/// Writes the record `head` + `frame` into `fd`, never waiting: what the
/// kernel does not take at once goes into `tail` (empty before the call).
///
/// `head` (prefix and header, zcnet's memory) is always copied. With
/// `lend` the frame is lent, and the head goes in a call of its own with
/// `MSG_MORE`: with `MSG_ZEROCOPY` every page of the call is pinned until
/// the notification, and the head lives on the caller's stack.
///
/// Each successful `MSG_ZEROCOPY` call takes the next id from `ids`; a
/// failed or zero-length call takes none, and a full id window makes the
/// call copy. ENOBUFS (optmem or RLIMIT_MEMLOCK exhausted) turns lending
/// off for the rest of the record.
///
/// # Safety
/// With `lend`, the frame's memory must stay mapped, and not go back to
/// its owner, until the kernel releases the ids returned (the frame
/// itself keeps it mapped only for the call).
unsafe fn record(
    fd: BorrowedFd<'_>,
    head: &[u8],
    frame: &TxFrame<'_>,
    mut lend: bool,
    ids: &mut SocketIds,
    iov: &mut Vec<libc::iovec>,
    tail: &mut Tail,
) -> Outcome {
    let total = head.len() + frame.len();
    let mut done = 0;
    let mut taken: Option<(u32, u32)> = None;
    let outcome = loop {
        if done == total {
            break Outcome::Sent { ids: taken };
        }
        iov.clear();
        let in_head = done < head.len();
        if in_head {
            iov.push(libc::iovec {
                iov_base: head[done..].as_ptr() as *mut libc::c_void,
                iov_len: head.len() - done,
            });
        }
        if !(in_head && lend) {
            frame.slice_into(done.saturating_sub(head.len()), usize::MAX, iov);
        }
        let zc = lend && !in_head && ids.can_take();
        let flags = if zc {
            libc::MSG_ZEROCOPY
        } else if in_head && lend {
            libc::MSG_MORE
        } else {
            0
        };
        // SAFETY: `iov` describes `head` (borrowed for the call) and the
        // frame's guest memory, which the frame keeps mapped for the
        // call. With MSG_ZEROCOPY (only ever the frame) the kernel reads
        // those pages after this returns, until it releases the id taken
        // below; the caller keeps them mapped and withheld from the guest
        // until then. The guest may still rewrite them meanwhile (it owns
        // them): that corrupts only its own frame on the wire, since no
        // host state depends on those bytes.
        match unsafe { zerocopy::send_flags(fd, iov, flags) } {
            Ok(n) if n > 0 => {
                if zc {
                    let id = ids.take();
                    taken = Some((taken.map_or(id, |t| t.0), id));
                }
                done += n;
            }
            Err(e) if zc && e.raw_os_error() == Some(libc::ENOBUFS) => lend = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(_) => break stalled(head, frame, done, taken, tail),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                break stalled(head, frame, done, taken, tail)
            }
            Err(err) => break Outcome::Failed { err, ids: taken },
        }
    };
    // No pointer outlives the call.
    iov.clear();
    outcome
}

/// The socket took no more of a record after `done` bytes: the rest goes
/// into the tail, unless nothing went at all.
fn stalled(
    head: &[u8],
    frame: &TxFrame<'_>,
    done: usize,
    ids: Option<(u32, u32)>,
    tail: &mut Tail,
) -> Outcome {
    if done == 0 {
        return Outcome::WouldBlock;
    }
    tail.fill(head, frame, done);
    debug!(
        "TCP stream: the socket took {done} bytes of a {}-byte record; the rest waits for room",
        head.len() + frame.len()
    );
    Outcome::Sent { ids }
}

impl StreamAttachment {
    /// [`Attachment::send`](crate::Attachment::send) for the stream.
    pub(super) fn send_frame(
        &mut self,
        frame: &mut TxFrame<'_>,
        mode: SendMode,
    ) -> io::Result<Sent> {
        if frame.len() > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame longer than any record carries",
            ));
        }
        if !self.link.is_up() {
            self.service(false);
        }
        if !self.tx.tail.is_empty() && !self.flush_tail()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Conn::Up { sock, zc } = &self.link.conn else {
            // Disconnected: the frame is dropped (and counted), and its
            // chain goes back at once.
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no TCP peer is connected",
            ));
        };
        // The record's head: the length prefix, then (to a zcnet peer) the
        // frame's validated virtio-net header, `num_buffers` 0.
        let wire_hdr = if self.peer_hdr { WIRE_HDR_LEN } else { 0 };
        let mut head = [0u8; PREFIX_LEN + WIRE_HDR_LEN];
        head[..PREFIX_LEN].copy_from_slice(&((wire_hdr + frame.len()) as u32).to_be_bytes());
        head[PREFIX_LEN..].copy_from_slice(&frame.hdr().to_bytes());
        let lend = mode == SendMode::Lend && *zc;
        // SAFETY: the frame's iovecs are guest memory the datapath
        // bounds-checked and keeps mapped for this call, and only the
        // frame is ever lent (the kernel pins what it is lent). Its chain
        // goes back to the guest only when notifications cover every id
        // this returns, or when the socket was reset and retired past its
        // deadline (see `retiring`), after which the peer accepts nothing
        // more that those pages could carry.
        let outcome = unsafe {
            record(
                sock.as_fd(),
                &head[..PREFIX_LEN + wire_hdr],
                frame,
                lend,
                &mut self.ids,
                &mut self.tx.iov,
                &mut self.tx.tail,
            )
        };
        match outcome {
            Outcome::Sent { ids } => {
                if self.tx.tail.is_empty() {
                    self.space_ok();
                } else {
                    self.want_space();
                }
                Ok(ids.map_or(Sent::Copied, |(first_id, last_id)| Sent::Lent {
                    first_id,
                    last_id,
                }))
            }
            Outcome::WouldBlock => {
                self.want_space();
                Err(io::ErrorKind::WouldBlock.into())
            }
            Outcome::Failed { err, ids } => {
                self.lose(&err);
                match ids {
                    // Lent before the failure: the chain waits for those
                    // ids, which the loss completes.
                    Some((first_id, last_id)) => Ok(Sent::Lent { first_id, last_id }),
                    None => Err(err),
                }
            }
        }
    }

    /// Whether TX can go on: no tail waits.
    pub(super) fn tx_clear(&self) -> bool {
        self.tx.tail.is_empty()
    }

    /// Writes what the tail holds; returns whether all of it is out. Until
    /// it is, the socket is watched for room; a failed socket is lost.
    pub(super) fn flush_tail(&mut self) -> io::Result<bool> {
        let Conn::Up { sock, .. } = &self.link.conn else {
            return Ok(true);
        };
        match self.tx.tail.flush(sock) {
            Ok(true) => {
                self.space_ok();
                Ok(true)
            }
            Ok(false) => {
                self.want_space();
                Ok(false)
            }
            Err(e) => {
                self.lose(&e);
                Err(e)
            }
        }
    }

    /// TX is waiting for room: watch the socket for EPOLLOUT.
    fn want_space(&mut self) {
        if !self.tx.want_space {
            self.tx.want_space = self.watch_socket(true);
        }
    }

    /// TX went through: stop watching for room.
    pub(super) fn space_ok(&mut self) {
        if self.tx.want_space {
            self.tx.want_space = !self.watch_socket(false);
        }
    }

    /// Sets what the current socket is watched for; returns whether it
    /// could.
    fn watch_socket(&self, out: bool) -> bool {
        let Conn::Up { sock, .. } = &self.link.conn else {
            return false;
        };
        let mut events = EventSet::IN | EventSet::READ_HANG_UP;
        if out {
            events |= EventSet::OUT;
        }
        self.epoll
            .ctl(
                ControlOperation::Modify,
                sock.as_raw_fd(),
                EpollEvent::new(events, self.link.token()),
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::vnet_hdr::VnetHdr;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    /// A socket pair whose sending end is small and non-blocking.
    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
        (a, b)
    }

    /// Sends records of `len`-byte frames (split across two iovecs) until
    /// one leaves a tail; the peer must then see every record whole once
    /// the tail is flushed.
    #[test]
    fn a_record_the_kernel_took_part_of_ends_whole_from_the_tail() {
        let (a, mut b) = pair();
        let mut ids = SocketIds::new(0);
        let mut scratch = Vec::new();
        let mut tail = Tail::new(MAX_RECORD);
        let mut sent = Vec::new();
        for tag in 0u8.. {
            // Larger than the socket's packets, so the kernel can take
            // part of one.
            let (mut x, mut y) = (vec![tag; 3000], vec![tag ^ 0xff; 7000]);
            let mut v = [iov(&mut []), iov(&mut x), iov(&mut y)];
            // SAFETY: the iovecs describe the local vectors, alive and
            // not otherwise borrowed for the frame's life.
            let frame = unsafe { TxFrame::new(VnetHdr::default(), &mut v) };
            let head = 10_000u32.to_be_bytes();
            // SAFETY: nothing is lent; the iovecs are the locals above.
            let out = unsafe {
                record(
                    a.as_fd(),
                    &head,
                    &frame,
                    false,
                    &mut ids,
                    &mut scratch,
                    &mut tail,
                )
            };
            match out {
                Outcome::Sent { ids: None } => sent.push([&head[..], &x, &y].concat()),
                Outcome::WouldBlock => panic!("the tail must have stopped us first"),
                other => panic!("{other:?}"),
            }
            if !tail.is_empty() {
                break;
            }
        }
        assert!(scratch.is_empty(), "no pointer kept");
        let want: Vec<u8> = sent.concat();
        let mut got = vec![0u8; want.len()];
        let mut at = 0;
        // The reader drains; the tail goes as room appears.
        while at < want.len() {
            at += b.read(&mut got[at..]).unwrap();
            tail.flush(&a).unwrap();
        }
        assert!(tail.is_empty());
        assert_eq!(got, want, "every record whole and in order");
    }

    #[test]
    fn a_full_socket_takes_nothing_and_says_so() {
        let (a, _b) = pair();
        let fill = vec![0u8; 1 << 20];
        while (&a).write(&fill).is_ok() {}
        let mut ids = SocketIds::new(0);
        let (mut scratch, mut tail) = (Vec::new(), Tail::new(MAX_RECORD));
        let mut x = vec![1u8; 100];
        let mut v = [iov(&mut []), iov(&mut x)];
        // SAFETY: the iovec describes the local vector, alive and not
        // otherwise borrowed for the frame's life.
        let frame = unsafe { TxFrame::new(VnetHdr::default(), &mut v) };
        // SAFETY: nothing is lent; the iovecs are the locals above.
        let out = unsafe {
            record(
                a.as_fd(),
                &[0, 0, 0, 100],
                &frame,
                false,
                &mut ids,
                &mut scratch,
                &mut tail,
            )
        };
        assert!(matches!(out, Outcome::WouldBlock), "{out:?}");
        assert!(tail.is_empty());
        assert_eq!(ids.outstanding(), 0, "no id for a send that failed");
    }
}
