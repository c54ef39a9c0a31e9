//! `MSG_ZEROCOPY` on a TCP or UDP socket: turning it on, sending with it,
//! and reading the kernel's notifications from the error queue
//! (Documentation/networking/msg_zerocopy.rst).
//!
//! Each successful `MSG_ZEROCOPY` send takes the next id of the socket's
//! u32 counter. The kernel later queues a `sock_extended_err` with
//! `ee_origin == SO_EE_ORIGIN_ZEROCOPY` saying that the sends with ids
//! `ee_info..=ee_data` no longer reference their pages.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::attachment::Completion;

/// `SO_ZEROCOPY` from `<asm-generic/socket.h>`.
const SO_ZEROCOPY: libc::c_int = 60;
/// `SO_EE_ORIGIN_ZEROCOPY` from `<linux/errqueue.h>`.
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
/// `SO_EE_CODE_ZEROCOPY_COPIED` from `<linux/errqueue.h>`.
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// Turns `SO_ZEROCOPY` on. Fails with EOPNOTSUPP on sockets that cannot
/// lend pages (anything but TCP, UDP, RDS and vsock).
pub fn enable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is a socket borrowed for this call; the option value
    // is a c_int on our stack whose size we pass.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sendmsg` of the memory `iov` describes, never blocking; with
/// `lend`, the pages are lent to the kernel (`MSG_ZEROCOPY`).
///
/// # Safety
/// Every iovec must describe mapped memory. With `lend`, that memory must
/// stay mapped (the caller keeps its mapping alive) until the kernel's
/// notification for this send arrives: the kernel pins the pages, but the
/// caller must not hand them back to their owner before then.
pub unsafe fn send(fd: BorrowedFd<'_>, iov: &[libc::iovec], lend: bool) -> io::Result<usize> {
    let flags = if lend { libc::MSG_ZEROCOPY } else { 0 };
    // SAFETY: `send_flags` asks what `send` does (mapped iovecs, kept
    // until the notification when lent), which our caller guarantees.
    unsafe { send_flags(fd, iov, flags) }
}

/// [`send`] with extra `sendmsg` flags (`MSG_ZEROCOPY`, `MSG_MORE`).
///
/// # Safety
/// As for [`send`]; with `MSG_ZEROCOPY` in `flags` the memory is lent.
pub unsafe fn send_flags(
    fd: BorrowedFd<'_>,
    iov: &[libc::iovec],
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    let flags = flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: `fd` is a socket borrowed for this call; `msg` points at
    // `iov`, which the caller guarantees describes mapped memory; sendmsg
    // only reads it (and, with MSG_ZEROCOPY, pins its pages).
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Reads every queued notification (until EAGAIN) and appends the
/// zero-copy ones to `out`. Other error-queue entries (ICMP errors) are
/// skipped: the socket reports those through its ordinary calls.
pub fn reap(fd: BorrowedFd<'_>, out: &mut Vec<Completion>) -> io::Result<()> {
    loop {
        // Room for one cmsg carrying a sock_extended_err plus its offender
        // address.
        let mut control = [0u64; 16];
        // SAFETY: an all-zero msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control);
        // SAFETY: `fd` is a socket borrowed for this call; `msg` has no
        // iovecs and a control buffer on our stack of the size given.
        // MSG_ERRQUEUE never blocks.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            return Err(e);
        }
        // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR walk
        // only inside `control`, whose length the kernel set in
        // msg_controllen.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: a non-null cmsg from CMSG_FIRSTHDR/NXTHDR lies inside
            // `control`.
            let c = unsafe { &*cmsg };
            let recverr = (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
            if recverr {
                // SAFETY: an IP(V6)_RECVERR cmsg carries a sock_extended_err;
                // read_unaligned because cmsg data has no alignment promise
                // for it.
                let ee: libc::sock_extended_err =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
                if ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY && ee.ee_errno == 0 {
                    out.push(Completion {
                        first: ee.ee_info,
                        last: ee.ee_data,
                        copied: ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0,
                    });
                }
            }
            // SAFETY: as above; NXTHDR returns null past the end.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
    }
}
