//! The frame types at the attachment boundary: a guest TX frame and the
//! guest RX buffers a frame is received into. Both are borrowed from the
//! guest-memory snapshot the datapath holds, so an attachment can never
//! keep a pointer into guest memory past the call it was handed one in.
//!
//! Both are built by an `unsafe` constructor whose contract the datapath's
//! descriptor walker (`backend/src/iovec.rs`, the one place that turns
//! descriptors into iovecs) meets; everything after construction is safe.
//! This is firecracker's `IoVecBuffer` pattern.

use std::marker::PhantomData;

use crate::vnet_hdr::VnetHdr;
use crate::vxlan::csum::{Csum, PayloadSum};

/// One guest TX frame: its virtio-net header, already validated and
/// normalised (a copy in zcnet's memory, so the guest cannot change it
/// after the check), and the iovecs of the frame after the header, in
/// guest memory.
///
/// The iovec storage has one spare slot in front, so an attachment can put
/// a header of its own before the frame ([`with_header`](Self::with_header))
/// without copying or allocating.
pub struct TxFrame<'a> {
    hdr: VnetHdr,
    /// `iov[0]` is the spare slot; `iov[1..]` the frame.
    iov: &'a mut [libc::iovec],
    len: usize,
}

// SAFETY: the iovecs are plain addresses into guest memory, which every
// thread of the daemon maps anyway; a frame is used by one thread at a
// time (it is borrowed mutably) and only within the borrow of the memory
// snapshot that keeps the mapping alive.
unsafe impl Send for TxFrame<'_> {}

impl<'a> TxFrame<'a> {
    /// A frame of the bytes `iov[1..]` describes, behind header `hdr`.
    /// `iov[0]` is overwritten by [`with_header`](Self::with_header).
    ///
    /// # Safety
    /// Every iovec in `iov[1..]` must describe memory that stays mapped and
    /// readable for `'a` (the caller holds the guest-memory snapshot it was
    /// bounds-checked against for at least that long). The memory may be
    /// written concurrently by the guest, which owns it; no Rust reference
    /// may point into it.
    pub unsafe fn new(hdr: VnetHdr, iov: &'a mut [libc::iovec]) -> Self {
        assert!(!iov.is_empty(), "a TX frame needs its spare header slot");
        let len = iov[1..].iter().map(|v| v.iov_len).sum();
        TxFrame { hdr, iov, len }
    }

    /// The validated, normalised virtio-net header.
    pub fn hdr(&self) -> &VnetHdr {
        &self.hdr
    }

    /// Bytes of the frame, without the virtio-net header.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame has no bytes (never, for a validated frame).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame's iovecs (guest memory), for a system call.
    pub fn payload(&self) -> &[libc::iovec] {
        &self.iov[1..]
    }

    /// `header` followed by the frame, for a system call. `header` lives
    /// in zcnet's memory; the borrow keeps it alive while the iovecs are
    /// used.
    pub fn with_header<'b>(&'b mut self, header: &'b [u8]) -> &'b [libc::iovec] {
        self.iov[0] = libc::iovec {
            iov_base: header.as_ptr() as *mut libc::c_void,
            iov_len: header.len(),
        };
        self.iov
    }

    /// Copies up to `out.len()` bytes from the start of the frame into
    /// `out` (volatile reads: the guest may be writing them); returns how
    /// many were copied.
    pub fn read_prefix(&self, out: &mut [u8]) -> usize {
        self.read_at(0, out)
    }

    /// Copies up to `out.len()` bytes from byte `offset` of the frame on
    /// into `out` (volatile reads); returns how many were copied.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> usize {
        read_volatile_at(self.payload(), offset, out)
    }

    /// The frame's iovecs from byte `skip` on, at most `take` bytes,
    /// appended to `out` (which the caller reuses: no allocation once it
    /// has grown).
    pub fn slice_into(&self, skip: usize, take: usize, out: &mut Vec<libc::iovec>) {
        slice_iovecs(self.payload(), skip, take, out);
    }
}

