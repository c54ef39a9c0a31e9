//! The stream attachment allocates nothing per frame.
//!
//! A `StreamAttachment` connects to a plain TCP peer on 127.0.0.1, and
//! frames go both ways through it (TX lent and copied, RX cut from
//! records), with a peer that reads slowly so the socket fills and TX
//! waits and finishes records from its tail. After a warm-up, a counting
//! global allocator (this test binary's only) sees what this thread
//! allocates while thousands more frames go each way: nothing.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};

use zcnet_harness::alloc::{allocations, CountingAlloc};
use zcnet_tap::vnet_hdr::VnetHdr;
use zcnet_tap::{
    Attachment, Completion, GuestConfig, Offloads, Readiness, RxBuffers, SendMode, Sent,
    StreamAttachment, StreamEndpoint, TxFrame,
};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const HDR_LEN: usize = 12;
/// The longest TX frame of the run.
const MAX_TX: usize = 30_000;
/// Frames at least this long may be lent (as the engine's default).
const LEND_FROM: usize = 4096;
/// Buffers of lent frames, each reused only once its ids are completed
/// (the engine lends at most 128 chains per queue).
const SLOTS: usize = 128;
/// How long one wait for any progress may take before the run fails.
const STALL_MS: i32 = 10_000;

/// Bytes `k % 251`: frame `i` is `PATTERN[i % 251..][..len]` behind its
/// index, so both ends build and check frames with slice copies.
fn pattern() -> Vec<u8> {
    (0..2 * MAX_TX + 251).map(|k| (k % 251) as u8).collect()
}

fn tx_len(i: u64) -> usize {
    60 + (i as usize * 7919) % (MAX_TX - 60)
}

/// A TX buffer and the ids its frame is lent under.
struct Slot {
    buf: Box<[u8]>,
    /// Ids not yet completed; 0 when free.
    left: u32,
    first: u32,
    ids: u32,
}

struct Lab {
    att: StreamAttachment,
    peer: TcpStream,
    pattern: Vec<u8>,
    slots: Vec<Slot>,
    /// The buffer of copied frames.
    copy_buf: Box<[u8]>,
    completions: Vec<Completion>,
    /// Frames handed to the attachment, and seen whole by the peer.
    tx_sent: u64,
    tx_seen: u64,
    /// The peer's receive buffer: `rbuf[rstart..rend]` unparsed.
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// RX records the peer sends, in turn; how far into the current one
    /// it has written; how many it wrote whole, and the guest received.
    records: Vec<Vec<u8>>,
    rx_offset: usize,
    rx_written: u64,
    rx_got: u64,
    rx_mem: Box<[u8]>,
    /// Sends that found the socket full (or a tail waiting).
    would_block: u64,
    /// Frames the attachment lent.
    lent: u64,
}

