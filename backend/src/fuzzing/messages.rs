//! vhost-user message streams, as a frontend sends them, into zcnet's
//! request path.

use std::fs::File;
use std::io::{self, IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use arbitrary::Unstructured;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost::vhost_user::message::{MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE};
use zcnet_tap::{Attachment, GuestConfig, Offloads, RxBuffers, SendMode, Sent, TxFrame};

use super::{u16_, u8_};
use crate::daemon::serve_connection;
use crate::device::DeviceSpec;
use crate::intercept::{Intercept, Verdict};
use crate::lending::{LendPolicy, ZeroCopyMode};
use crate::metrics::Metrics;
use crate::net_intercept::{DeviceEvents, NetIntercept};
use crate::vhost_message::Message;

/// Guest memory behind every memfd the input attaches, bytes.
pub const MEMFD_SIZE: u64 = 1 << 20;
/// Queue pairs of the fuzzed device, and its largest ring.
const PAIRS: usize = 2;
const QUEUE_SIZE: u16 = 256;
/// How long the frontend's end waits for the daemon to answer or close:
/// far longer than any request takes, so only a daemon that hangs fails.
const HANG: Duration = Duration::from_secs(30);

/// One `sendmsg` of the frontend: bytes and the descriptors on them.
struct Chunk<'a> {
    bytes: &'a [u8],
    fds: Vec<OwnedFd>,
}

/// The input as the frontend's writes. Layout, repeated to the end: a
/// `u8` control byte (bits 0-1: how many descriptors ride on this write;
/// bits 2, 3, 4: descriptor 1, 2, 3 is a memfd of [`MEMFD_SIZE`] bytes,
/// else an eventfd), a `u16` length (modulo 1024) and that many bytes.
/// Message boundaries are wherever the bytes put them: one write may hold
/// several messages or part of one.
fn chunks<'a>(u: &mut Unstructured<'a>) -> Vec<Chunk<'a>> {
    let mut out = Vec::new();
    while !u.is_empty() {
        let control = u8_(u);
        let len = usize::from(u16_(u) % 1024);
        let bytes = u.bytes(len.min(u.len())).unwrap_or(&[]);
        let fds = (0..control & 3)
            .map(|i| {
                if control & (4 << i) != 0 {
                    let fd = memfd_create(c"zcnet-fuzz-guest", MemFdCreateFlag::MFD_CLOEXEC)
                        .expect("memfd");
                    let file = File::from(fd);
                    file.set_len(MEMFD_SIZE).expect("memfd size");
                    OwnedFd::from(file)
                } else {
                    eventfd()
                }
            })
            .collect();
        out.push(Chunk { bytes, fds });
    }
    out
}

/// A fresh eventfd.
fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers; its result is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created by eventfd and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Writes every chunk (descriptors on its first byte), then closes the
/// writing side if `close`. A daemon that closed the connection makes the
/// rest fail, which is fine.
fn write_all(sock: UnixStream, chunks: Vec<Chunk<'_>>, close: bool) {
    for c in chunks {
        let raw: Vec<RawFd> = c.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        if c.bytes.is_empty() {
            continue;
        }
        let mut rest = c.bytes;
        let mut first = true;
        while !rest.is_empty() {
            let iov = [IoSlice::new(rest)];
            let cm = if first { cmsgs } else { &[] };
            match sendmsg::<()>(sock.as_raw_fd(), &iov, cm, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
            first = false;
        }
    }
    if close {
        let _ = sock.shutdown(Shutdown::Write);
    }
}

/// A device that is told nothing.
struct Deaf;

impl DeviceEvents for Deaf {
    fn vring_enabled(&self, _index: usize, _enabled: bool) {}
}

/// zcnet's own reading and checking of frontend requests
/// (`vhost_message.rs`, `net_intercept.rs`), without the handler.
///
/// Layout: see `chunks` (control byte, `u16` length, bytes; repeated).
///
/// Checks: every message read back is whole (its payload as long as its
/// header says, at most `MAX_MSG_SIZE`; at most `MAX_ATTACHED_FD_ENTRIES`
/// descriptors), survives being written and read again unchanged, and
/// gets a verdict; a refusal says why.
pub fn vhost_messages(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let chunks = chunks(&mut u);
    let (front, back) = UnixStream::pair().expect("socketpair");
    thread::scope(|s| {
        let writer = s.spawn(move || write_all(front, chunks, true));
        let intercept = NetIntercept::new(PAIRS, QUEUE_SIZE, Arc::new(Deaf));
        while let Ok(Some(m)) = Message::read_from(&back) {
            assert!(m.payload().len() <= MAX_MSG_SIZE);
            assert!(m.fds().len() <= MAX_ATTACHED_FD_ENTRIES);
            let (a, b) = UnixStream::pair().expect("socketpair");
            m.write_to(&a).expect("a message read can be written");
            drop(a);
            let again = Message::read_from(&b)
                .expect("read back")
                .expect("a whole message");
            assert_eq!(again.code(), m.code());
            assert_eq!(again.flags().bits(), m.flags().bits());
            assert_eq!(again.payload(), m.payload());
            assert_eq!(again.fds().len(), m.fds().len());
            match intercept.request(&m) {
                Verdict::Refuse(why) | Verdict::Close(why) => assert!(!why.is_empty()),
                Verdict::Forward | Verdict::Done | Verdict::Reply { .. } => {}
            }
        }
        // Joined, not left to the scope: `join` waits until the thread is
        // gone, its thread-locals freed, so the leak checker sees nothing
        // of it after the run.
        writer.join().expect("the writer panicked");
    });
}

/// A request code no vhost-user version has: the handler ends the
/// connection when it reads it.
const END: u32 = 0xffff_fff0;

/// What ends the input's stream for the daemon: zeros that complete a
/// message it left unfinished, then a request the handler refuses by
/// closing the connection. The handler answers in order, so by the time
/// the frontend sees the connection close it has every reply to what the
/// input sent. (Closing only our writing side instead would make the
/// relay drop the replies still on their way, as it does for a frontend
/// that left.) Nothing, if a header in the stream announces more than
/// `MAX_MSG_SIZE` bytes: the relay closes the connection there.
fn end_of_stream(chunks: &[Chunk<'_>]) -> Vec<u8> {
    let stream: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.bytes.iter().copied())
        .collect();
    let mut at = 0;
    while at < stream.len() {
        // A header cut short is completed with zeros first (the relay
        // waits for all 12 bytes before it looks at the size).
        let mut header = [0u8; 12];
        let have = (stream.len() - at).min(12);
        header[..have].copy_from_slice(&stream[at..at + have]);
        let size = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]) as usize;
        if size > MAX_MSG_SIZE {
            return vec![0u8; 12 - have];
        }
        at += 12 + size;
    }
    let mut end = vec![0u8; at - stream.len()];
    for word in [END, 1, 0] {
        end.extend_from_slice(&word.to_ne_bytes());
    }
    end
}

