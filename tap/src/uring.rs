//! Batched writes through io_uring: the frames of one TX drain go to the
//! kernel as one linked chain of `IORING_OP_WRITEV` entries and one
//! `io_uring_enter`, on a registered fd, and every completion is reaped
//! before the call returns.
//!
//! Why linked: a non-blocking fd may refuse a write with `EAGAIN` while a
//! later write of the same batch would go through, which would put frames
//! on the wire out of order. With `IOSQE_IO_LINK` the kernel runs the
//! writes one after the other and cancels (`ECANCELED`) every write after
//! one that failed, so the frames not written are exactly the tail of the
//! batch: the datapath gives those chains back to the avail ring in order
//! and waits for writability. A write refused for another reason (`EIO`:
//! the tap is down) is that frame's drop; the cancelled ones after it are
//! submitted again at once, in order.
//!
//! Why never in flight across a return: an entry points at an iovec array
//! and the iovecs at memory (guest memory, header bytes) that the caller
//! lends only for the call. [`UringWriter::write_batch`] returns only when
//! the kernel has posted a completion for every entry it took.
//!
//! The ring is `SINGLE_ISSUER` with `DEFER_TASKRUN` (the kernel runs the
//! linked writes' follow-up work while this thread waits, not at arbitrary
//! interrupts of it), so only the thread that created a ring may submit
//! to it. A queue pair's worker thread changes with every frontend
//! connection, so the writer builds its ring lazily, on the thread that
//! writes, and builds a new one when another thread writes.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use io_uring::{opcode, squeue, types, IoUring, Probe};
use log::info;
use thiserror::Error;

/// The most writes in one batch (the datapath's batch).
pub const MAX_WRITES: usize = 64;

/// Why io_uring cannot carry the writes.
#[derive(Debug, Error)]
pub enum UringError {
    #[error(
        "cannot set up an io_uring with SINGLE_ISSUER, DEFER_TASKRUN and SUBMIT_ALL \
         (Linux 6.1 or later, and kernel.io_uring_disabled = 0)"
    )]
    Setup(#[source] io::Error),
    #[error("cannot ask the kernel which io_uring operations it has")]
    Probe(#[source] io::Error),
    #[error("this kernel's io_uring has no {0}")]
    Missing(&'static str),
    #[error("cannot register the fd with the io_uring")]
    Register(#[source] io::Error),
}

/// Checks that this kernel offers what [`UringWriter`] needs: a ring with
/// its flags, vectored writes, and registered files.
pub fn probe() -> Result<(), UringError> {
    let ring = build_ring()?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringError::Probe)?;
    if !probe.is_supported(opcode::Writev::CODE) {
        return Err(UringError::Missing("IORING_OP_WRITEV"));
    }
    // Any fd will do to try registration: an eventfd made for it.
    // SAFETY: eventfd(2) takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(UringError::Register(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by eventfd(2); nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    ring.submitter()
        .register_files(&[fd.as_raw_fd()])
        .map_err(UringError::Register)?;
    Ok(())
}

fn build_ring() -> Result<IoUring, UringError> {
    IoUring::builder()
        // Every entry pushed is consumed by one io_uring_enter, even if
        // one fails at submission, so none is left for a later call.
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(MAX_WRITES as u32)
        .map_err(UringError::Setup)
}

/// A token per thread, to tell which thread built a ring (thread ids of
/// the OS are reused; these are not).
fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: Cell<u64> = const { Cell::new(0) };
    }
    TOKEN.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

struct Ring {
    uring: IoUring,
    /// The thread that built it: the only one that may submit.
    thread: u64,
}

/// Writes batches of frames to one fd through io_uring.
pub struct UringWriter {
    /// The fd written to, registered as fixed file 0 of each ring. The
    /// writer does not own it: its owner (the tap) keeps it open for as
    /// long as the writer lives, and the registration holds a reference
    /// of the kernel's own to the open file.
    fd: RawFd,
    ring: Option<Ring>,
    /// Batches written, and io_uring_enter calls made for them.
    batches: u64,
    enters: u64,
}

impl std::fmt::Debug for UringWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringWriter")
            .field("fd", &self.fd)
            .field("ring", &self.ring.as_ref().map(|r| r.thread))
            .finish()
    }
}

impl UringWriter {
    /// A writer to `fd`. Its owner must keep `fd` open while the writer
    /// lives (a tap owns both).
    pub fn new(fd: BorrowedFd<'_>) -> Self {
        UringWriter {
            fd: fd.as_raw_fd(),
            ring: None,
            batches: 0,
            enters: 0,
        }
    }

    /// Batches written so far and the io_uring_enter calls they took.
    pub fn stats(&self) -> (u64, u64) {
        (self.batches, self.enters)
    }