impl Lab {
    fn new() -> Lab {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        // A small window (inherited by the accepted socket), so the
        // sender's socket fills.
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::RcvBuf, &(32 << 10))
            .expect("SO_RCVBUF");
        let addr = listener.local_addr().unwrap();
        let mut att =
            StreamAttachment::open(StreamEndpoint::Connect(addr), false, true).expect("open");
        att.configure(GuestConfig {
            hdr_len: HDR_LEN,
            rx_offloads: Offloads::default(),
        })
        .unwrap();
        let (peer, _) = listener.accept().expect("accept the attachment");
        peer.set_nonblocking(true).unwrap();
        let pattern = pattern();
        let records = [60usize, 1514, 9000, 333, 4000, 64]
            .iter()
            .enumerate()
            .map(|(k, &len)| {
                let mut r = (len as u32).to_be_bytes().to_vec();
                r.extend_from_slice(&pattern[k..k + len]);
                r
            })
            .collect();
        Lab {
            att,
            peer,
            pattern,
            slots: (0..SLOTS)
                .map(|_| Slot {
                    buf: vec![0u8; MAX_TX].into_boxed_slice(),
                    left: 0,
                    first: 0,
                    ids: 0,
                })
                .collect(),
            copy_buf: vec![0u8; MAX_TX].into_boxed_slice(),
            completions: Vec::with_capacity(4096),
            tx_sent: 0,
            tx_seen: 0,
            rbuf: vec![0u8; 4 * (MAX_TX + 4)].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            records,
            rx_offset: 0,
            rx_written: 0,
            rx_got: 0,
            rx_mem: vec![0u8; 65536 + HDR_LEN].into_boxed_slice(),
            would_block: 0,
            lent: 0,
        }
    }

    /// Moves frames both ways until `n` more have crossed each way and no
    /// frame is lent any more; fails if nothing moves for `STALL_MS`.
    fn run(&mut self, n: u64) {
        let (tx_target, rx_target) = (self.tx_sent + n, self.rx_written + n);
        loop {
            let mut moved = self.tx(tx_target);
            moved |= self.reap();
            moved |= self.peer_reads();
            moved |= self.peer_writes(rx_target);
            moved |= self.rx();
            let lent = self.slots.iter().any(|s| s.left > 0);
            if self.tx_seen == tx_target && self.rx_got == rx_target && !lent {
                return;
            }
            if !moved {
                self.wait(self.rx_written < rx_target);
            }
        }
    }

    /// Sends frames while there are any to send and free buffers.
    fn tx(&mut self, target: u64) -> bool {
        let mut moved = false;
        while self.tx_sent < target {
            let i = self.tx_sent;
            let len = tx_len(i);
            // One frame in four is lent, from a buffer held until its ids
            // are completed; the rest are copied, so the socket's buffer
            // fills (lent pages are not charged to it).
            let (mode, slot) = if len >= LEND_FROM && i % 4 == 1 {
                match self.slots.iter().position(|s| s.left == 0) {
                    Some(slot) => (SendMode::Lend, Some(slot)),
                    None => break,
                }
            } else {
                (SendMode::Copy, None)
            };
            let buf = match slot {
                Some(slot) => &mut self.slots[slot].buf,
                None => &mut self.copy_buf,
            };
            let from = (i % 251) as usize;
            buf[..len].copy_from_slice(&self.pattern[from..from + len]);
            buf[..8].copy_from_slice(&i.to_le_bytes());
            // Two iovecs, so records are cut across them.
            let (a, b) = buf[..len].split_at_mut(len / 3);
            let mut iov = [
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                libc::iovec {
                    iov_base: a.as_mut_ptr().cast(),
                    iov_len: a.len(),
                },
                libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                },
            ];
            // SAFETY: the iovecs describe a buffer the lab owns, not
            // otherwise referenced while the frame lives; a lent one is
            // not touched again until the ids the send returns are
            // completed (`reap`), a copied one only after the call.
            let mut frame = unsafe { TxFrame::new(VnetHdr::default(), &mut iov) };
            match self.att.send(&mut frame, mode) {
                Ok(Sent::Copied) => {}
                Ok(Sent::Lent { first_id, last_id }) => {
                    let s = &mut self.slots[slot.expect("only a slot's frame is lent")];
                    s.first = first_id;
                    s.ids = last_id.wrapping_sub(first_id) + 1;
                    s.left = s.ids;
                    self.lent += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.would_block += 1;
                    break;
                }
                // Still connecting.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                Err(e) => panic!("frame {i}: {e}"),
            }
            self.tx_sent += 1;
            moved = true;
        }
        moved
    }

    /// Takes in completions: a buffer is free once all its ids are.
    fn reap(&mut self) -> bool {
        self.completions.clear();
        self.att.reap(&mut self.completions).expect("reap");
        for c in &self.completions {
            let span = c.last.wrapping_sub(c.first);
            for s in self.slots.iter_mut().filter(|s| s.left > 0) {
                for k in 0..s.ids {
                    if s.first.wrapping_add(k).wrapping_sub(c.first) <= span {
                        s.left -= 1;
                    }
                }
            }
        }
        !self.completions.is_empty()
    }

    /// The peer reads a little and checks every whole record.
    fn peer_reads(&mut self) -> bool {
        if self.rbuf.len() - self.rend < MAX_TX + 4 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        // At most 16 KiB at a time: a slow reader.
        let room = (self.rbuf.len() - self.rend).min(16 << 10);
        let n = match self.peer.read(&mut self.rbuf[self.rend..self.rend + room]) {
            Ok(0) => panic!("the attachment closed the connection"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => panic!("peer read: {e}"),
        };
        self.rend += n;
        while self.rend - self.rstart >= 4 {
            let at = self.rstart;
            let len = u32::from_be_bytes(self.rbuf[at..at + 4].try_into().unwrap()) as usize;
            if self.rend - at < 4 + len {
                break;
            }
            let i = self.tx_seen;
            let body = &self.rbuf[at + 4..at + 4 + len];
            assert_eq!(len, tx_len(i), "record {i}: length");
            assert_eq!(&body[..8], &i.to_le_bytes(), "record {i}: out of order");
            let from = (i % 251) as usize;
            assert!(
                body[8..] == self.pattern[from + 8..from + len],
                "record {i}: bytes differ"
            );
            self.tx_seen += 1;
            self.rstart = at + 4 + len;
        }
        true
    }

    /// The peer writes RX records until `target` are out.
    fn peer_writes(&mut self, target: u64) -> bool {
        let mut moved = false;
        while self.rx_written < target {
            let r = &self.records[(self.rx_written % self.records.len() as u64) as usize];
            match self.peer.write(&r[self.rx_offset..]) {
                Ok(n) => {
                    moved = true;
                    self.rx_offset += n;
                    if self.rx_offset == r.len() {
                        self.rx_offset = 0;
                        self.rx_written += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("peer write: {e}"),
            }
        }
        moved
    }

    /// The guest side receives every whole record there is.
    fn rx(&mut self) -> bool {
        let mut moved = false;
        loop {
            let (head, rest) = self.rx_mem.split_at_mut(4096);
            let mut iov = [
                libc::iovec {
                    iov_base: head.as_mut_ptr().cast(),
                    iov_len: head.len(),
                },
                libc::iovec {
                    iov_base: rest.as_mut_ptr().cast(),
                    iov_len: rest.len(),
                },
            ];
            let guest_len = head.len() + rest.len();
            let got = {
                // SAFETY: the iovecs describe `rx_mem`, borrowed mutably
                // (through `head` and `rest`) for this block and not
                // otherwise referenced while `bufs` lives.
                let mut bufs = unsafe { RxBuffers::new(&mut iov, guest_len) };
                self.att.recv(&mut bufs)
            };
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return moved,
                Err(e) => panic!("recv: {e}"),
            };
            let j = self.rx_got;
            let r = &self.records[(j % self.records.len() as u64) as usize];
            assert_eq!(n, HDR_LEN + r.len() - 4, "RX frame {j}: length");
            assert_eq!(&self.rx_mem[..10], &[0u8; 10], "RX frame {j}: header");
            assert!(
                self.rx_mem[HDR_LEN..n] == r[4..],
                "RX frame {j}: bytes differ"
            );
            self.rx_got += 1;
            moved = true;
        }
    }

    /// Waits for the attachment or the peer's socket (for room too while
    /// the peer has records to write), and lets the attachment act on
    /// what woke it.
    fn wait(&mut self, writing: bool) {
        let peer_events = if writing {
            libc::POLLIN | libc::POLLOUT
        } else {
            libc::POLLIN
        };
        let mut fds = [
            libc::pollfd {
                fd: self.att.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.peer.as_fd().as_raw_fd(),
                events: peer_events,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds on our stack, count 2; both fds are
        // borrowed from `self`, so they stay open for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, STALL_MS) };
        assert!(
            n > 0,
            "nothing moved for {STALL_MS} ms: {} of {} frames seen by the peer, {} received",
            self.tx_seen,
            self.tx_sent,
            self.rx_got
        );
        self.att.ready(Readiness::default());
    }
}

#[test]
fn frames_both_ways_allocate_nothing_once_warm() {
    assert_eq!(
        allocations(|| drop(std::hint::black_box(vec![0u8; 16]))),
        1,
        "the allocator counts"
    );
    let mut lab = Lab::new();
    // Warm-up: scratch buffers grow to their largest here.
    lab.run(1000);
    let (blocked, lent) = (lab.would_block, lab.lent);
    let allocations = allocations(|| lab.run(3000));
    assert_eq!(
        allocations, 0,
        "the attachment allocated {allocations} times in 3000 frames each way"
    );
    assert_eq!((lab.tx_seen, lab.rx_got), (4000, 4000));
    let (blocked, lent) = (lab.would_block - blocked, lab.lent - lent);
    assert!(blocked > 0, "the socket never filled: TX never waited");
    assert!(lent > 0, "no frame was lent");
    eprintln!("3000 frames each way, {lent} lent, TX waited {blocked} times: no allocation");
}
