//! Dirty-page logging for live migration: the log the frontend shares
//! with SET_LOG_BASE, and the marks zcnet sets in it for every guest page
//! it writes while the frontend has acked `VHOST_F_LOG_ALL`.
//!
//! # The log
//!
//! With the protocol feature `LOG_SHMFD`, SET_LOG_BASE carries an fd, a
//! size and an offset (vhost-user.rst, "Migration"). The log is a bitmap:
//! bit `n % 8` of byte `n / 8` stands for guest-physical page `n` of 4096
//! bytes (`VHOST_LOG_PAGE`). The backend sets bits with atomic ORs; QEMU
//! reads and clears them with an atomic exchange per 64-bit word
//! (`vhost_dev_sync_region`, hw/virtio/vhost.c). A [`LogMap`] is one such
//! mapping; it is unmapped when its last [`Arc`] goes.
//!
//! # Ownership and swapping
//!
//! [`DirtyLog`] is one connection's logging state, shared by the
//! interceptor (which maps new logs), the device (which learns of
//! `LOG_ALL` from SET_FEATURES) and the queue pairs (which mark). The
//! current map sits behind a mutex as an `Arc<LogMap>`. A queue pair's
//! worker takes a clone once per event ([`DirtyLog::batch`]) and marks
//! through it; a new SET_LOG_BASE swaps the `Arc` under the lock. The old
//! mapping stays mapped until the last worker that cloned it finishes its
//! event, so no mark ever lands in unmapped memory. QEMU sends a new log
//! before it releases the old one and syncs the old one after our reply
//! (`vhost_dev_log_resize`); the interceptor therefore waits, after the
//! swap and before replying, for every event in progress to end (the
//! device's `quiesce`), so no mark goes to the old log after QEMU read it
//! for the last time.
//!
//! # What costs what
//!
//! With no migration running, a worker reads one atomic flag per event
//! ([`DirtyLog::batch`], a plain load) and then only tests an `Option` that
//! is `None` before each write it would mark: no atomic read-modify-write,
//! no lock. While `LOG_ALL` is acked it takes the mutex once per event and
//! sets each page's bit with an atomic OR.
//!
//! # Why not vhost-user-backend's `bitmap` module
//!
//! vhost-user-backend 0.24 can handle SET_LOG_BASE itself when the memory
//! type is `GuestMemoryMmap<BitmapMmapRegion>`; vm-memory then marks pages
//! on every write made through `GuestMemory`. It does not fit zcnet:
//! - `BitmapMmapRegion::mark_dirty` takes an `RwLock` read lock on every
//!   write through guest memory, log or no log, so the datapath would pay
//!   a lock per used-ring write even when no migration runs;
//! - the handler ignores `LOG_ALL` being cleared (a TODO in its
//!   `set_log_base`) and keeps marking until the connection ends;
//! - zcnet's largest writes bypass it anyway: RX frames are written by
//!   `readv`/`recvmsg` through raw iovecs, and `num_buffers` and a held
//!   frame's tail are volatile writes through those iovecs, so every one
//!   of them would need an explicit mark regardless;
//! - it takes the log as the handler gives it, without checking that the
//!   file is as large as the mapping (a short memfd would SIGBUS the
//!   daemon on the first mark) or that it covers guest memory.
//!
//! So zcnet keeps `type Bitmap = ()`, answers SET_LOG_BASE in its
//! interceptor ([`crate::migration`]) and marks explicitly, at the few
//! places where it writes guest memory: RX data (`rx`, through the guest
//! addresses [`crate::iovec::GuestIoVecs`] keeps per segment), and the used
//! ring (`ring::RingState`, for used elements, `used.idx`, `used.flags` and
//! `avail_event`).

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::warn;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use thiserror::Error;
use virtio_queue::QueueT;

/// `VHOST_LOG_PAGE`: one bit of the log stands for this many bytes.
pub const LOG_PAGE: u64 = 0x1000;

/// The feature bit `VHOST_F_LOG_ALL` (vhost.h): acked while the frontend
/// wants every write logged.
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// Why a log cannot be used.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("SET_LOG_BASE came without a file descriptor")]
    NoFd,
    #[error("the log's size {size} and offset {offset} do not describe a mappable area")]
    BadArea { size: u64, offset: u64 },
    #[error("cannot inspect the log's file descriptor")]
    Stat(#[source] std::io::Error),
    #[error("the log's file descriptor is not a shared-memory file (a {kind})")]
    NotAFile { kind: &'static str },
    #[error(
        "the log's file holds {file} bytes, less than its offset {offset} plus its size {size}"
    )]
    FileTooShort { file: u64, offset: u64, size: u64 },
    #[error(
        "a log of {size} bytes covers guest pages up to {covered:#x}, but guest memory reaches \
         {last:#x} (the log needs {needed} bytes)"
    )]
    TooSmall {
        size: u64,
        covered: u64,
        last: u64,
        needed: u64,
    },
    #[error("cannot map the log")]
    Mmap(#[source] nix::Error),
}

