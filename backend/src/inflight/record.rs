//! The in-flight record's layout and the stores the datapath makes into it.
//!
//! ```text
//! [queue 0 region][queue 1 region] ... [queue N-1 region][zcnet's trailer]
//! ```
//!
//! Each queue region is the split-ring `QueueRegionSplit` of vhost-user's
//! "Inflight I/O tracking": `features` (u64, 0), `version` (u16, 1),
//! `desc_num` (u16, the ring's size), `last_batch_head` (u16), `used_idx`
//! (u16), then one 16-byte `DescStateSplit` per descriptor head:
//! `inflight` (u8), 5 bytes of padding, `next` (u16), `counter` (u64).
//! A region takes `16 + 16 * queue_size` bytes, rounded up to 64.
//!
//! The trailer is zcnet's own (a frontend keeps the region without reading
//! it): a header (`magic`, `layout`, `num_queues`, `queue_size`) and, per
//! queue, whether its ring was running (started and not stopped by
//! GET_VRING_BASE) and which ring it was: size, the guest addresses of its
//! three parts, and the device and inode of the file that backs the
//! memory they are in. The next avail index is not stored: it is the used
//! index plus the number of chains in flight (every popped chain is either
//! on the used ring or in flight, and a chain given back to the avail ring
//! is cleared).
//!
//! Every field is read and written with atomic operations: the record is
//! shared memory, and what matters is the order in which stores reach it
//! before a crash (see [`QueueRecord::mark`] and [`QueueRecord::used`]).

use std::mem::{align_of, size_of};
use std::sync::atomic::{compiler_fence, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use super::map::Mapping;

/// `QueueRegionSplit`'s header.
#[repr(C)]
struct QueueHeader {
    features: AtomicU64,
    version: AtomicU16,
    desc_num: AtomicU16,
    last_batch_head: AtomicU16,
    used_idx: AtomicU16,
}

/// `DescStateSplit`.
#[repr(C)]
struct DescState {
    inflight: AtomicU8,
    _padding: [AtomicU8; 5],
    next: AtomicU16,
    counter: AtomicU64,
}

/// The head of zcnet's trailer.
#[repr(C)]
struct TrailerHeader {
    magic: AtomicU64,
    layout: AtomicU32,
    num_queues: AtomicU16,
    queue_size: AtomicU16,
}

/// zcnet's per-queue entry in the trailer.
#[repr(C)]
struct QueueInfo {
    running: AtomicU32,
    size: AtomicU16,
    _padding: AtomicU16,
    desc: AtomicU64,
    avail: AtomicU64,
    used: AtomicU64,
    dev: AtomicU64,
    ino: AtomicU64,
}

const _: () = assert!(size_of::<QueueHeader>() == 16);
const _: () = assert!(size_of::<DescState>() == 16);
const _: () = assert!(size_of::<TrailerHeader>() == 16);
const _: () = assert!(size_of::<QueueInfo>() == 48);

/// Types made of atomics only, laid out with `repr(C)`.
///
/// # Safety
/// Every byte of an implementing type must lie inside an atomic (padding
/// included), so that any bit pattern is a valid value and a shared
/// reference to one in shared memory may coexist with stores from other
/// threads or processes.
unsafe trait Shared {}
// SAFETY: `repr(C)` of atomics whose sizes add up to the struct's size
// (asserted above), so there is no padding outside them.
unsafe impl Shared for QueueHeader {}
// SAFETY: as for `QueueHeader`.
unsafe impl Shared for DescState {}
// SAFETY: as for `QueueHeader`.
unsafe impl Shared for TrailerHeader {}
// SAFETY: as for `QueueHeader`.
unsafe impl Shared for QueueInfo {}

/// "zcnetinf", little-endian.
const MAGIC: u64 = u64::from_le_bytes(*b"zcnetinf");
/// The layout described in the module documentation.
const LAYOUT: u32 = 1;
/// `QueueRegionSplit::version` of an initialised region.
pub const VERSION: u16 = 1;

/// How many queues of how many entries a record has room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub num_queues: u16,
    pub queue_size: u16,
}

impl Geometry {
    /// Bytes of one queue region.
    pub fn stride(self) -> usize {
        (16 + 16 * usize::from(self.queue_size)).next_multiple_of(64)
    }

    fn trailer(self) -> usize {
        usize::from(self.num_queues) * self.stride()
    }

    fn info(self, queue: u16) -> usize {
        self.trailer() + size_of::<TrailerHeader>() + usize::from(queue) * size_of::<QueueInfo>()
    }

    /// Bytes of the whole record.
    pub fn len(self) -> usize {
        self.info(self.num_queues)
    }
}

