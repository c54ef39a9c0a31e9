//! The physical limits: a tap of the same kind zcnet runs on, opened by the
//! bench itself (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE`, a
//! 12-byte header, the offloads a guest with GUEST_CSUM and GUEST_TSO4/6
//! gets), and one thread per queue that writes the workload's frames as
//! fast as the kernel takes them: one `writev` per frame, or 64 writes per
//! `io_uring_enter` on a registered fd (not linked: the fastest a batched
//! writer can go); or reads them with `readv`. And a plain tap (no vnet
//! header, one queue) written one frame per `writev`, the kind a simple
//! user-space writer uses.
//! The taps are opened by zcnet's own tap module (`zcnet_tap::Tap`), the
//! one place in the project that speaks to `/dev/net/tun`.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{opcode, types, IoUring};
use zcnet_harness::driver::Counters;
use zcnet_tap::{Offloads, Tap};

use zcnet_harness::guest::HDR_LEN;
use zcnet_harness::netns::NetNs;

/// What zcnet sets for a guest that negotiated GUEST_CSUM, GUEST_TSO4 and
/// GUEST_TSO6, as the fake guest does.
const OFFLOADS: Offloads = Offloads {
    csum: true,
    tso4: true,
    tso6: true,
    tso_ecn: false,
    ufo: false,
    uso4: false,
    uso6: false,
};
/// How long a reader or writer waits for its fd before it looks at the
/// stop flag again.
const POLL_MS: libc::c_int = 50;

/// The queues of a tap in a namespace, opened with zcnet's own tap module
/// (so the flags are the same); the device goes away with the last fd (or
/// with the namespace).
pub struct RawTap {
    queues: Vec<Tap>,
}

impl RawTap {
    /// Creates tap `name` in `ns` with `queues` queues.
    pub fn create(ns: &NetNs, name: &str, queues: usize) -> io::Result<RawTap> {
        let name = name.to_owned();
        // The device is created in the namespace of the thread that
        // attaches the first queue.
        let queues = ns.enter(move || -> io::Result<Vec<Tap>> {
            let taps = Tap::open_queues(&name, queues).map_err(io::Error::other)?;
            for t in &taps {
                t.set_vnet_hdr_len(HDR_LEN)?;
                t.set_offloads(OFFLOADS)?;
            }
            Ok(taps)
        })?;
        Ok(RawTap { queues })
    }

    /// Creates a plain tap `name` in `ns`: one queue, no vnet header.
    pub fn create_plain(ns: &NetNs, name: &str) -> io::Result<RawTap> {
        let name = name.to_owned();
        let tap = ns.enter(move || Tap::open_plain(&name).map_err(io::Error::other))?;
        Ok(RawTap { queues: vec![tap] })
    }

    pub fn queue(&self, q: usize) -> &Tap {
        &self.queues[q]
    }
}

/// Waits until `fd` is ready for `events` or the poll interval passes.
fn wait(fd: &Tap, events: libc::c_short) {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd on the stack and the count is 1; the
    // fd stays open because `fd` is borrowed for the call.
    unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
}

/// Writes the packets of `pool` in turn (each a `hdr_len`-byte header and
/// the frame, one iovec, as zcnet writes a one-descriptor chain) to the
/// queue until `stop`. The pool has as many copies of the frame as the fake
/// guest's ring has buffers, so both read the frame from memory alike.
pub fn write_loop(
    queue: &Tap,
    pool: &[Vec<u8>],
    hdr_len: usize,
    counters: &Counters,
    stop: &AtomicBool,
) -> io::Result<()> {
    let frame_len = (pool[0].len() - hdr_len) as u64;
    let iovs: Vec<libc::iovec> = pool
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut sent = 0u64;
        for _ in 0..64 {
            // The iovec describes a packet of `pool`, borrowed for the
            // whole loop and only read by writev.
            if let Err(e) = queue.writev(&iovs[next..next + 1]) {
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                wait(queue, libc::POLLOUT);
                break;
            }
            sent += 1;
            next = (next + 1) % iovs.len();
        }
        counters.add(sent, sent * frame_len);
    }
    Ok(())
}

/// Writes per `io_uring_enter`.
const URING_BATCH: usize = 64;

/// As [`write_loop`] (12-byte header), but `URING_BATCH` writes per
/// `io_uring_enter`, on the queue's fd registered with the ring, every
/// completion reaped before the next batch. The writes are not linked:
/// this is the fastest a batched writer can go.
pub fn uring_write_loop(
    queue: &Tap,
    pool: &[Vec<u8>],
    counters: &Counters,
    stop: &AtomicBool,
) -> io::Result<()> {
    let frame_len = (pool[0].len() - HDR_LEN) as u64;
    let iovs: Vec<libc::iovec> = pool
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(URING_BATCH as u32)?;
    ring.submitter()
        .register_files(&[queue.as_fd().as_raw_fd()])?;
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        {
            let mut sq = ring.submission();
            for i in 0..URING_BATCH {
                let iov = &iovs[(next + i) % iovs.len()];
                let entry = opcode::Writev::new(types::Fixed(0), iov, 1)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the entry points at an iovec of `iovs`, which
                // describes a packet of `pool`; both are borrowed for the
                // whole loop, and every entry is reaped below before the
                // next batch (or the return). Fixed file 0 is the queue's
                // fd, registered above; the kernel holds its own
                // reference, and `queue` outlives the ring anyway.
                unsafe { sq.push(&entry) }.map_err(|_| io::Error::other("SQ full"))?;
            }
        }
        let mut reaped = 0;
        let mut sent = 0u64;
        while reaped < URING_BATCH {
            match ring.submit_and_wait(URING_BATCH - reaped) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            for cqe in ring.completion() {
                reaped += 1;
                match cqe.result() {
                    r if r >= 0 => sent += 1,
                    r if r == -libc::EAGAIN => {}
                    r => return Err(io::Error::from_raw_os_error(-r)),
                }
            }
        }
        next = (next + URING_BATCH) % iovs.len();
        counters.add(sent, sent * frame_len);
    }
    Ok(())
}

/// Reads frames from the queue into one buffer until `stop`, counting them
/// and their bytes after the header.
pub fn read_loop(queue: &Tap, counters: &Counters, stop: &AtomicBool) -> io::Result<()> {
    let mut buf = vec![0u8; HDR_LEN + (64 << 10) + 64];
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    while !stop.load(Ordering::Relaxed) {
        let (mut frames, mut bytes) = (0u64, 0u64);
        for _ in 0..64 {
            // SAFETY: the iovec describes `buf`, which this loop owns, is
            // not otherwise borrowed while the kernel writes it, and
            // outlives the call.
            let n = match unsafe { queue.readv(&iov) } {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(queue, libc::POLLIN);
                    break;
                }
                Err(e) => return Err(e),
            };
            frames += 1;
            bytes += (n as u64).saturating_sub(HDR_LEN as u64);
        }
        counters.add(frames, bytes);
    }
    Ok(())
}
