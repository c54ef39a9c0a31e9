//! The one place where guest descriptor chains become iovecs.
//!
//! Every range is bounds-checked against the guest memory map (against the
//! region a [`MemView`] remembers, else with `get_slices`), so an iovec
//! built here always points into memory that is mapped for as long as the
//! `GuestMemoryMmap` snapshot it came from lives.
//! Callers keep that snapshot (a `GuestMemoryLoadGuard`) alive across the
//! system call that uses the iovecs; a later SET_MEM_TABLE swaps in a new
//! map but cannot unmap the old one while the guard holds it.

use std::cell::Cell;
use std::ops::Deref;

use thiserror::Error;
use virtio_queue::DescriptorChain;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use zcnet_tap::vnet_hdr::VnetHdr;
use zcnet_tap::{RxBuffers, TxFrame};

use crate::dirty_log::LogMap;

/// The guest memory map zcnet works on. It has no dirty-page bitmap of
/// vm-memory's: zcnet marks its writes in the migration log itself (see
/// [`crate::dirty_log`] for why).
pub type Mem = GuestMemoryMmap<()>;

/// The most memory segments a chain may have: the kernel's IOV_MAX
/// (1024) less the one iovec an attachment adds (a header on TX, the
/// overflow room on RX).
pub const MAX_SEGMENTS: usize = 1023;

/// Guest memory as one drain of a queue sees it: the snapshot, and the
/// region the last descriptor fell in, so the next descriptor in the same
/// region (nearly all of them) costs a range check instead of a lookup in
/// the memory map.
///
/// The remembered region belongs to the snapshot the view borrows, so it
/// can never outlive it: a view lives for one drain, and the next drain
/// (perhaps after SET_MEM_TABLE) starts with a fresh one.
pub struct MemView<'m> {
    mem: &'m Mem,
    last: Cell<Option<Span>>,
}

/// A region of the snapshot: guest addresses `start..start + len`, mapped
/// at `host..host + len` in zcnet.
#[derive(Clone, Copy)]
struct Span {
    start: u64,
    len: u64,
    host: *mut u8,
}

impl<'m> MemView<'m> {
    pub fn new(mem: &'m Mem) -> Self {
        MemView {
            mem,
            last: Cell::new(None),
        }
    }

    pub fn mem(&self) -> &'m Mem {
        self.mem
    }

    /// The host address of guest range `addr..addr + len` if it lies
    /// inside one region (which the bounds-checked slower path of
    /// `get_slices` would also give as one slice), or `None`.
    fn host_range(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let within = |s: &Span| {
            let offset = addr.checked_sub(s.start)?;
            let end = offset.checked_add(len as u64)?;
            // Pointer arithmetic only: `offset + len <= s.len`, so the
            // result stays inside the region's mapping.
            (end <= s.len).then(|| s.host.wrapping_add(offset as usize))
        };
        if let Some(hit) = self.last.get().as_ref().and_then(within) {
            return Some(hit);
        }
        let region = self.mem.find_region(GuestAddress(addr))?;
        let span = Span {
            start: region.start_addr().0,
            len: region.len(),
            host: region.get_host_address(MemoryRegionAddress(0)).ok()?,
        };
        self.last.set(Some(span));
        within(&span)
    }
}

/// Why a chain cannot be used. The chain goes back with length 0.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor {addr:#x}+{len} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error(
        "descriptor {addr:#x}+{len} is device-{found} in a chain that must be device-{wanted}"
    )]
    WrongDirection {
        addr: u64,
        len: u32,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("chain is broken: a loop, longer than the queue, or a bad indirect table")]
    Broken,
    #[error("chain has more than {max} descriptors, the queue size (an indirect table counts)")]
    TooManyDescriptors { max: usize },
    #[error("chain has no descriptors")]
    Empty,
    #[error("chain has more than {MAX_SEGMENTS} memory segments")]
    TooManySegments,
    #[error("chain holds {len} bytes, more than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("chain holds {len} bytes, less than the {min}-byte minimum")]
    TooShort { len: usize, min: usize },
}