    /// This thread's ring, built (with the fd registered) if the last one
    /// belongs to another thread or there is none.
    fn ring(&mut self) -> Result<&mut IoUring, UringError> {
        let thread = thread_token();
        if self.ring.as_ref().is_none_or(|r| r.thread != thread) {
            // The old ring has nothing in flight (every call reaps all it
            // submitted), so dropping it cancels nothing.
            self.ring = None;
            let uring = build_ring()?;
            uring
                .submitter()
                .register_files(&[self.fd])
                .map_err(UringError::Register)?;
            info!("io_uring for fd {} set up on this thread", self.fd);
            self.ring = Some(Ring { uring, thread });
        }
        Ok(&mut self.ring.as_mut().expect("just built").uring)
    }

    /// Writes `writes[i]` (the iovecs of one frame) for every `i`, in
    /// order, and puts each write's result in `results[i]`: bytes written,
    /// or a negative errno.
    ///
    /// Once a write fails with `EAGAIN`, no later write of the batch is
    /// made: those results are `-ECANCELED`. A write failing otherwise
    /// does not stop the batch. Returns only when the kernel is done with
    /// every write, so the iovecs and the memory they describe need to
    /// stay valid only for the call (they are borrowed for it).
    ///
    /// # Errors
    /// The ring cannot be built on this thread; nothing was written.
    pub fn write_batch(
        &mut self,
        writes: &[&[libc::iovec]],
        results: &mut [i32],
    ) -> Result<(), UringError> {
        assert!(writes.len() <= MAX_WRITES && results.len() >= writes.len());
        let n = writes.len();
        let mut enters = 0;
        let ring = self.ring()?;
        let mut start = 0;
        while start < n {
            submit_linked(ring, &writes[start..], start, results, &mut enters);
            // Frames before the first failure went out; what follows it
            // depends on why it failed.
            let Some(failed) = (start..n).find(|&i| results[i] < 0) else {
                break;
            };
            match -results[failed] {
                libc::EAGAIN => {
                    // The kernel cancelled every later write: their chains
                    // go back to the guest's ring and wait for writability.
                    break;
                }
                libc::ECANCELED if failed > start => {
                    // The write before it was short (never on a tap) and
                    // broke the link: the rest go in a new batch.
                    start = failed;
                }
                _ => {
                    // That frame is refused (EIO: the tap is down); the
                    // cancelled ones after it go again. Each round settles
                    // at least one frame, so this ends.
                    start = failed + 1;
                }
            }
        }
        self.batches += 1;
        self.enters += enters;
        Ok(())
    }
}