/// Which ring a queue's record was written for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingId {
    pub size: u16,
    /// Guest addresses of the descriptor table, avail ring and used ring.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Device and inode of the file backing the guest memory that holds
    /// the descriptor table (0 for memory without one).
    pub dev: u64,
    pub ino: u64,
}

/// One descriptor head's state, as read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescSnap {
    pub inflight: bool,
    pub next: u16,
    pub counter: u64,
}

/// A queue's record as read back when its ring starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub running: bool,
    pub id: RingId,
    pub version: u16,
    pub desc_num: u16,
    pub last_batch_head: u16,
    pub used_idx: u16,
    /// One entry per descriptor head, up to the record's queue size.
    pub descs: Vec<DescSnap>,
}

/// A mapped in-flight record.
pub struct Record {
    map: Mapping,
    geometry: Geometry,
    /// What it is, for log lines.
    what: String,
}

impl Record {
    /// A record over `map`, which must hold at least `geometry.len()`
    /// bytes.
    pub fn new(map: Mapping, geometry: Geometry, what: String) -> Option<Record> {
        (map.len() >= geometry.len() && geometry.num_queues > 0 && geometry.queue_size > 0)
            .then_some(Record {
                map,
                geometry,
                what,
            })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// What the record is ("the frontend's in-flight region", "the
    /// ledger /run/zcnet.sock.inflight").
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The `T` at byte `offset` of the mapping.
    fn at<T: Shared>(&self, offset: usize) -> &T {
        assert!(
            offset.is_multiple_of(align_of::<T>()) && offset + size_of::<T>() <= self.map.len(),
            "in-flight record access at {offset} outside its {} bytes",
            self.map.len()
        );
        // SAFETY: the range is inside the mapping and aligned (asserted; the
        // mapping starts on a page boundary); `T` is made of atomics only
        // (`Shared`), so any bytes are a valid `T` and stores through other
        // references or by the other process do not break this shared one;
        // the reference borrows `self`, which owns the mapping.
        unsafe { &*self.map.ptr().as_ptr().add(offset).cast::<T>() }
    }

    fn trailer(&self) -> &TrailerHeader {
        self.at(self.geometry.trailer())
    }

    fn header(&self, queue: u16) -> &QueueHeader {
        self.at(usize::from(queue) * self.geometry.stride())
    }

    fn desc(&self, queue: u16, head: u16) -> &DescState {
        self.at(usize::from(queue) * self.geometry.stride() + 16 + 16 * usize::from(head))
    }

    fn info(&self, queue: u16) -> &QueueInfo {
        self.at(self.geometry.info(queue))
    }

    /// Whether the trailer says this is a zcnet record of this geometry.
    pub fn is_formatted(&self) -> bool {
        let t = self.trailer();
        t.magic.load(Ordering::Acquire) == MAGIC
            && t.layout.load(Ordering::Relaxed) == LAYOUT
            && t.num_queues.load(Ordering::Relaxed) == self.geometry.num_queues
            && t.queue_size.load(Ordering::Relaxed) == self.geometry.queue_size
    }

    /// Whether every byte is zero (a region never written, or one a
    /// frontend reset, as QEMU does on a VM reset).
    pub fn is_blank(&self) -> bool {
        let t = self.trailer();
        t.magic.load(Ordering::Acquire) == 0
            && (0..self.geometry.num_queues).all(|q| {
                self.info(q).running.load(Ordering::Relaxed) == 0
                    && self.header(q).version.load(Ordering::Relaxed) == 0
            })
    }

    /// Makes this an empty zcnet record: every queue idle, nothing in
    /// flight.
    pub fn format(&self) {
        let t = self.trailer();
        t.magic.store(0, Ordering::Release);
        for q in 0..self.geometry.num_queues {
            let info = self.info(q);
            info.running.store(0, Ordering::Release);
            for field in [&info.desc, &info.avail, &info.used, &info.dev, &info.ino] {
                field.store(0, Ordering::Relaxed);
            }
            info.size.store(0, Ordering::Relaxed);
            let h = self.header(q);
            h.features.store(0, Ordering::Relaxed);
            h.version.store(0, Ordering::Relaxed);
            h.desc_num.store(0, Ordering::Relaxed);
            h.last_batch_head.store(0, Ordering::Relaxed);
            h.used_idx.store(0, Ordering::Relaxed);
            for head in 0..self.geometry.queue_size {
                let d = self.desc(q, head);
                d.inflight.store(0, Ordering::Relaxed);
                d.next.store(0, Ordering::Relaxed);
                d.counter.store(0, Ordering::Relaxed);
            }
        }
        t.layout.store(LAYOUT, Ordering::Relaxed);
        t.num_queues
            .store(self.geometry.num_queues, Ordering::Relaxed);
        t.queue_size
            .store(self.geometry.queue_size, Ordering::Relaxed);
        t.magic.store(MAGIC, Ordering::Release);
    }
}

/// One queue's part of a record, for a ring of `size` entries.
pub struct QueueRecord {
    rec: Arc<Record>,
    queue: u16,
    size: u16,
}

impl QueueRecord {
    /// Queue `queue` of `rec`, for a ring of `size` entries; `None` if the
    /// record has no room for it.
    pub fn new(rec: Arc<Record>, queue: u16, size: u16) -> Option<QueueRecord> {
        let g = rec.geometry();
        (queue < g.num_queues && size > 0 && size <= g.queue_size).then_some(QueueRecord {
            rec,
            queue,
            size,
        })
    }