/// Which way the bytes of a chain flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device-readable: a TX frame.
    Readable,
    /// Device-writable: an RX buffer.
    Writable,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Readable => "readable",
            Direction::Writable => "writable",
        }
    }
}

/// A reusable list of iovecs pointing into guest memory.
///
/// The iovecs are only valid while the memory snapshot passed to
/// [`GuestIoVecs::push_chain`] is alive; the datapath keeps both in one
/// scope and clears the list before the snapshot is dropped. What leaves
/// this module is a [`TxFrame`] or [`RxBuffers`], which borrow both.
#[derive(Default)]
pub struct GuestIoVecs {
    iov: Vec<libc::iovec>,
    /// The guest address of each iovec of a chain as built, for dirty
    /// logging of what the device writes (RX). `tx_frame` rewrites the
    /// iovecs without it: a TX frame is only read.
    gpa: Vec<u64>,
    len: usize,
    /// The snapshot the iovecs were built from (identity only).
    mem: usize,
}

// SAFETY: the raw pointers are plain addresses into guest memory, which is
// shared with the guest and every thread of the daemon anyway; the list is
// only dereferenced by the kernel during a syscall made while the memory
// snapshot is held.
unsafe impl Send for GuestIoVecs {}

impl GuestIoVecs {
    pub fn new() -> Self {
        Self {
            iov: Vec::with_capacity(64),
            gpa: Vec::with_capacity(64),
            len: 0,
            mem: 0,
        }
    }

    pub fn clear(&mut self) {
        self.iov.clear();
        self.gpa.clear();
        self.len = 0;
        self.mem = 0;
    }

    /// Total bytes described.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of iovecs.
    pub fn segments(&self) -> usize {
        self.iov.len()
    }

