//! No attachment allocates per frame (issue 8): after a warm-up, thousands
//! of frames go through the tap (frame by frame, and in io_uring batches)
//! and the UDP attachment, both ways, copied and lent, with zero heap
//! allocations on the sending and receiving thread. A counting global
//! allocator (this test binary's only) counts what the current thread
//! allocates.
//!
//! Needs root (a tap in a private network namespace).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::thread;

use arrayvec::ArrayVec;
use zcnet_harness::alloc::{allocations, CountingAlloc};
use zcnet_tap::vnet_hdr::{VnetHdr, HDR_LEN_V1};
use zcnet_tap::{
    Attachment, Completion, GuestConfig, IoEngine, Offloads, RxBuffers, SendMode, Sent, Tap,
    TxFrame, UdpAttachment, MAX_BATCH,
};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const FRAMES: usize = 2000;

/// A guest TX chain in miniature: the frame's bytes in two pieces, behind a
/// spare slot, as the datapath hands frames over.
struct Chain {
    head: Vec<u8>,
    tail: Vec<u8>,
    iov: [libc::iovec; 3],
}

impl Chain {
    fn new(frame: &[u8]) -> Chain {
        let (a, b) = frame.split_at(frame.len() / 3);
        let mut c = Chain {
            head: a.to_vec(),
            tail: b.to_vec(),
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 3],
        };
        c.iov[1] = libc::iovec {
            iov_base: c.head.as_mut_ptr().cast(),
            iov_len: c.head.len(),
        };
        c.iov[2] = libc::iovec {
            iov_base: c.tail.as_mut_ptr().cast(),
            iov_len: c.tail.len(),
        };
        c
    }

    fn frame(&mut self) -> TxFrame<'_> {
        // SAFETY: the iovecs describe `head` and `tail`, owned by `self`,
        // which the frame borrows mutably: they stay allocated and
        // unaliased while it lives.
        unsafe { TxFrame::new(VnetHdr::default(), &mut self.iov) }
    }
}

/// Room for one received frame: a buffer and its iovec.
struct Room {
    buf: Vec<u8>,
    iov: [libc::iovec; 1],
}

impl Room {
    fn new(len: usize) -> Room {
        let mut r = Room {
            buf: vec![0u8; len],
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }],
        };
        r.iov[0] = libc::iovec {
            iov_base: r.buf.as_mut_ptr().cast(),
            iov_len: r.buf.len(),
        };
        r
    }

    /// Buffers over all of `buf` (an attachment may consume the iovecs,
    /// so they are rebuilt for every frame, as the datapath does).
    fn buffers(&mut self) -> RxBuffers<'_> {
        self.iov[0] = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        // SAFETY: the iovec describes `buf`, owned by `self` and borrowed
        // mutably by the buffers, so nothing else touches it meanwhile.
        unsafe { RxBuffers::new(&mut self.iov, self.buf.len()) }
    }
}

fn test_frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![tag; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

fn config() -> GuestConfig {
    GuestConfig {
        hdr_len: HDR_LEN_V1,
        rx_offloads: Offloads::default(),
    }
}

#[test]
fn udp_sends_and_receives_without_allocating() {
    for (peer_hdr, zerocopy) in [(false, false), (false, true), (true, true)] {
        let (a_addr, b_addr) = (free_udp_addr(), free_udp_addr());
        let mut a = UdpAttachment::open(a_addr, b_addr, peer_hdr, zerocopy).expect("open A");
        let mut b = UdpAttachment::open(b_addr, a_addr, peer_hdr, zerocopy).expect("open B");
        a.configure(config()).unwrap();
        b.configure(config()).unwrap();
        let mut chain = Chain::new(&test_frame(1500, 7));
        let mut room = Room::new(2048);
        let mut done: Vec<Completion> = Vec::with_capacity(4096);
        let mode = if zerocopy {
            SendMode::Lend
        } else {
            SendMode::Copy
        };
        let mut round = |a: &mut UdpAttachment, b: &mut UdpAttachment| {
            a.send(&mut chain.frame(), mode).expect("send");
            let n = b.recv(&mut room.buffers()).expect("a datagram on loopback");
            assert_eq!(
                n,
                if peer_hdr {
                    12 + 1500
                } else {
                    HDR_LEN_V1 + 1500
                }
            );
            done.clear();
            a.reap(&mut done).expect("reap");
        };
        for _ in 0..50 {
            round(&mut a, &mut b);
        }
        let n = allocations(|| {
            for _ in 0..FRAMES {
                round(&mut a, &mut b);
            }
        });
        assert_eq!(
            n, 0,
            "UDP (peer header {peer_hdr}, zero-copy {zerocopy}) allocated per frame"
        );
    }
}

const ETH_P_ALL: u16 = 0x0003;

/// The zeros above mean something only if the allocator counts.
#[test]
fn the_allocator_counts_an_allocation() {
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![0u8; 16]))), 1);
}