    pub fn record(&self) -> &Record {
        &self.rec
    }

    fn desc(&self, head: u16) -> Option<&DescState> {
        (head < self.size).then(|| self.rec.desc(self.queue, head))
    }

    /// Chain `head` was popped: in flight, `counter`-th of this queue.
    /// The flag is stored before anything is done with the chain: the
    /// compiler fence keeps later stores and calls (the send) after it.
    #[inline]
    pub fn mark(&self, head: u16, counter: u64) {
        if let Some(d) = self.desc(head) {
            d.counter.store(counter, Ordering::Relaxed);
            d.inflight.store(1, Ordering::Release);
            compiler_fence(Ordering::SeqCst);
        }
    }

    /// Chain `head` is about to go on the used ring: it heads the last
    /// batch (zcnet's batches are one chain), so a restart can clear its
    /// flag if the used index moved and the flag did not.
    #[inline]
    pub fn batch(&self, head: u16) {
        if let Some(d) = self.desc(head) {
            let h = self.rec.header(self.queue);
            d.next
                .store(h.last_batch_head.load(Ordering::Relaxed), Ordering::Relaxed);
            h.last_batch_head.store(head, Ordering::Release);
        }
    }

    /// Chain `head` is on the used ring, whose index is now `used_idx`.
    /// Release: the used ring's index reached guest memory before these.
    #[inline]
    pub fn used(&self, head: u16, used_idx: u16) {
        if let Some(d) = self.desc(head) {
            d.inflight.store(0, Ordering::Release);
            self.rec
                .header(self.queue)
                .used_idx
                .store(used_idx, Ordering::Release);
        }
    }

    /// Chain `head` went back to the avail ring unused.
    #[inline]
    pub fn unmark(&self, head: u16) {
        if let Some(d) = self.desc(head) {
            d.inflight.store(0, Ordering::Release);
        }
    }

    /// Reads the queue's record back.
    pub fn snapshot(&self) -> Snapshot {
        let info = self.rec.info(self.queue);
        let h = self.rec.header(self.queue);
        let desc_num = h.desc_num.load(Ordering::Acquire);
        let n = desc_num.min(self.rec.geometry().queue_size);
        Snapshot {
            running: info.running.load(Ordering::Acquire) != 0,
            id: RingId {
                size: info.size.load(Ordering::Relaxed),
                desc: info.desc.load(Ordering::Relaxed),
                avail: info.avail.load(Ordering::Relaxed),
                used: info.used.load(Ordering::Relaxed),
                dev: info.dev.load(Ordering::Relaxed),
                ino: info.ino.load(Ordering::Relaxed),
            },
            version: h.version.load(Ordering::Relaxed),
            desc_num,
            last_batch_head: h.last_batch_head.load(Ordering::Relaxed),
            used_idx: h.used_idx.load(Ordering::Relaxed),
            descs: (0..n)
                .map(|head| {
                    let d = self.rec.desc(self.queue, head);
                    DescSnap {
                        inflight: d.inflight.load(Ordering::Relaxed) != 0,
                        next: d.next.load(Ordering::Relaxed),
                        counter: d.counter.load(Ordering::Relaxed),
                    }
                })
                .collect(),
        }
    }