/// One dirty log, mapped shared from the frontend's file.
pub struct LogMap {
    /// Start of the mapping (offset 0 of the file).
    map: NonNull<libc::c_void>,
    map_len: usize,
    /// Start of the bitmap inside the mapping (`map + offset`).
    bits: NonNull<AtomicU8>,
    /// Bytes of bitmap.
    len: usize,
    /// A mark fell outside the log (logged once).
    overflowed: AtomicBool,
}

// SAFETY: the mapping is shared memory that lives until `Drop`; every
// access to it goes through `AtomicU8`, so any number of threads may mark
// at once, and nothing else of `LogMap` is mutable.
unsafe impl Send for LogMap {}
// SAFETY: as above: `&LogMap` only ever does atomic byte operations on the
// mapping.
unsafe impl Sync for LogMap {}

impl LogMap {
    /// Maps `size` bytes at `offset` of `fd` (SET_LOG_BASE's body), after
    /// checking that the file really holds them (a mapping past the end of
    /// a memfd maps, but the first write to it raises SIGBUS) and that they
    /// cover guest memory up to `last_gpa` (`None` when the frontend has
    /// not sent its memory table yet).
    pub fn map(
        fd: BorrowedFd<'_>,
        size: u64,
        offset: u64,
        last_gpa: Option<u64>,
    ) -> Result<LogMap, LogError> {
        let bad_area = LogError::BadArea { size, offset };
        let end = offset.checked_add(size).ok_or(bad_area)?;
        let (Ok(map_len), Ok(len)) = (usize::try_from(end), usize::try_from(size)) else {
            return Err(LogError::BadArea { size, offset });
        };
        let Some(map_len) = NonZeroUsize::new(map_len).filter(|_| len > 0) else {
            return Err(LogError::BadArea { size, offset });
        };
        if let Some(last) = last_gpa {
            let needed = last / LOG_PAGE / 8 + 1;
            if size < needed {
                return Err(LogError::TooSmall {
                    size,
                    covered: (size * 8 * LOG_PAGE).saturating_sub(1),
                    last,
                    needed,
                });
            }
        }
        let file = File::from(fd.try_clone_to_owned().map_err(LogError::Stat)?);
        let meta = file.metadata().map_err(LogError::Stat)?;
        let kind = meta.file_type();
        if !kind.is_file() {
            let kind = if kind.is_fifo() {
                "pipe"
            } else if kind.is_socket() {
                "socket"
            } else if kind.is_char_device() {
                "character device"
            } else if kind.is_block_device() {
                "block device"
            } else if kind.is_dir() {
                "directory"
            } else {
                "special file"
            };
            return Err(LogError::NotAFile { kind });
        }
        if meta.len() < end {
            return Err(LogError::FileTooShort {
                file: meta.len(),
                offset,
                size,
            });
        }
        // SAFETY: a fresh shared mapping chosen by the kernel (no address
        // given), so it replaces nothing of ours; `file` is a regular file
        // at least `map_len` bytes long (checked above), so every byte of
        // the mapping is backed. The mapping outlives `file` (the kernel
        // holds its own reference) and is owned by the returned LogMap,
        // which unmaps it in Drop.
        let map = unsafe {
            mmap(
                None,
                map_len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file.as_fd(),
                0,
            )
        }
        .map_err(LogError::Mmap)?;
        // SAFETY: `offset < map_len` (as `size > 0`), so the result stays
        // inside the mapping that starts at `map` (and so is not null).
        let bits = unsafe { map.cast::<u8>().add(offset as usize) }.cast();
        Ok(LogMap {
            map,
            map_len: map_len.get(),
            bits,
            len,
            overflowed: AtomicBool::new(false),
        })
    }

