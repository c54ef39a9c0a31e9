//! A scripted attachment: it records every frame the datapath sends,
//! answers each send as the test scripted, hands out the RX frames the
//! test queued, and delivers zero-copy completions when (and in whatever
//! order) the test says so.
//!
//! The datapath owns the [`FakeAttachment`] (boxed in its queue pair); the
//! test keeps the [`Fake`] handle, which shares its state.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use zcnet_tap::vnet_hdr::VnetHdr;
use zcnet_tap::{
    Attachment, Completion, GuestConfig, Offloads, RxBuffers, SendMode, Sent, TxFrame,
};

/// How the fake answers one send. Unscripted sends get [`Reply::Accept`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// What a healthy socket does: copies when asked to copy; when asked to
    /// lend (and the fake can lend), lends, taking the next id.
    Accept,
    /// As `Accept`, but a lent frame takes the next `n` ids (a TCP send the
    /// kernel took in `n` parts).
    LendIds(u32),
    /// Copies even when asked to lend (an ENOBUFS fallback inside the
    /// attachment).
    CopiedAnyway,
    /// `EAGAIN`: nothing is sent.
    WouldBlock,
    /// The host refused the frame with this errno (EIO, ENOBUFS...).
    Error(i32),
}

/// A frame the fake took: its header and bytes, copied out of the
/// [`TxFrame`] during the send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentFrame {
    /// The header zcnet handed on (validated and normalised).
    pub hdr: VnetHdr,
    /// The frame after the virtio-net header.
    pub bytes: Vec<u8>,
    /// What the datapath asked for.
    pub mode: SendMode,
    /// What the fake answered.
    pub sent: Sent,
}

/// Called with the number of the send (or read) it follows or precedes.
type Hook = Box<dyn FnMut(usize) + Send>;

/// The test's hooks into the datapath's calls.
#[derive(Default)]
struct Hooks {
    send: Option<Hook>,
    recv: Option<Hook>,
    recvs: usize,
}

#[derive(Default)]
struct State {
    can_lend: bool,
    replies: VecDeque<Reply>,
    attempts: usize,
    sent: Vec<SentFrame>,
    next_id: u32,
    rx: VecDeque<io::Result<Vec<u8>>>,
    completions: Vec<Completion>,
    /// What each call of `wait_notifications` brings, in order.
    arrivals: VecDeque<Vec<Completion>>,
    waits: usize,
    config: GuestConfig,
    /// How many frames each `send_batch` call brought.
    batches: Vec<usize>,
    /// Sends taken and not recorded (see [`Fake::record`]).
    uncounted: usize,
    /// Whether sent frames are kept (see [`Fake::record`]).
    no_record: bool,
}

/// How the fake takes a batch of frames, as the tap's two I/O engines do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// One `send` per frame: the trait's default `send_batch`, as the
    /// tap's `syscall` engine does (one writev per frame).
    Syscall,
    /// Its own `send_batch`, as the tap's `uring` engine does: the whole
    /// batch in one call, and once a frame would block, every later frame
    /// of the batch is cancelled, never sent (linked writes).
    Uring,
}

/// The attachment half, owned by the queue pair.
pub struct FakeAttachment {
    fd: OwnedFd,
    engine: Engine,
    state: Arc<Mutex<State>>,
    hooks: Arc<Mutex<Hooks>>,
}

/// The test's half: scripts and inspects the attachment.
#[derive(Clone)]
pub struct Fake {
    state: Arc<Mutex<State>>,
    hooks: Arc<Mutex<Hooks>>,
}