/// Sums of the frame's bytes for checksum offload, read from guest memory
/// (volatile reads, a chunk at a time through a buffer on the stack). The
/// guest may change the bytes meanwhile: that spoils only its own frame's
/// checksum (see `vxlan::segment`).
impl PayloadSum for TxFrame<'_> {
    fn sum(&self, offset: usize, len: usize) -> u32 {
        let mut chunk = [0u8; 2048];
        let mut c = Csum::new();
        let mut at = offset;
        let end = offset.saturating_add(len).min(self.len);
        while at < end {
            let n = (end - at).min(chunk.len());
            let got = self.read_at(at, &mut chunk[..n]);
            c.add(&chunk[..got]);
            if got < n {
                break;
            }
            at += n;
        }
        u32::from(c.fold())
    }
}

/// The guest's RX buffers for one frame: device-writable guest memory,
/// then (optionally) overflow room owned by the datapath, which catches
/// the part of a frame larger than what the guest posted.
pub struct RxBuffers<'a> {
    iov: &'a mut [libc::iovec],
    /// Bytes of guest memory at the front of `iov`.
    guest_len: usize,
    _mem: PhantomData<&'a mut [u8]>,
}

// SAFETY: as for `TxFrame`: addresses into memory the whole daemon maps,
// used by one thread at a time within the borrow that keeps them mapped.
unsafe impl Send for RxBuffers<'_> {}

impl<'a> RxBuffers<'a> {
    /// Buffers made of the memory `iov` describes, of which the first
    /// `guest_len` bytes are the guest's.
    ///
    /// # Safety
    /// Every iovec must describe memory that stays mapped and writable for
    /// `'a` and that no Rust reference points into while the buffers are
    /// used (the guest's RX buffers are device-writable: the guest does not
    /// touch them until the used ring returns them).
    pub unsafe fn new(iov: &'a mut [libc::iovec], guest_len: usize) -> Self {
        RxBuffers {
            iov,
            guest_len,
            _mem: PhantomData,
        }
    }

    /// Bytes of guest buffer.
    pub fn guest_len(&self) -> usize {
        self.guest_len
    }

    /// Bytes of room in all, overflow included.
    pub fn capacity(&self) -> usize {
        self.iov.iter().map(|v| v.iov_len).sum()
    }

    /// The iovecs, for `readv`/`recvmsg` into them.
    pub fn iov(&mut self) -> &[libc::iovec] {
        self.iov
    }

    /// The iovecs past the first `skip` bytes, for a receive that leaves
    /// a prefix (the virtio-net header) to the caller. The buffers keep
    /// only those bytes afterwards, and the iovec storage they were built
    /// on is changed: whoever built them builds them anew for the next
    /// receive (as the datapath does for every read).
    pub fn skip(&mut self, skip: usize) -> &[libc::iovec] {
        let mut left = skip;
        let mut first = 0;
        while first < self.iov.len() && left >= self.iov[first].iov_len {
            left -= self.iov[first].iov_len;
            first += 1;
        }
        if first < self.iov.len() {
            let v = &mut self.iov[first];
            // Pointer arithmetic only: `left < iov_len`, so the result
            // stays inside the described range.
            v.iov_base = v.iov_base.wrapping_byte_add(left);
            v.iov_len -= left;
        }
        self.guest_len = self.guest_len.saturating_sub(skip);
        let iov = std::mem::take(&mut self.iov);
        self.iov = &mut iov[first..];
        self.iov
    }

    /// Writes `bytes` at byte `offset` of the buffers (overflow included).
    /// Returns false, writing nothing, if they are too short.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> bool {
        if offset.saturating_add(bytes.len()) > self.capacity() {
            return false;
        }
        let mut at = offset;
        let mut rest = bytes;
        for v in self.iov.iter() {
            if rest.is_empty() {
                break;
            }
            if at >= v.iov_len {
                at -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - at).min(rest.len());
            // SAFETY: the constructor's contract: `v` is mapped, writable
            // and unaliased for `'a`; `at + n <= iov_len`; `rest` is in
            // zcnet's memory, so the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(rest.as_ptr(), v.iov_base.cast::<u8>().add(at), n)
            };
            rest = &rest[n..];
            at = 0;
        }
        true
    }

    /// Copies `out.len()` bytes from byte `offset` of the buffers (overflow
    /// included) into `out`, with volatile reads: what a receive just put
    /// there. Returns false, copying nothing, if the buffers are shorter.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset.saturating_add(out.len()) > self.capacity() {
            return false;
        }
        // The constructor's contract makes every range mapped for `'a`;
        // writable memory is readable.
        read_volatile_at(self.iov, offset, out) == out.len()
    }

    /// Fills the first `len` bytes with zeros (a header the peer did not
    /// send). Returns false, writing nothing, if the buffers are shorter.
    pub fn zero_prefix(&mut self, len: usize) -> bool {
        const ZEROS: [u8; 64] = [0; 64];
        if len > self.capacity() {
            return false;
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len());
            self.write_at(done, &ZEROS[..n]);
            done += n;
        }
        true
    }
}

