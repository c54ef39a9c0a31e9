//! The physical limit: a tap of the same kind zcnet runs on, opened by the
//! bench itself (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE`, a
//! 12-byte header, the offloads a guest with GUEST_CSUM and GUEST_TSO4/6
//! gets), and one thread per queue that writes the workload's frames with
//! `writev`, or reads them with `readv`, as fast as the kernel takes them.
//! This is the only code in the bench that speaks to `/dev/net/tun`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::harness::guest::HDR_LEN;
use crate::harness::netns::NetNs;
use crate::measure::Counters;

// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`: what zcnet sets for a guest that
/// negotiated GUEST_CSUM, GUEST_TSO4 and GUEST_TSO6, as the fake guest does.
const OFFLOADS: libc::c_ulong = 0x01 | 0x02 | 0x04;
/// How long a reader or writer waits for its fd before it looks at the
/// stop flag again.
const POLL_MS: libc::c_int = 50;

/// The queues of a tap in a namespace; the device goes away with the last
/// fd (or with the namespace).
pub struct RawTap {
    queues: Vec<File>,
}

impl RawTap {
    /// Creates tap `name` in `ns` with `queues` queues.
    pub fn create(ns: &NetNs, name: &str, queues: usize) -> io::Result<RawTap> {
        let name = name.to_owned();
        // The device is created in the namespace of the thread that
        // attaches the first queue.
        let queues = ns.enter(move || {
            (0..queues)
                .map(|_| attach(&name))
                .collect::<io::Result<Vec<File>>>()
        })?;
        Ok(RawTap { queues })
    }

    pub fn queue(&self, q: usize) -> &File {
        &self.queues[q]
    }
}

fn attach(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    // SAFETY: `file` is an open /dev/net/tun fd owned here; TUNSETIFF reads
    // and writes one `struct ifreq`, and `ifr` is a live, exclusively
    // borrowed ifreq for the whole call.
    check(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) })?;
    let hdr_len = HDR_LEN as libc::c_int;
    // SAFETY: the fd is the tap queue attached above; TUNSETVNETHDRSZ reads
    // one int through the pointer, which points at a live local.
    check(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) })?;
    // SAFETY: the fd is the tap queue attached above; TUNSETOFFLOAD takes
    // its argument by value, not through a pointer.
    check(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, OFFLOADS) })?;
    Ok(file)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is ready for `events` or the poll interval passes.
fn wait(fd: &File, events: libc::c_short) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd on the stack and the count is 1; the
    // fd stays open because `fd` is borrowed for the call.
    unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
}

/// Writes the packets of `pool` in turn (each a 12-byte header and the
/// frame, one iovec, as zcnet writes a one-descriptor chain) to the queue
/// until `stop`. The pool has as many copies of the frame as the fake
/// guest's ring has buffers, so both read the frame from memory alike.
pub fn write_loop(
    queue: &File,
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
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut sent = 0u64;
        for _ in 0..64 {
            // SAFETY: the fd is a tap queue borrowed for the call; the
            // iovec describes a packet of `pool`, which is borrowed for the
            // whole loop and only read by writev.
            let n = unsafe { libc::writev(queue.as_raw_fd(), &iovs[next], 1) };
            if n < 0 {
                let e = io::Error::last_os_error();
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

/// Reads frames from the queue into one buffer until `stop`, counting them
/// and their bytes after the header.
pub fn read_loop(queue: &File, counters: &Counters, stop: &AtomicBool) -> io::Result<()> {
    let mut buf = vec![0u8; HDR_LEN + (64 << 10) + 64];
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    while !stop.load(Ordering::Relaxed) {
        let (mut frames, mut bytes) = (0u64, 0u64);
        for _ in 0..64 {
            // SAFETY: the fd is a tap queue borrowed for the call; the
            // iovec describes `buf`, which this loop owns, is not otherwise
            // borrowed while the kernel writes it, and outlives the call.
            let n = unsafe { libc::readv(queue.as_raw_fd(), iov.as_ptr(), 1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                wait(queue, libc::POLLIN);
                break;
            }
            frames += 1;
            bytes += (n as u64).saturating_sub(HDR_LEN as u64);
        }
        counters.add(frames, bytes);
    }
    Ok(())
}