/// Submits `writes` as one linked chain (their results go to
/// `results[base..]`) and reaps every completion.
fn submit_linked(
    ring: &mut IoUring,
    writes: &[&[libc::iovec]],
    base: usize,
    results: &mut [i32],
    enters: &mut u64,
) {
    let n = writes.len();
    {
        let mut sq = ring.submission();
        for (i, iov) in writes.iter().enumerate() {
            let mut entry = opcode::Writev::new(types::Fixed(0), iov.as_ptr(), iov.len() as u32)
                // A write that would block fails with EAGAIN instead of
                // waiting in the kernel for the fd to become writable
                // (io_uring does not take O_NONBLOCK to mean that).
                .rw_flags(libc::RWF_NOWAIT)
                .build()
                .user_data((base + i) as u64);
            if i + 1 < n {
                entry = entry.flags(squeue::Flags::IO_LINK);
            }
            // SAFETY: the entry points at `iov`, an iovec array borrowed
            // for this call, whose iovecs describe memory the caller keeps
            // mapped for the call (a `TxFrame` borrows the guest-memory
            // snapshot; the header bytes are the caller's, borrowed too).
            // Fixed file 0 is the fd registered with this ring, which the
            // kernel holds its own reference to. The entry stays in use
            // until its completion, and this function returns only after
            // reaping the completion of every entry pushed here (below).
            // The queue has room: it holds MAX_WRITES entries, none is
            // left from an earlier call, and `n <= MAX_WRITES`.
            unsafe { sq.push(&entry) }.expect("the submission queue has room for a batch");
        }
    }
    let mut reaped = 0;
    while reaped < n {
        match ring.submit_and_wait(n - reaped) {
            Ok(_) => {}
            // Interrupted, or the kernel short of memory for a moment:
            // the writes may be in flight, so wait again, never return.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            // Anything else means the ring itself is unusable (a bug in
            // zcnet: every argument is its own), with writes that may
            // still read memory the caller is about to give back.
            Err(e) => panic!("io_uring_enter failed with writes in flight: {e}"),
        }
        *enters += 1;
        for cqe in ring.completion() {
            results[cqe.user_data() as usize] = cqe.result();
            reaped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd};

    /// A connected pair of non-blocking datagram sockets, each datagram
    /// one write; `sndbuf` bytes of send buffer on the writing end.
    fn socketpair(sndbuf: libc::c_int) -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds socketpair(2) returns.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        // SAFETY: both fds were just returned by socketpair(2).
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: one int option, read by the kernel from a live local.
        let r = unsafe {
            libc::setsockopt(
                a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&sndbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(r, 0);
        (a, b)
    }

    fn iov(bytes: &[u8]) -> libc::iovec {
        libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        }
    }

    /// Reads every datagram waiting on `fd`.
    fn drain(fd: &OwnedFd) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut buf = vec![0u8; 4096];
            // SAFETY: `buf` is ours and outlives the call.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return out;
            }
            buf.truncate(n as usize);
            out.push(buf);
        }
    }

    #[test]
    fn a_batch_is_written_in_order_with_one_enter() {
        probe().expect("io_uring on the test machine");
        let (a, b) = socketpair(1 << 20);
        let mut w = UringWriter::new(a.as_fd());
        // Each frame in two pieces, as a header and a frame from the guest.
        let frames: Vec<[Vec<u8>; 2]> = (0..MAX_WRITES as u8)
            .map(|i| [vec![i; 2], vec![i ^ 0xff; 30 + usize::from(i)]])
            .collect();
        let iovs: Vec<[libc::iovec; 2]> = frames.iter().map(|f| [iov(&f[0]), iov(&f[1])]).collect();
        let writes: Vec<&[libc::iovec]> = iovs.iter().map(|v| &v[..]).collect();
        let mut results = [0i32; MAX_WRITES];
        w.write_batch(&writes, &mut results).unwrap();

        let want: Vec<i32> = frames
            .iter()
            .map(|f| (f[0].len() + f[1].len()) as i32)
            .collect();
        assert_eq!(&results[..], &want[..], "every write whole");
        let got = drain(&b);
        let sent: Vec<Vec<u8>> = frames.iter().map(|f| f.concat()).collect();
        assert_eq!(got, sent, "every frame once, in order");
        assert_eq!(w.stats(), (1, 1), "one batch, one io_uring_enter");
    }

    #[test]
    fn nothing_after_an_eagain_is_written() {
        // A send buffer that takes a few datagrams only: the first writes
        // go through, then the socket says EAGAIN.
        let (a, b) = socketpair(4096);
        let mut w = UringWriter::new(a.as_fd());
        let frames: Vec<Vec<u8>> = (0..MAX_WRITES as u8).map(|i| vec![i; 600]).collect();
        let iovs: Vec<[libc::iovec; 1]> = frames.iter().map(|f| [iov(f)]).collect();
        let writes: Vec<&[libc::iovec]> = iovs.iter().map(|v| &v[..]).collect();
        let mut results = [0i32; MAX_WRITES];
        w.write_batch(&writes, &mut results).unwrap();

        let blocked = results
            .iter()
            .position(|&r| r < 0)
            .expect("the buffer fills before 64 datagrams");
        assert!(blocked > 0, "some writes went through: {results:?}");
        assert_eq!(results[blocked], -libc::EAGAIN, "{results:?}");
        assert!(
            results[blocked + 1..]
                .iter()
                .all(|&r| r == -libc::ECANCELED),
            "every later write cancelled, none made: {results:?}"
        );
        let got = drain(&b);
        assert_eq!(
            got,
            frames[..blocked].to_vec(),
            "the written ones, in order"
        );

        // With room again, the rest goes, in order, after them.
        let rest = &writes[blocked..];
        let mut results = [0i32; MAX_WRITES];
        let mut all = Vec::new();
        let mut at = 0;
        while at < rest.len() {
            w.write_batch(&rest[at..], &mut results).unwrap();
            let n = results[..rest.len() - at]
                .iter()
                .take_while(|&&r| r > 0)
                .count();
            at += n;
            all.extend(drain(&b));
        }
        assert_eq!(all, frames[blocked..].to_vec());
    }

    #[test]
    fn a_refused_write_drops_that_frame_and_the_rest_still_go() {
        let (a, b) = socketpair(1 << 20);
        let mut w = UringWriter::new(a.as_fd());
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100]).collect();
        let mut iovs: Vec<[libc::iovec; 1]> = frames.iter().map(|f| [iov(f)]).collect();
        // Frame 2 is larger than any datagram the socket takes: EMSGSIZE.
        let huge = vec![0u8; 1 << 21];
        iovs[2] = [iov(&huge)];
        let writes: Vec<&[libc::iovec]> = iovs.iter().map(|v| &v[..]).collect();
        let mut results = [0i32; MAX_WRITES];
        w.write_batch(&writes, &mut results).unwrap();

        assert_eq!(&results[..5], &[100, 100, -libc::EMSGSIZE, 100, 100]);
        let got = drain(&b);
        let want: Vec<Vec<u8>> = [0, 1, 3, 4].iter().map(|&i| frames[i].clone()).collect();
        assert_eq!(got, want, "the others once each, in order");
    }

    #[test]
    fn another_thread_gets_its_own_ring() {
        let (a, b) = socketpair(1 << 20);
        let mut w = UringWriter::new(a.as_fd());
        let frame = vec![7u8; 64];
        let write = |w: &mut UringWriter| {
            let iovs = [iov(&frame)];
            let mut results = [0i32; 1];
            w.write_batch(&[&iovs], &mut results).unwrap();
            assert_eq!(results, [64]);
        };
        write(&mut w);
        std::thread::scope(|s| s.spawn(|| write(&mut w)).join().unwrap());
        assert_eq!(drain(&b).len(), 2);
        assert_eq!(w.stats().0, 2);
    }
}