#[test]
fn the_tap_sends_and_receives_without_allocating() {
    tap_round_trips(IoEngine::Syscall, 1);
}

#[test]
fn the_tap_sends_io_uring_batches_without_allocating() {
    zcnet_tap::uring::probe().expect("io_uring on the test machine");
    tap_round_trips(IoEngine::Uring, MAX_BATCH);
}

/// Rounds of `batch` frames written to a tap with `engine` (one
/// `send_batch` call) and one frame read back, counted after a warm-up.
fn tap_round_trips(engine: IoEngine, batch: usize) {
    // A private network namespace for this thread (and the `ip` it runs).
    thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare the network namespace (run as root)");
        let mut taps = Tap::open_queues("zcnoalloc0", 1).expect("create a tap");
        let mut tap = taps.pop().unwrap();
        tap.set_io_engine(engine);
        // No IPv6 chatter (router solicitations, MLD) on the test tap.
        for (cmd, args) in [
            ("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"][..]),
            ("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"]),
            ("ip", &["link", "set", "zcnoalloc0", "up"]),
        ] {
            let ok = Command::new(cmd)
                .args(args)
                .status()
                .expect("run a command");
            assert!(ok.success(), "{cmd} {args:?}");
        }
        tap.configure(config()).unwrap();
        // The host side: an AF_PACKET socket on the tap injects frames.
        // SAFETY: plain socket creation; the fd is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(raw >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let host = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"zcnoalloc0".as_ptr()) } as i32;
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex;
        let inject = test_frame(300, 9);
        let send_host = || {
            // SAFETY: the buffer and address are valid for the call; the
            // socket is owned by `host`.
            let n = unsafe {
                libc::sendto(
                    host.as_raw_fd(),
                    inject.as_ptr().cast(),
                    inject.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(n as usize, inject.len());
        };
        let mut chains: Vec<Chain> = (0..batch)
            .map(|_| Chain::new(&test_frame(1500, 3)))
            .collect();
        let mut room = Room::new(2048);
        let modes = [SendMode::Copy; MAX_BATCH];
        let mut results: Vec<std::io::Result<Sent>> =
            (0..batch).map(|_| Ok(Sent::Copied)).collect();
        let mut round = |tap: &mut Tap| {
            // The frames of a batch live on the stack, as in the datapath.
            let mut frames: ArrayVec<TxFrame<'_>, MAX_BATCH> =
                chains.iter_mut().map(Chain::frame).collect();
            let sent = tap.send_batch(&mut frames, &modes, &mut results);
            assert_eq!(sent, batch, "every frame written");
            assert!(results.iter().all(|r| matches!(r, Ok(Sent::Copied))));
            drop(frames);
            send_host();
            let n = tap.recv(&mut room.buffers()).expect("read the tap");
            assert_eq!(n, HDR_LEN_V1 + inject.len());
        };
        for _ in 0..50 {
            round(&mut tap);
        }
        let n = allocations(|| {
            for _ in 0..FRAMES / batch {
                round(&mut tap);
            }
        });
        assert_eq!(n, 0, "the tap allocated per frame");
        if engine == IoEngine::Uring {
            let (batches, enters) = tap.uring_stats().expect("the uring engine");
            assert_eq!(batches, enters, "one io_uring_enter per batch");
        }
    })
    .join()
    .expect("the tap test thread");
}