/// A fresh fake; `can_lend` says whether it is a socket that can take
/// `MSG_ZEROCOPY` (else it behaves like a tap, which always copies);
/// `engine` how it takes a batch.
pub fn fake(can_lend: bool, engine: Engine) -> (FakeAttachment, Fake) {
    let state = Arc::new(Mutex::new(State {
        can_lend,
        ..State::default()
    }));
    let hooks = Arc::new(Mutex::new(Hooks::default()));
    (
        FakeAttachment {
            fd: super::eventfd(),
            engine,
            state: state.clone(),
            hooks: hooks.clone(),
        },
        Fake { state, hooks },
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding it fails anyway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    /// Answers the next sends with `replies`, in order.
    pub fn reply(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state).replies.extend(replies);
    }

    /// Every frame sent so far (not the ones refused or blocked).
    pub fn sent(&self) -> Vec<SentFrame> {
        lock(&self.state).sent.clone()
    }

    /// How many times `send` was called, whatever it answered.
    pub fn attempts(&self) -> usize {
        lock(&self.state).attempts
    }

    /// How many frames each `send_batch` call brought, in order.
    pub fn batches(&self) -> Vec<usize> {
        lock(&self.state).batches.clone()
    }

    /// Whether to keep a copy of every frame sent (the default). Without
    /// it the fake only counts them ([`sent_count`](Self::sent_count)) and
    /// allocates nothing per frame, so a test can count the datapath's
    /// own allocations.
    pub fn record(&self, on: bool) {
        let mut st = lock(&self.state);
        st.no_record = !on;
        st.batches.reserve(1 << 16);
    }

    /// Frames sent so far, recorded or not.
    pub fn sent_count(&self) -> usize {
        let st = lock(&self.state);
        st.sent.len() + st.uncounted
    }

    /// Calls `hook` after each send with the send's number (1 for the
    /// first), outside the fake's lock: the hook may act as the guest or
    /// the kernel (publish chains, deliver completions) in the middle of a
    /// drain. The hook must not call `on_send` itself.
    pub fn on_send(&self, hook: impl FnMut(usize) + Send + 'static) {
        lock(&self.hooks).send = Some(Box::new(hook));
    }

    /// Calls `hook` before each read with the read's number (1 for the
    /// first), outside the fake's lock: the hook sees the guest's rings as
    /// they are between two frames of one pass. The hook must not call
    /// `on_recv` itself.
    pub fn on_recv(&self, hook: impl FnMut(usize) + Send + 'static) {
        lock(&self.hooks).recv = Some(Box::new(hook));
    }

    /// Queues a frame (without virtio-net header) for the guest; the fake
    /// puts an all-zero header of the configured length in front.
    pub fn push_rx(&self, frame: Vec<u8>) {
        lock(&self.state).rx.push_back(Ok(frame));
    }

    /// The kernel released the sends `first..=last` (COPIED or not): the
    /// next `reap` returns it.
    pub fn complete(&self, first: u32, last: u32, copied: bool) {
        lock(&self.state).completions.push(Completion {
            first,
            last,
            copied,
        });
    }

    /// Completions that arrive while the datapath waits for them: each
    /// call of `wait_notifications` brings the next batch. With none left
    /// a wait blocks for its whole timeout, as a poll would.
    pub fn arrive_during_waits(&self, batches: impl IntoIterator<Item = Vec<Completion>>) {
        lock(&self.state).arrivals.extend(batches);
    }

    /// How many times the datapath waited for notifications.
    pub fn waits(&self) -> usize {
        lock(&self.state).waits
    }

    /// What the last `configure` said.
    pub fn config(&self) -> GuestConfig {
        lock(&self.state).config
    }
}

impl State {
    fn lend(&mut self, ids: u32) -> Sent {
        let first_id = self.next_id;
        self.next_id = self.next_id.wrapping_add(ids);
        Sent::Lent {
            first_id,
            last_id: self.next_id.wrapping_sub(1),
        }
    }
}

