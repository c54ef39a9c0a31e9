//! The transmit side of the stream framing: one record (prefix, optional
//! virtio-net header, frame) written whole into a TCP socket, the frame
//! lent to the kernel with `MSG_ZEROCOPY` when asked.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::ids::SocketIds;
use crate::zerocopy;

/// How long a record the kernel took only part of may take to finish
/// before its rest is copied aside (see [`Outcome::Sent`]).
const FINISH_WAIT: Duration = Duration::from_millis(20);

/// The iovecs of `iov` past its first `skip` bytes, and of those at most
/// `take` bytes.
pub(super) fn slice(iov: &[libc::iovec], mut skip: usize, mut take: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(iov.len());
    for v in iov {
        if take == 0 {
            break;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        let len = (v.iov_len - skip).min(take);
        out.push(libc::iovec {
            // Pointer arithmetic only: `skip < iov_len`, so the result
            // stays inside the described range.
            iov_base: v.iov_base.wrapping_byte_add(skip),
            iov_len: len,
        });
        take -= len;
        skip = 0;
    }
    out
}

pub(super) fn total(iov: &[libc::iovec]) -> usize {
    iov.iter().map(|v| v.iov_len).sum()
}

/// What became of a record.
#[derive(Debug)]
pub(super) enum Outcome {
    /// All of it is in the socket, except `tail`: the kernel took only
    /// part of the record and no more within [`FINISH_WAIT`], so its rest
    /// was copied here, to be written before anything else. `ids` are the
    /// engine ids the `MSG_ZEROCOPY` calls took (first, last), if any.
    Sent {
        ids: Option<(u32, u32)>,
        tail: Vec<u8>,
    },
    /// Nothing was written: the socket is full.
    WouldBlock,
    /// The socket failed (the connection is gone). `ids` were taken
    /// before it did, so those pages are lent all the same.
    Failed {
        err: io::Error,
        ids: Option<(u32, u32)>,
    },
}

/// Writes the record `head` + `frame` into `fd`. `head` (prefix and
/// header) is always copied; `frame` is lent when `lend`, which puts the
/// head in a call of its own with `MSG_MORE`: with `MSG_ZEROCOPY` every
/// page of the call is pinned until the notification, and the head is
/// partly on our stack.
///
/// Each successful `MSG_ZEROCOPY` call takes the next id from `ids`; a
/// failed or zero-length call takes none. ENOBUFS (optmem or
/// RLIMIT_MEMLOCK exhausted) turns lending off for the rest of the record.
///
/// # Safety
/// Every iovec must describe mapped memory. With `lend`, the frame's
/// memory must stay mapped, and not go back to its owner, until the
/// kernel releases the ids returned.
pub(super) unsafe fn record(
    fd: BorrowedFd<'_>,
    head: &[libc::iovec],
    frame: &[libc::iovec],
    mut lend: bool,
    ids: &mut SocketIds,
) -> Outcome {
    let joined;
    let parts: [(&[libc::iovec], bool); 2] = if lend {
        [(head, false), (frame, true)]
    } else {
        joined = [head, frame].concat();
        [(&joined, false), (&[], false)]
    };
    let mut taken: Option<(u32, u32)> = None;
    let mut sent_any = false;
    let mut deadline = None;
    for (i, &(iov, lendable)) in parts.iter().enumerate() {
        let mut done = 0;
        let len = total(iov);
        while done < len {
            let rest = slice(iov, done, usize::MAX);
            let zc = lend && lendable && ids.can_take();
            let flags = if zc {
                libc::MSG_ZEROCOPY
            } else if i == 0 && lend {
                libc::MSG_MORE
            } else {
                0
            };
            // SAFETY: `rest` lies inside the caller's iovecs (mapped,
            // per the contract). With MSG_ZEROCOPY the kernel reads the
            // frame's pages after this returns, until it releases the id
            // taken below; the caller keeps them mapped and withheld from
            // the guest until then. The guest may still rewrite them
            // meanwhile (it owns them): that corrupts only its own frame
            // on the wire, since no host state depends on those bytes.
            let full = match unsafe { zerocopy::send_flags(fd, &rest, flags) } {
                Ok(n) if n > 0 => {
                    if zc {
                        let id = ids.take();
                        taken = Some((taken.map_or(id, |t| t.0), id));
                    }
                    done += n;
                    sent_any = true;
                    false
                }
                Err(e) if zc && e.raw_os_error() == Some(libc::ENOBUFS) => {
                    lend = false;
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(err) => return Outcome::Failed { err, ids: taken },
            };
            if full {
                if !sent_any {
                    return Outcome::WouldBlock;
                }
                // Never leave half a record: wait (briefly) for room.
                let now = Instant::now();
                let until = *deadline.get_or_insert(now + FINISH_WAIT);
                if now >= until {
                    return finish_later(&parts[i..], done, taken);
                }
                let ms = (until - now).as_millis().clamp(1, 1000) as i32;
                let mut pfd = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(
                    &mut pfd,
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
                );
            }
        }
    }
    Outcome::Sent {
        ids: taken,
        tail: Vec::new(),
    }
}

/// Copies what is left of the record (the first part from byte `done`,
/// then the others whole) into a buffer of its own.
fn finish_later(parts: &[(&[libc::iovec], bool)], done: usize, ids: Option<(u32, u32)>) -> Outcome {
    let mut tail = Vec::new();
    for (i, (iov, _)) in parts.iter().enumerate() {
        let skip = if i == 0 { done } else { 0 };
        // SAFETY: the iovecs lie inside those `record` was given, which
        // its caller guarantees are mapped; nothing in zcnet writes to
        // them during the call.
        unsafe { gather(&slice(iov, skip, usize::MAX), &mut tail) };
    }
    Outcome::Sent { ids, tail }
}

/// Appends the bytes `iov` describes to `out`.
///
/// # Safety
/// Every iovec must describe mapped, readable memory not written during
/// the call through any Rust reference.
unsafe fn gather(iov: &[libc::iovec], out: &mut Vec<u8>) {
    for v in iov {
        // SAFETY: the caller guarantees the range is mapped and readable.
        let bytes = unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) };
        out.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(buf: &[u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        }
    }

    #[test]
    fn slices_cut_across_iovecs() {
        let (a, b, c) = ([1u8; 3], [2u8; 5], [3u8; 4]);
        let v = [iov(&a), iov(&b), iov(&c)];
        let lens = |s: &[libc::iovec]| s.iter().map(|v| v.iov_len).collect::<Vec<_>>();
        assert_eq!(lens(&slice(&v, 0, usize::MAX)), vec![3, 5, 4]);
        assert_eq!(lens(&slice(&v, 4, usize::MAX)), vec![4, 4]);
        assert_eq!(lens(&slice(&v, 0, 10)), vec![3, 5, 2]);
        assert_eq!(lens(&slice(&v, 2, 2)), vec![1, 1]);
        assert!(slice(&v, 12, usize::MAX).is_empty());
        let mut out = Vec::new();
        // SAFETY: the iovecs describe the local arrays above.
        unsafe { gather(&slice(&v, 2, 7), &mut out) };
        assert_eq!(out, vec![1, 2, 2, 2, 2, 2, 3]);
    }
}