    /// Sets the record up for ring `id` whose used index is `used_idx`,
    /// with nothing in flight, and marks it running. It is idle while it
    /// changes, so a crash halfway leaves a record a restart ignores.
    pub fn begin(&self, id: RingId, used_idx: u16) {
        let info = self.rec.info(self.queue);
        info.running.store(0, Ordering::Release);
        self.clear_all();
        let h = self.rec.header(self.queue);
        h.features.store(0, Ordering::Relaxed);
        h.desc_num.store(self.size, Ordering::Relaxed);
        h.last_batch_head.store(0, Ordering::Relaxed);
        h.used_idx.store(used_idx, Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        info.size.store(id.size, Ordering::Relaxed);
        info.desc.store(id.desc, Ordering::Relaxed);
        info.avail.store(id.avail, Ordering::Relaxed);
        info.used.store(id.used, Ordering::Relaxed);
        info.dev.store(id.dev, Ordering::Relaxed);
        info.ino.store(id.ino, Ordering::Relaxed);
        info.running.store(1, Ordering::Release);
    }

    /// A restart resumes this running record: `fixed` are heads the
    /// used ring already has (their flags are cleared), and the record's
    /// used index becomes `used_idx`, the ring's.
    pub fn resume(&self, fixed: &[u16], used_idx: u16) {
        for &head in fixed {
            self.unmark(head);
        }
        self.rec
            .header(self.queue)
            .used_idx
            .store(used_idx, Ordering::Release);
    }

    /// The ring stopped cleanly (GET_VRING_BASE), or another record took
    /// over the queue: nothing in flight, idle.
    pub fn stop(&self) {
        self.rec
            .info(self.queue)
            .running
            .store(0, Ordering::Release);
        self.clear_all();
    }

    fn clear_all(&self) {
        for head in 0..self.rec.geometry().queue_size {
            self.rec
                .desc(self.queue, head)
                .inflight
                .store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(geometry: Geometry) -> Arc<Record> {
        let file = tempfile::tempfile().unwrap();
        file.set_len(geometry.len() as u64).unwrap();
        let map = Mapping::new(&file, 0, geometry.len()).unwrap();
        let rec = Record::new(map, geometry, "a test record".to_owned()).unwrap();
        rec.format();
        Arc::new(rec)
    }

    #[test]
    fn the_layout_is_the_specs_split_region_then_zcnets_trailer() {
        let g = Geometry {
            num_queues: 2,
            queue_size: 16,
        };
        // 16 + 16 * 16 = 272, rounded up to 320; then 16 + 2 * 48.
        assert_eq!(g.stride(), 320);
        assert_eq!(g.len(), 2 * 320 + 16 + 96);
        let file = tempfile::tempfile().unwrap();
        file.set_len(g.len() as u64).unwrap();
        let rec = Arc::new(
            Record::new(Mapping::new(&file, 0, g.len()).unwrap(), g, String::new()).unwrap(),
        );
        assert!(rec.is_blank() && !rec.is_formatted());
        rec.format();
        assert!(rec.is_formatted());
        let q1 = QueueRecord::new(rec.clone(), 1, 16).unwrap();
        q1.begin(RingId::default(), 7);
        q1.mark(3, 42);
        q1.batch(3);
        drop((q1, rec));
        // Read the file as another program would, by the spec's offsets.
        let mut bytes = vec![0u8; g.len()];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).unwrap();
        let q = 320;
        assert_eq!(u16::from_le_bytes([bytes[q + 8], bytes[q + 9]]), VERSION);
        assert_eq!(u16::from_le_bytes([bytes[q + 10], bytes[q + 11]]), 16);
        assert_eq!(u16::from_le_bytes([bytes[q + 12], bytes[q + 13]]), 3);
        assert_eq!(u16::from_le_bytes([bytes[q + 14], bytes[q + 15]]), 7);
        let d = q + 16 + 16 * 3;
        assert_eq!(bytes[d], 1, "desc[3].inflight");
        assert_eq!(
            u64::from_le_bytes(bytes[d + 8..d + 16].try_into().unwrap()),
            42,
            "desc[3].counter"
        );
        assert_eq!(&bytes[640..648], b"zcnetinf");
    }

    #[test]
    fn marks_uses_and_stops_show_in_the_snapshot() {
        let g = Geometry {
            num_queues: 1,
            queue_size: 8,
        };
        let rec = record(g);
        let q = QueueRecord::new(rec.clone(), 0, 8).unwrap();
        let id = RingId {
            size: 8,
            desc: 0x1000,
            avail: 0x1080,
            used: 0x10c0,
            dev: 3,
            ino: 9,
        };
        q.begin(id, 100);
        for (i, head) in [5u16, 2, 7].into_iter().enumerate() {
            q.mark(head, i as u64);
        }
        q.batch(2);
        q.used(2, 101);
        q.mark(9, 99); // outside the ring: ignored
        let s = q.snapshot();
        assert!(s.running);
        assert_eq!(s.id, id);
        assert_eq!((s.version, s.desc_num, s.used_idx), (VERSION, 8, 101));
        assert_eq!(s.last_batch_head, 2);
        let inflight: Vec<usize> = (0..8).filter(|&h| s.descs[h].inflight).collect();
        assert_eq!(inflight, vec![5, 7]);
        assert_eq!(s.descs[7].counter, 2);
        q.stop();
        let s = q.snapshot();
        assert!(!s.running && s.descs.iter().all(|d| !d.inflight));
        assert!(QueueRecord::new(rec.clone(), 1, 8).is_none());
        assert!(QueueRecord::new(rec, 0, 16).is_none());
    }
}