/// Copies up to `out.len()` bytes from byte `offset` of the memory `iov`
/// describes; returns how many were copied.
///
/// `iov` must come from a `TxFrame` or `RxBuffers`, whose constructors'
/// contracts keep every range mapped and readable while they are borrowed
/// (as they are for this call).
fn read_volatile_at(iov: &[libc::iovec], mut offset: usize, out: &mut [u8]) -> usize {
    let mut done = 0;
    for v in iov {
        if done == out.len() {
            break;
        }
        if offset >= v.iov_len {
            offset -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - offset).min(out.len() - done);
        // SAFETY: the range `offset..offset + n` lies inside `v`
        // (`offset < iov_len`, `n <= iov_len - offset`), which the callers'
        // contracts keep mapped and readable for this call.
        unsafe {
            copy_volatile(
                v.iov_base.cast::<u8>().add(offset),
                &mut out[done..done + n],
            )
        };
        done += n;
        offset = 0;
    }
    done
}

/// Copies `dst.len()` bytes from `src` with volatile reads: aligned 8-byte
/// loads for the bulk, single bytes at the ends. Volatile loads form no
/// Rust reference to memory the guest may be writing, and are never
/// elided or merged by the compiler.
///
/// # Safety
/// `src..src + dst.len()` must be mapped and readable for the call, and
/// must not overlap `dst`.
unsafe fn copy_volatile(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let head = src.align_offset(8).min(len);
    let mut i = 0;
    while i < head {
        // SAFETY: `i < len`: inside the readable range (this fn's contract).
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    while i + 8 <= len {
        // SAFETY: `src + i` is 8-byte aligned (`head` aligned it and each
        // step adds 8) and `i + 8 <= len` keeps the load in range.
        let w = unsafe { std::ptr::read_volatile(src.add(i).cast::<u64>()) };
        dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        i += 8;
    }
    while i < len {
        // SAFETY: `i < len`: inside the readable range.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// Appends to `out` the iovecs of `iov` past its first `skip` bytes, at
/// most `take` bytes of them.
pub fn slice_iovecs(
    iov: &[libc::iovec],
    mut skip: usize,
    mut take: usize,
    out: &mut Vec<libc::iovec>,
) {
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
}

/// Total bytes `iov` describes.
pub fn iov_len(iov: &[libc::iovec]) -> usize {
    iov.iter().map(|v| v.iov_len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn a_tx_frame_reads_and_slices_across_iovecs() {
        let (mut a, mut b) = (*b"hello", *b" world");
        let mut v = [
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            iov(&mut a),
            iov(&mut b),
        ];
        // SAFETY: the iovecs describe the local arrays, alive and not
        // otherwise borrowed for the frame's life.
        let mut f = unsafe { TxFrame::new(VnetHdr::default(), &mut v) };
        assert_eq!(f.len(), 11);
        let mut out = [0u8; 11];
        assert_eq!(f.read_prefix(&mut out), 11);
        assert_eq!(&out, b"hello world");
        let mut mid = [0u8; 5];
        assert_eq!(f.read_at(3, &mut mid), 5);
        assert_eq!(&mid, b"lo wo");
        assert_eq!(f.read_at(9, &mut mid), 2, "only what is left");
        assert_eq!(&mid[..2], b"ld");
        let mut s = Vec::new();
        f.slice_into(3, 4, &mut s);
        assert_eq!(
            s.iter().map(|v| v.iov_len).collect::<Vec<_>>(),
            vec![2, 2],
            "lo + ' w'"
        );
        let hdr = [9u8; 12];
        let all = f.with_header(&hdr);
        assert_eq!(iov_len(all), 23);
        assert_eq!(all[0].iov_base as *const u8, hdr.as_ptr());
    }

    #[test]
    fn reads_at_any_offset_match_the_bytes_word_by_word_or_not() {
        let mut a: Vec<u8> = (0..37u8).collect();
        let mut b: Vec<u8> = (100..200u8).collect();
        let mut c = vec![7u8; 5];
        let all: Vec<u8> = [&a[..], &b[..], &c[..]].concat();
        let mut v = [iov(&mut []), iov(&mut a), iov(&mut b), iov(&mut c)];
        // SAFETY: the iovecs describe the local vectors, alive and not
        // otherwise borrowed for the frame's life.
        let f = unsafe { TxFrame::new(VnetHdr::default(), &mut v) };
        for skip in [0, 1, 8, 36, 37, 45, 136, 141, 142] {
            for len in [0, 1, 7, 8, 9, 64, 200] {
                let mut out = vec![0u8; len];
                let n = f.read_at(skip, &mut out);
                let want = &all[skip.min(all.len())..(skip + len).min(all.len())];
                assert_eq!(&out[..n], want, "skip {skip}, len {len}");
            }
        }
    }

    #[test]
    fn rx_buffers_write_skip_and_refuse_overruns() {
        let (mut a, mut b, mut over) = ([0u8; 4], [0u8; 8], [0u8; 4]);
        let mut v = [iov(&mut a), iov(&mut b), iov(&mut over)];
        {
            // SAFETY: the iovecs describe the local arrays, alive and not
            // otherwise borrowed while `bufs` lives (this block).
            let mut bufs = unsafe { RxBuffers::new(&mut v, 12) };
            assert_eq!((bufs.guest_len(), bufs.capacity()), (12, 16));
            assert!(bufs.write_at(2, &[1, 2, 3, 4]));
            assert!(!bufs.write_at(14, &[1, 2, 3]), "past the end");
            assert!(bufs.zero_prefix(3));
            let rest = bufs.skip(6);
            assert_eq!(iov_len(rest), 10);
            assert_eq!(bufs.guest_len(), 6);
            assert!(bufs.write_at(0, &[7]));
        }
        assert_eq!(a, [0, 0, 0, 2]);
        assert_eq!(b[..3], [3, 4, 7]);
    }

    #[test]
    fn rx_buffers_read_back_what_was_written_across_iovecs() {
        let (mut a, mut b) = ([0u8; 5], [0u8; 30]);
        let mut v = [iov(&mut a), iov(&mut b)];
        // SAFETY: the iovecs describe the local arrays, alive and not
        // otherwise borrowed while `bufs` lives.
        let mut bufs = unsafe { RxBuffers::new(&mut v, 35) };
        let bytes: Vec<u8> = (1..=20).collect();
        assert!(bufs.write_at(3, &bytes));
        let mut out = [0u8; 20];
        assert!(bufs.read_at(3, &mut out));
        assert_eq!(&out[..], &bytes[..]);
        assert!(!bufs.read_at(20, &mut out), "past the end");
    }

    #[test]
    fn frame_sums_match_a_slice_at_every_offset_and_alignment() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        // Odd-sized pieces at odd addresses, so the aligned loads and the
        // byte ends of `copy_volatile` are all used.
        let mut store = data.clone();
        let (p1, rest) = store.split_at_mut(1);
        let (p2, rest) = rest.split_at_mut(1021);
        let (p3, p4) = rest.split_at_mut(7);
        let mut v = [
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            iov(p1),
            iov(p2),
            iov(p3),
            iov(p4),
        ];
        // SAFETY: the iovecs describe `store`, alive and not otherwise
        // borrowed for the frame's life.
        let f = unsafe { TxFrame::new(VnetHdr::default(), &mut v) };
        for (offset, len) in [
            (0, 3000),
            (1, 2999),
            (3, 17),
            (1020, 12),
            (2990, 50),
            (5000, 4),
        ] {
            assert_eq!(
                f.sum(offset, len),
                data[..].sum(offset, len),
                "{offset}+{len}"
            );
        }
        let mut out = [0u8; 40];
        assert_eq!(f.read_at(1015, &mut out), 40);
        assert_eq!(&out[..], &data[1015..1055]);
    }
}