impl FakeAttachment {
    /// One frame as the script says; returns its attempt number and what
    /// the fake answered.
    fn take(&mut self, frame: &mut TxFrame<'_>, mode: SendMode) -> (usize, io::Result<Sent>) {
        let mut st = lock(&self.state);
        st.attempts += 1;
        let lend = mode == SendMode::Lend && st.can_lend;
        let result = match st.replies.pop_front().unwrap_or(Reply::Accept) {
            Reply::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
            Reply::Error(errno) => Err(io::Error::from_raw_os_error(errno)),
            Reply::CopiedAnyway => Ok(Sent::Copied),
            Reply::Accept if lend => Ok(st.lend(1)),
            Reply::LendIds(n) if lend => Ok(st.lend(n)),
            Reply::Accept | Reply::LendIds(_) => Ok(Sent::Copied),
        };
        match result {
            Ok(_) if st.no_record => st.uncounted += 1,
            Ok(sent) => {
                let mut bytes = vec![0u8; frame.len()];
                frame.read_prefix(&mut bytes);
                st.sent.push(SentFrame {
                    hdr: *frame.hdr(),
                    bytes,
                    mode,
                    sent,
                });
            }
            Err(_) => {}
        }
        (st.attempts, result)
    }
}

impl Attachment for FakeAttachment {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn send(&mut self, frame: &mut TxFrame<'_>, mode: SendMode) -> io::Result<Sent> {
        let (attempt, result) = self.take(frame, mode);
        if let Some(hook) = lock(&self.hooks).send.as_mut() {
            hook(attempt);
        }
        result
    }

    fn send_batch(
        &mut self,
        frames: &mut [TxFrame<'_>],
        modes: &[SendMode],
        results: &mut [io::Result<Sent>],
    ) -> usize {
        lock(&self.state).batches.push(frames.len());
        if self.engine == Engine::Syscall {
            return zcnet_tap::attachment::send_each(self, frames, modes, results);
        }
        for (i, frame) in frames.iter_mut().enumerate() {
            let (attempt, result) = self.take(frame, modes[i]);
            // The guest (or the kernel) may act while the batch is being
            // written: the hook runs after each frame, as with `send`.
            if let Some(hook) = lock(&self.hooks).send.as_mut() {
                hook(attempt);
            }
            match result {
                // The frames after it are cancelled: neither attempted
                // nor sent.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return i,
                outcome => results[i] = outcome,
            }
        }
        frames.len()
    }

    fn recv(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        {
            let mut hooks = lock(&self.hooks);
            hooks.recvs += 1;
            let n = hooks.recvs;
            if let Some(hook) = hooks.recv.as_mut() {
                hook(n);
            }
        }
        let mut st = lock(&self.state);
        let frame = st
            .rx
            .pop_front()
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))?;
        // Header (all zero) and frame, written without allocating; what
        // fits is written, and the length returned is the frame's own, as
        // a datagram socket with MSG_TRUNC reports it.
        let hdr = VnetHdr::default().to_bytes();
        let hdr = &hdr[..st.config.hdr_len];
        let room = bufs.capacity();
        assert!(bufs.write_at(0, &hdr[..hdr.len().min(room)]));
        let fits = frame.len().min(room.saturating_sub(hdr.len()));
        assert!(bufs.write_at(hdr.len(), &frame[..fits]));
        Ok(hdr.len() + frame.len())
    }

    fn can_lend(&self) -> bool {
        lock(&self.state).can_lend
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        out.append(&mut lock(&self.state).completions);
        Ok(())
    }

    fn wait_notifications(&mut self, timeout: Duration) {
        let arrived = {
            let mut st = lock(&self.state);
            st.waits += 1;
            let batch = st.arrivals.pop_front();
            if let Some(batch) = &batch {
                st.completions.extend_from_slice(batch);
            }
            batch.is_some()
        };
        if !arrived {
            // Nothing will come: the wait times out.
            std::thread::sleep(timeout);
        }
    }

    fn supported_offloads(&self) -> Offloads {
        Offloads::ALL
    }

    fn configure(&mut self, guest: GuestConfig) -> io::Result<()> {
        lock(&self.state).config = guest;
        Ok(())
    }
}