/// An attachment that takes every frame and never has one to give.
struct Sink {
    /// Never readable: an eventfd nothing writes.
    fd: OwnedFd,
}

impl Attachment for Sink {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn send(&mut self, _frame: &mut TxFrame<'_>, _mode: SendMode) -> io::Result<Sent> {
        Ok(Sent::Copied)
    }

    fn recv(&mut self, _bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn supported_offloads(&self) -> Offloads {
        Offloads::ALL
    }

    fn configure(&mut self, _guest: GuestConfig) -> io::Result<()> {
        Ok(())
    }
}

/// The daemon's whole request path: the relay, zcnet's checks, and
/// vhost-user-backend's handler with a real `NetDevice` (two queue pairs
/// on attachments that take every frame), served exactly as the daemon
/// serves a frontend, on one end of a socket pair.
///
/// Layout: see `chunks` (control byte, `u16` length, bytes; repeated).
///
/// Checks: the daemon never panics (a panic on any of its threads fails
/// the run), answers with whole messages, closes the connection once the
/// frontend has closed its side, and gives back every attachment.
///
/// With `ZCNET_FUZZ_DEBUG` set, the daemon's log goes to stderr
/// (`RUST_LOG` picks the level) with the size of the replies: to see
/// what an input does.
pub fn vhost_daemon(data: &[u8]) {
    if std::env::var_os("ZCNET_FUZZ_DEBUG").is_some() {
        let _ = env_logger::builder().is_test(true).try_init();
    }
    let mut u = Unstructured::new(data);
    let mut chunks = chunks(&mut u);
    let end = end_of_stream(&chunks);
    chunks.push(Chunk {
        bytes: &end,
        fds: Vec::new(),
    });
    let spec = DeviceSpec {
        mac: [0x52, 0x54, 0, 0, 0, 1],
        mtu: None,
        queue_size: QUEUE_SIZE,
        offloads: Offloads::ALL,
        rx_offloads: Offloads::ALL,
        lend: LendPolicy {
            mode: ZeroCopyMode::Off,
            min_bytes: 8192,
            cap: 128,
        },
        drain: Duration::from_millis(100),
    };
    let metrics = Metrics::new(PAIRS);
    let attachments: Vec<Box<dyn Attachment>> = (0..PAIRS)
        .map(|_| Box::new(Sink { fd: eventfd() }) as Box<dyn Attachment>)
        .collect();
    let (front, daemon_end) = UnixStream::pair().expect("socketpair");
    let mut reader = front.try_clone().expect("clone");
    reader.set_read_timeout(Some(HANG)).expect("timeout");
    thread::scope(|s| {
        let served =
            s.spawn(|| serve_connection(&spec, attachments, &metrics, ledger(), || Ok(daemon_end)));
        let writer = s.spawn(move || write_all(front, chunks, false));
        let mut replies = Vec::new();
        match reader.read_to_end(&mut replies) {
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                panic!("the daemon neither answered nor closed the connection in {HANG:?}")
            }
            // The daemon closed with our writes unread.
            Err(_) => {}
        }
        if std::env::var_os("ZCNET_FUZZ_DEBUG").is_some() {
            eprintln!("{} reply bytes", replies.len());
        }
        // Replies are whole messages: headers and the payloads they announce.
        let mut rest = &replies[..];
        while rest.len() >= 12 {
            let size = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
            assert!(size <= MAX_MSG_SIZE, "a reply announces {size} bytes");
            assert!(rest.len() >= 12 + size, "a reply cut short");
            rest = &rest[12 + size..];
        }
        assert!(rest.is_empty(), "a reply header cut short");
        let back = served
            .join()
            .expect("the serving thread panicked")
            .expect("serving a frontend failed");
        assert_eq!(back.len(), PAIRS, "attachments lost");
        writer.join().expect("the writer panicked");
    });
}

/// One in-flight record for every input of this process, in memory (a
/// frontend connection needs one, as the daemon's has).
fn ledger() -> &'static Arc<crate::inflight::Record> {
    static LEDGER: std::sync::OnceLock<Arc<crate::inflight::Record>> = std::sync::OnceLock::new();
    LEDGER.get_or_init(|| {
        let geometry = crate::inflight::Geometry {
            num_queues: 2 * PAIRS as u16,
            queue_size: QUEUE_SIZE,
        };
        crate::inflight::ledger::in_memory(geometry).expect("a record for the fuzzed daemon")
    })
}