    /// Bytes of bitmap.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Marks every page of `gpa..gpa + len` dirty. Pages past the end of
    /// the log are not marked (logged once): the frontend sized the log
    /// for guest memory, so such an address is not guest memory.
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        for page in first..=last {
            let byte = page / 8;
            if byte >= self.len as u64 {
                self.overflow(page);
                return;
            }
            // SAFETY: `byte < self.len`, so `bits + byte` lies inside the
            // mapping, which lives as long as `self`. The frontend and
            // other workers touch these bytes only atomically.
            let cell = unsafe { &*self.bits.as_ptr().add(byte as usize) };
            // Release: whoever sees the bit (QEMU reads it with an atomic
            // exchange) also sees the write it stands for, made before.
            cell.fetch_or(1 << (page % 8), Ordering::Release);
        }
    }

    fn overflow(&self, page: u64) {
        if !self.overflowed.swap(true, Ordering::Relaxed) {
            warn!(
                "dirty log of {} bytes has no bit for guest page {page:#x} (address {:#x}); \
                 writes there are not logged",
                self.len,
                page * LOG_PAGE
            );
        }
    }
}

impl Drop for LogMap {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` are exactly the mapping `map` created,
        // owned by this LogMap alone; no reference into it outlives `self`
        // (marks borrow `self`).
        if let Err(e) = unsafe { munmap(self.map, self.map_len) } {
            warn!("cannot unmap a dirty log: {e}");
        }
    }
}

/// A ring's `log_guest_addr` when the frontend set `VHOST_VRING_F_LOG` on
/// it (SET_VRING_ADDR); this value when it did not.
const NO_RING_LOG: u64 = u64::MAX;

#[derive(Default)]
struct State {
    /// `VHOST_F_LOG_ALL` is acked.
    log_all: bool,
    map: Option<Arc<LogMap>>,
}

/// One connection's dirty logging (see the module documentation).
pub struct DirtyLog {
    /// `LOG_ALL` is acked and a log is mapped: the one thing an idle
    /// datapath reads.
    active: AtomicBool,
    state: Mutex<State>,
    /// Per ring: where its used ring is logged (`log_guest_addr`).
    rings: Box<[AtomicU64]>,
}

impl DirtyLog {
    /// Logging state for a device of `rings` rings; nothing is logged
    /// until a log is given and `LOG_ALL` acked.
    pub fn new(rings: usize) -> DirtyLog {
        DirtyLog {
            active: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            rings: (0..rings).map(|_| AtomicU64::new(NO_RING_LOG)).collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain fields, consistent at every point.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, st: &State) {
        self.active
            .store(st.log_all && st.map.is_some(), Ordering::Release);
    }

    /// The log to mark for one event of a worker, if writes are logged
    /// now. Called once per event: when idle it costs one atomic load.
    pub fn batch(&self) -> Option<Arc<LogMap>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let st = self.lock();
        st.map.clone().filter(|_| st.log_all)
    }

    /// SET_FEATURES acked (`on`) or cleared `LOG_ALL`. Returns whether
    /// writes were logged before.
    pub fn set_log_all(&self, on: bool) -> bool {
        let mut st = self.lock();
        let was = st.log_all;
        st.log_all = on;
        self.update(&st);
        was
    }

    /// Whether `LOG_ALL` is acked.
    pub fn log_all(&self) -> bool {
        self.lock().log_all
    }

    /// Puts `map` in place of the current log (SET_LOG_BASE). Workers
    /// that took the old one go on marking it until their event ends.
    pub fn replace(&self, map: LogMap) {
        let mut st = self.lock();
        st.map = Some(Arc::new(map));
        self.update(&st);
    }

    /// SET_VRING_ADDR for ring `index`: with `VHOST_VRING_F_LOG`, its used
    /// ring is logged at `log_guest_addr`; without, at the guest address
    /// of the used ring itself.
    pub fn set_ring_addr(&self, index: usize, log: bool, log_guest_addr: u64) {
        if let Some(ring) = self.rings.get(index) {
            let at = if log { log_guest_addr } else { NO_RING_LOG };
            ring.store(at, Ordering::Relaxed);
        }
    }

    /// What ring `index` needs to mark its used ring in `map`.
    pub fn used(&self, map: &Arc<LogMap>, index: usize) -> UsedLog {
        let at = self
            .rings
            .get(index)
            .map_or(NO_RING_LOG, |r| r.load(Ordering::Relaxed));
        UsedLog {
            map: map.clone(),
            log_guest_addr: (at != NO_RING_LOG).then_some(at),
        }
    }
}

/// One event's marking of one ring's used area.
#[derive(Clone)]
pub struct UsedLog {
    map: Arc<LogMap>,
    /// Where the frontend asked for the used ring to be logged (SET_VRING
    /// _ADDR's `log_guest_addr` with `VHOST_VRING_F_LOG`; QEMU gives the
    /// used ring's guest address). `None`: the used ring's own address.
    log_guest_addr: Option<u64>,
}

impl std::fmt::Debug for UsedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsedLog")
            .field("log_bytes", &self.map.len())
            .field("log_guest_addr", &self.log_guest_addr)
            .finish()
    }
}

impl UsedLog {
    /// Marks `len` bytes at `offset` of `queue`'s used area.
    pub fn mark<Q: QueueT>(&self, queue: &Q, offset: u64, len: u64) {
        let base = self.log_guest_addr.unwrap_or_else(|| queue.used_ring());
        self.map.mark(base.saturating_add(offset), len);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

    use super::*;

    fn memfd(len: u64) -> File {
        let f = File::from(memfd_create(c"log", MemFdCreateFlag::MFD_CLOEXEC).unwrap());
        f.set_len(len).unwrap();
        f
    }

    fn bits(f: &File, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0; len];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    }

    #[test]
    fn marks_every_page_of_a_range_and_nothing_else() {
        let f = memfd(64);
        let log = LogMap::map(f.as_fd(), 64, 0, Some(64 * 8 * LOG_PAGE - 1)).unwrap();
        log.mark(0x1fff, 2); // pages 1 and 2
        log.mark(9 * LOG_PAGE, 1); // page 9
        log.mark(20 * LOG_PAGE, 0); // nothing
        let b = bits(&f, 64);
        assert_eq!(b[0], 0b0000_0110);
        assert_eq!(b[1], 0b0000_0010);
        assert!(b[2..].iter().all(|&x| x == 0));
    }

    #[test]
    fn an_offset_moves_the_bitmap_and_marks_past_the_end_are_dropped() {
        let f = memfd(4096 + 8);
        let log = LogMap::map(f.as_fd(), 8, 4096, None).unwrap();
        log.mark(0, 1);
        log.mark(63 * LOG_PAGE, 1);
        log.mark(64 * LOG_PAGE, 1 << 20); // outside: not marked, no panic
        let b = bits(&f, 4096 + 8);
        assert!(
            b[..4096].iter().all(|&x| x == 0),
            "nothing before the offset"
        );
        assert_eq!(b[4096], 1);
        assert_eq!(b[4096 + 7], 0x80);
    }

    #[test]
    fn logs_that_cannot_be_used_are_refused_with_the_reason() {
        let f = memfd(16);
        let last = 16 * 8 * LOG_PAGE; // one page past what 16 bytes cover
        assert!(matches!(
            LogMap::map(f.as_fd(), 16, 0, Some(last)),
            Err(LogError::TooSmall { needed: 17, .. })
        ));
        assert!(LogMap::map(f.as_fd(), 16, 0, Some(last - 1)).is_ok());
        assert!(matches!(
            LogMap::map(f.as_fd(), 16, 8, None),
            Err(LogError::FileTooShort { file: 16, .. })
        ));
        assert!(matches!(
            LogMap::map(f.as_fd(), 0, 0, None),
            Err(LogError::BadArea { .. })
        ));
        assert!(matches!(
            LogMap::map(f.as_fd(), u64::MAX, 1, None),
            Err(LogError::BadArea { .. })
        ));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            LogMap::map(r.as_fd(), 16, 0, None),
            Err(LogError::NotAFile { kind: "pipe" })
        ));
    }

    #[test]
    fn logging_needs_both_log_all_and_a_log() {
        let d = DirtyLog::new(2);
        assert!(d.batch().is_none());
        d.set_log_all(true);
        assert!(d.batch().is_none(), "LOG_ALL without a log");
        let f = memfd(8);
        d.replace(LogMap::map(f.as_fd(), 8, 0, None).unwrap());
        let map = d.batch().expect("logging");
        d.set_log_all(false);
        assert!(d.batch().is_none(), "LOG_ALL cleared");
        // A worker that took the log before keeps a valid mapping.
        map.mark(0, 1);
        assert_eq!(bits(&f, 1), [1]);
    }

    #[test]
    fn a_replaced_log_stays_mapped_for_whoever_holds_it() {
        let d = DirtyLog::new(1);
        d.set_log_all(true);
        let (f1, f2) = (memfd(8), memfd(8));
        d.replace(LogMap::map(f1.as_fd(), 8, 0, None).unwrap());
        let old = d.batch().unwrap();
        d.replace(LogMap::map(f2.as_fd(), 8, 0, None).unwrap());
        old.mark(LOG_PAGE, 1);
        d.batch().unwrap().mark(2 * LOG_PAGE, 1);
        assert_eq!(bits(&f1, 1), [2]);
        assert_eq!(bits(&f2, 1), [4]);
    }
}