    /// The iovecs themselves (the fuzz target checks where they point).
    pub(crate) fn iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }

    /// Appends every descriptor of `chain`, which must all flow in
    /// `direction`, hold between `min_len` and `max_len` bytes and count at
    /// most `max_descriptors` descriptors (the queue size: virtio 1.x,
    /// 2.7.5.3.1, bounds a chain by it, indirect or not). Returns the
    /// chain's byte length. On error the list is left as it was.
    pub fn push_chain<M>(
        &mut self,
        chain: DescriptorChain<M>,
        view: &MemView<'_>,
        direction: Direction,
        min_len: usize,
        max_len: usize,
        max_descriptors: usize,
    ) -> Result<usize, ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let id = view.mem() as *const Mem as usize;
        assert!(
            self.iov.is_empty() || self.mem == id,
            "GuestIoVecs mixes two guest-memory snapshots"
        );
        self.mem = id;
        let (old_segments, old_len) = (self.iov.len(), self.len);
        let mut result = self.push_descriptors(
            chain,
            view,
            direction,
            old_len.saturating_add(max_len),
            max_descriptors,
        );
        let len = self.len - old_len;
        if result.is_ok() && len < min_len {
            result = Err(ChainError::TooShort { len, min: min_len });
        }
        if let Err(e) = result {
            self.iov.truncate(old_segments);
            self.gpa.truncate(old_segments);
            self.len = old_len;
            return Err(e);
        }
        Ok(len)
    }

    /// Drops the first `segments` iovecs, which together hold `bytes`.
    pub fn drain_front(&mut self, segments: usize, bytes: usize) {
        self.iov.drain(..segments);
        self.gpa.drain(..segments);
        self.len -= bytes;
    }

    fn push_descriptors<M>(
        &mut self,
        chain: DescriptorChain<M>,
        view: &MemView<'_>,
        direction: Direction,
        max_len: usize,
        max_descriptors: usize,
    ) -> Result<(), ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        // The chain iterator stops early, without saying why, on a loop, a
        // chain longer than the queue, or a bad indirect table. A chain is
        // whole only if its last descriptor has no NEXT flag. It bounds an
        // indirect table by the table's own length, not the queue's, so
        // the count is checked here.
        let mut last_has_next = None;
        for (count, desc) in chain.enumerate() {
            if count == max_descriptors {
                return Err(ChainError::TooManyDescriptors {
                    max: max_descriptors,
                });
            }
            last_has_next = Some(desc.has_next());
            let (addr, len) = (desc.addr().0, desc.len());
            let wanted_write = direction == Direction::Writable;
            if desc.is_write_only() != wanted_write {
                return Err(ChainError::WrongDirection {
                    addr,
                    len,
                    found: if desc.is_write_only() {
                        "writable"
                    } else {
                        "readable"
                    },
                    wanted: direction.name(),
                });
            }
            let total = self.len.saturating_add(len as usize);
            if total > max_len {
                return Err(ChainError::TooLong {
                    len: total,
                    max: max_len,
                });
            }
            if len == 0 {
                continue;
            }
            if let Some(host) = view.host_range(addr, len as usize) {
                // One region holds the whole descriptor: the same single
                // slice `get_slices` would give, without the lookup.
                if self.iov.len() == MAX_SEGMENTS {
                    return Err(ChainError::TooManySegments);
                }
                self.iov.push(libc::iovec {
                    iov_base: host.cast(),
                    iov_len: len as usize,
                });
                self.gpa.push(addr);
                self.len = total;
                continue;
            }
            let mut gpa = addr;
            for slice in view.mem().get_slices(desc.addr(), len as usize) {
                // The memory error only restates the address and length.
                let Ok(slice) = slice else {
                    return Err(ChainError::OutOfMemory { addr, len });
                };
                if self.iov.len() == MAX_SEGMENTS {
                    return Err(ChainError::TooManySegments);
                }
                self.iov.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
                self.gpa.push(gpa);
                // The slices cover the range in order; the range was
                // checked against guest memory, so this cannot overflow.
                gpa += slice.len() as u64;
            }
            self.len = total;
        }
        match last_has_next {
            None => Err(ChainError::Empty),
            Some(true) => Err(ChainError::Broken),
            Some(false) => Ok(()),
        }
    }

    /// The chain as a TX frame for an attachment: the first `hdr_len`
    /// bytes (the guest's virtio-net header, already read and validated
    /// into `hdr`) are dropped from the iovecs, and a spare slot is put in
    /// front for the attachment's own header. The frame borrows `self` and
    /// `mem`, the snapshot the iovecs were built from, so neither can go
    /// away while an attachment holds it.
    pub fn tx_frame<'a>(&'a mut self, mem: &'a Mem, hdr_len: usize, hdr: VnetHdr) -> TxFrame<'a> {
        assert!(
            self.mem == mem as *const Mem as usize,
            "a TX frame from another guest-memory snapshot"
        );
        // Drop the header's bytes: whole iovecs, then part of one.
        let mut skip = hdr_len.min(self.len);
        let mut whole = 0;
        while whole < self.iov.len() && skip >= self.iov[whole].iov_len {
            skip -= self.iov[whole].iov_len;
            whole += 1;
        }
        if whole < self.iov.len() {
            let v = &mut self.iov[whole];
            // Pointer arithmetic only: `skip < iov_len`, so the result
            // stays inside the described range.
            v.iov_base = v.iov_base.wrapping_byte_add(skip);
            v.iov_len -= skip;
        }
        // The spare slot: the last iovec the header used up, or a new one
        // in front (no allocation once the list has grown).
        let start = if whole > 0 {
            whole - 1
        } else {
            self.iov.insert(
                0,
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
            );
            0
        };
        self.len -= hdr_len.min(self.len);
        // SAFETY: every iovec past `start` was built by `push_chain` from
        // device-readable descriptors, bounds-checked against `mem` (the
        // assert above), which the frame borrows: the mapping stays in
        // place as long as the frame lives. No Rust reference points into
        // guest memory.
        unsafe { TxFrame::new(hdr, &mut self.iov[start..]) }
    }

    /// Marks in `log` the guest pages that hold bytes `start..start + len`
    /// of the described memory: what the device wrote there (RX). Bytes
    /// past the end are ignored.
    pub fn mark_written(&self, log: &LogMap, start: usize, len: usize) {
        debug_assert_eq!(
            self.gpa.len(),
            self.iov.len(),
            "iovecs rewritten by tx_frame"
        );
        let (mut skip, mut left) = (start, len);
        for (v, &gpa) in self.iov.iter().zip(&self.gpa) {
            if left == 0 {
                break;
            }
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - skip).min(left);
            log.mark(gpa + skip as u64, n as u64);
            left -= n;
            skip = 0;
        }
    }

    /// Copies up to `out.len()` bytes from the start of the described
    /// memory into `out`; returns how many were copied.
    pub fn read_prefix(&self, out: &mut [u8]) -> usize {
        let mut done = 0;
        for v in &self.iov {
            if done == out.len() {
                break;
            }
            let n = v.iov_len.min(out.len() - done);
            // SAFETY: every iovec was built from a bounds-checked
            // VolatileSlice of the memory snapshot the caller still holds,
            // so `iov_base..+n` is mapped. Volatile byte reads never form a
            // Rust reference to guest memory the guest may be writing.
            for (i, b) in out[done..done + n].iter_mut().enumerate() {
                // SAFETY: `i < n <= iov_len`, inside the mapped range above.
                *b = unsafe { std::ptr::read_volatile((v.iov_base as *const u8).add(i)) };
            }
            done += n;
        }
        done
    }

    /// Writes `bytes` at byte offset `offset` of the described memory.
    /// Returns false if the memory is shorter than `offset + bytes.len()`.
    pub fn write_at(&self, mut offset: usize, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        for v in &self.iov {
            if rest.is_empty() {
                break;
            }
            if offset >= v.iov_len {
                offset -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - offset).min(rest.len());
            for (i, b) in rest[..n].iter().enumerate() {
                // SAFETY: as in `read_prefix`, `iov_base + offset + i` lies
                // inside a mapped slice of the held snapshot (offset + i <
                // iov_len), and only device-writable iovecs are written.
                unsafe { std::ptr::write_volatile((v.iov_base as *mut u8).add(offset + i), *b) };
            }
            rest = &rest[n..];
            offset = 0;
        }
        rest.is_empty()
    }
}

