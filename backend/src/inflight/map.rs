//! A shared, writable mapping of part of a file: the in-flight record,
//! whether the frontend's memfd or zcnet's own ledger file.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// `len` bytes of a file mapped `MAP_SHARED`, readable and writable,
/// unmapped on drop. Stores through it reach the file (the page cache)
/// at once, so they survive the process being killed.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` is a plain region of shared memory owned by this
// value until drop; nothing in it is tied to the thread that mapped it.
// The code that reads and writes through it (`record`) does so only with
// atomic operations, so sharing it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`: every access through a shared reference is atomic.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` from `offset` (a multiple of the page
    /// size). The caller checks that the file is at least `offset + len`
    /// bytes long and cannot shrink while mapped (a shrunk file makes
    /// accesses past its end fault).
    pub fn new(file: impl AsFd, offset: u64, len: usize) -> io::Result<Mapping> {
        let length = NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"))?;
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
        // SAFETY: a fresh shared mapping at an address the kernel picks
        // (no `MAP_FIXED`), so no existing memory of this process is
        // replaced; `file` is open for the duration of the call and the
        // kernel keeps its own reference for the mapping's life.
        let ptr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                offset,
            )
        }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The start of the mapping (page-aligned).
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned and were
        // given, and this value owns the mapping: references into it are
        // handed out only with a lifetime bound to it or together with an
        // `Arc` that keeps it alive, so none outlives this drop.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