/// The iovecs of one RX read: the guest's buffers, then overflow room
/// owned here. A read that reaches the overflow room carried a frame
/// larger than the guest's buffers (tun returns what it copied, not the
/// frame's length), so the frame is never delivered cut short.
pub struct ReadIoVecs {
    iov: Vec<libc::iovec>,
    overflow: Box<[u8]>,
}

// SAFETY: the raw pointers are rebuilt by `buffers` for every read and
// used only during it: the guest ones under the same rules as
// `GuestIoVecs`, the last one into `overflow`, which this struct owns.
unsafe impl Send for ReadIoVecs {}

impl ReadIoVecs {
    /// With `overflow` bytes of room after the guest's buffers.
    pub fn new(overflow: usize) -> Self {
        ReadIoVecs {
            iov: Vec::with_capacity(64),
            overflow: vec![0u8; overflow].into_boxed_slice(),
        }
    }

    /// RX buffers of the first `segments` iovecs of `guest` (`guest_len`
    /// bytes, built from `mem`), then the overflow room. They borrow
    /// `guest` and `mem`, so neither can go away while an attachment
    /// writes into them.
    ///
    /// Guest buffers that follow each other in zcnet's mapping become one
    /// iovec (a guest's mergeable RX buffers are often carved one after
    /// the other from the same pages): the bytes described are the same,
    /// in the same order, and the kernel imports fewer iovecs per read
    /// (more than 8 cost it an allocation).
    pub fn buffers<'a>(
        &'a mut self,
        guest: &'a GuestIoVecs,
        segments: usize,
        guest_len: usize,
        mem: &'a Mem,
    ) -> RxBuffers<'a> {
        assert!(
            guest.mem == mem as *const Mem as usize,
            "RX buffers from another guest-memory snapshot"
        );
        self.iov.clear();
        for v in &guest.iov[..segments] {
            match self.iov.last_mut() {
                Some(last) if last.iov_base.wrapping_byte_add(last.iov_len) == v.iov_base => {
                    last.iov_len += v.iov_len;
                }
                _ => self.iov.push(*v),
            }
        }
        self.iov.push(libc::iovec {
            iov_base: self.overflow.as_mut_ptr().cast(),
            iov_len: self.overflow.len(),
        });
        // SAFETY: the guest iovecs were built by `push_chain` from
        // device-writable descriptors, bounds-checked against `mem`, which
        // the buffers borrow (the mapping stays in place); a merged iovec
        // is the union of two such ranges that touch, so it describes
        // exactly their bytes and no others; the guest does
        // not touch a buffer it posted until the used ring returns it, and
        // no Rust reference points into guest memory. The last iovec is
        // `overflow`, owned by `self` and borrowed mutably for `'a`.
        unsafe { RxBuffers::new(&mut self.iov, guest_len) }
    }

    /// The overflow room's bytes (after a read that reached it).
    pub fn overflow(&self) -> &[u8] {
        &self.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    #[test]
    fn readable_chain_becomes_iovecs_over_guest_bytes() {
        let m = mem();
        m.write_slice(b"hello", GuestAddress(0x8000)).unwrap();
        m.write_slice(b" world", GuestAddress(0x9000)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q
            .build_desc_chain(&[desc(0x8000, 5, 0, 0), desc(0x9000, 6, 0, 0)])
            .unwrap();
        let mut iov = GuestIoVecs::new();
        assert_eq!(
            iov.push_chain(chain, &MemView::new(&m), Direction::Readable, 0, 100, 16),
            Ok(11)
        );
        let mut out = [0u8; 11];
        assert_eq!(iov.read_prefix(&mut out), 11);
        assert_eq!(&out, b"hello world");
    }

    #[test]
    fn write_only_descriptor_in_tx_chain_is_refused() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q
            .build_desc_chain(&[
                desc(0x8000, 5, 0, 0),
                desc(0x9000, 6, VRING_DESC_F_WRITE, 0),
            ])
            .unwrap();
        let mut iov = GuestIoVecs::new();
        let err = iov
            .push_chain(chain, &MemView::new(&m), Direction::Readable, 0, 100, 16)
            .unwrap_err();
        assert!(matches!(err, ChainError::WrongDirection { .. }), "{err}");
        assert_eq!((iov.len(), iov.segments()), (0, 0), "left as it was");
    }

    #[test]
    fn descriptor_outside_memory_is_refused() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q.build_desc_chain(&[desc(0xff000, 0x2000, 0, 0)]).unwrap();
        let mut iov = GuestIoVecs::new();
        assert_eq!(
            iov.push_chain(
                chain,
                &MemView::new(&m),
                Direction::Readable,
                0,
                1 << 20,
                16
            ),
            Err(ChainError::OutOfMemory {
                addr: 0xff000,
                len: 0x2000
            })
        );
    }

    #[test]
    fn looping_chain_is_refused() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 4);
        // 0 -> 1 -> 0 -> ... never ends.
        q.add_desc_chains(
            &[
                desc(0x8000, 1, VRING_DESC_F_NEXT, 1),
                desc(0x8000, 1, VRING_DESC_F_NEXT, 0),
            ],
            0,
        )
        .unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        use virtio_queue::QueueT;
        let chain = queue.pop_descriptor_chain(&m).unwrap();
        let mut iov = GuestIoVecs::new();
        assert_eq!(
            iov.push_chain(
                chain,
                &MemView::new(&m),
                Direction::Readable,
                0,
                1 << 20,
                16
            ),
            Err(ChainError::Broken)
        );
    }

    #[test]
    fn over_long_chain_is_refused() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q.build_desc_chain(&[desc(0x8000, 0x9000, 0, 0)]).unwrap();
        let mut iov = GuestIoVecs::new();
        assert!(matches!(
            iov.push_chain(chain, &MemView::new(&m), Direction::Readable, 0, 0x8000, 16),
            Err(ChainError::TooLong { .. })
        ));
    }

    #[test]
    fn short_chain_is_refused() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q.build_desc_chain(&[desc(0x8000, 8, 0, 0)]).unwrap();
        let mut iov = GuestIoVecs::new();
        assert_eq!(
            iov.push_chain(chain, &MemView::new(&m), Direction::Readable, 12, 100, 16),
            Err(ChainError::TooShort { len: 8, min: 12 })
        );
        assert_eq!(iov.segments(), 0);
    }

    /// Two regions back to back (guest 0..1 MiB and 1..2 MiB, mapped
    /// apart in zcnet), as a guest with a hole-less split looks.
    fn two_regions() -> Mem {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x10_0000), 0x10_0000),
        ])
        .unwrap()
    }

    #[test]
    fn the_region_remembered_never_stretches_a_descriptor_past_it() {
        let m = two_regions();
        m.write_slice(b"abcd", GuestAddress(0xf_fffe)).unwrap();
        m.write_slice(b"xyz", GuestAddress(0x10_8000)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let view = MemView::new(&m);
        // The first chain makes the view remember the low region; the
        // second has a descriptor across the boundary and one in the high
        // region, the third one past the end of memory.
        // (Each chain is built just before it is used: the mock writes
        // every chain from descriptor 0 on.)
        let inside = q.build_desc_chain(&[desc(0x8000, 16, 0, 0)]).unwrap();
        let mut iov = GuestIoVecs::new();
        assert_eq!(
            iov.push_chain(inside, &view, Direction::Readable, 0, 100, 16),
            Ok(16)
        );
        iov.clear();
        let across = q
            .build_desc_chain(&[desc(0xf_fffe, 4, 0, 0), desc(0x10_8000, 3, 0, 0)])
            .unwrap();
        assert_eq!(
            iov.push_chain(across, &view, Direction::Readable, 0, 100, 16),
            Ok(7)
        );
        assert_eq!(
            iov.segments(),
            3,
            "the boundary splits the first descriptor"
        );
        let mut out = [0u8; 7];
        assert_eq!(iov.read_prefix(&mut out), 7);
        assert_eq!(&out, b"abcdxyz");
        iov.clear();
        let outside = q.build_desc_chain(&[desc(0x1f_fff0, 0x20, 0, 0)]).unwrap();
        assert_eq!(
            iov.push_chain(outside, &view, Direction::Readable, 0, 100, 16),
            Err(ChainError::OutOfMemory {
                addr: 0x1f_fff0,
                len: 0x20
            }),
            "the high region, remembered now, does not hide the end of memory"
        );
    }

    #[test]
    fn rx_buffers_that_touch_are_read_as_one_iovec() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let view = MemView::new(&m);
        let mut iov = GuestIoVecs::new();
        // Two buffers back to back, then one elsewhere, each its own chain.
        for d in [
            desc(0x8000, 0x800, VRING_DESC_F_WRITE, 0),
            desc(0x8800, 0x800, VRING_DESC_F_WRITE, 0),
            desc(0xa000, 0x100, VRING_DESC_F_WRITE, 0),
        ] {
            let chain = q.build_desc_chain(&[d]).unwrap();
            iov.push_chain(chain, &view, Direction::Writable, 0, 1 << 20, 16)
                .unwrap();
        }
        let mut read = ReadIoVecs::new(64);
        let mut bufs = read.buffers(&iov, 3, 0x1100, &m);
        let lens: Vec<usize> = bufs.iov().iter().map(|v| v.iov_len).collect();
        assert_eq!(lens, [0x1000, 0x100, 64], "merged, apart, overflow room");
        assert_eq!(bufs.guest_len(), 0x1100);
        // Bytes land where the separate buffers were.
        let bytes: Vec<u8> = (0..0x1100).map(|i| (i % 251) as u8).collect();
        assert!(bufs.write_at(0, &bytes));
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x8800)).unwrap(),
            bytes[0x800]
        );
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            bytes[0x1000]
        );
    }

    #[test]
    fn write_at_spans_segments() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q
            .build_desc_chain(&[
                desc(0x8000, 11, VRING_DESC_F_WRITE, 0),
                desc(0x9000, 100, VRING_DESC_F_WRITE, 0),
            ])
            .unwrap();
        let mut iov = GuestIoVecs::new();
        iov.push_chain(
            chain,
            &MemView::new(&m),
            Direction::Writable,
            0,
            1 << 20,
            16,
        )
        .unwrap();
        assert!(iov.write_at(10, &[0xaa, 0xbb]));
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x800a)).unwrap(), 0xaa);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x9000)).unwrap(), 0xbb);
        assert!(!iov.write_at(110, &[1, 2]));
    }
}
