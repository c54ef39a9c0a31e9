//! Dirty logging for live migration (`crate::dirty_log`): while `LOG_ALL`
//! is acked, every guest page the pair writes has its bit in the log (RX
//! frames, headers and `num_buffers`, a held frame's tail, used elements,
//! `used.idx`, `avail_event`), including TX chains completed later and
//! those drained by GET_VRING_BASE; pages it only reads do not; and with
//! `LOG_ALL` cleared the log stays all zero.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
use zcnet_tap::Completion;

use crate::dirty_log::{DirtyLog, LogMap, LOG_PAGE};
use crate::lending::ZeroCopyMode;
use crate::testing::{frame, Delivered, Desc, Harness, Posted, Setup, Vq, MODERN};

const HDR: usize = 12;

/// A log covering the harness's guest memory, shared with the pair, and
/// the file behind it.
struct Log {
    dirty: Arc<DirtyLog>,
    file: File,
}

impl Log {
    fn attach(h: &mut Harness, log_all: bool) -> Log {
        let last = h.mem.memory().last_addr().0;
        let bytes = last / LOG_PAGE / 8 + 1;
        let file = File::from(memfd_create(c"log", MemFdCreateFlag::MFD_CLOEXEC).unwrap());
        file.set_len(bytes).unwrap();
        let dirty = Arc::new(DirtyLog::new(2));
        dirty.replace(LogMap::map(file.as_fd(), bytes, 0, Some(last)).unwrap());
        dirty.set_log_all(log_all);
        h.pair.set_dirty_log(dirty.clone());
        Log { dirty, file }
    }

    /// The pages whose bits are set.
    fn marked(&self) -> BTreeSet<u64> {
        let len = self.file.metadata().unwrap().len() as usize;
        let mut bits = vec![0u8; len];
        self.file.read_exact_at(&mut bits, 0).unwrap();
        let mut pages = BTreeSet::new();
        for (i, b) in bits.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    pages.insert(i as u64 * 8 + bit);
                }
            }
        }
        pages
    }

    fn clear(&self) {
        let len = self.file.metadata().unwrap().len() as usize;
        self.file.write_all_at(&vec![0; len], 0).unwrap();
    }
}

/// The log pages of `len` bytes at `addr`.
fn pages(addr: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    addr / LOG_PAGE..(addr + len - 1) / LOG_PAGE + 1
}

/// The pages of `q`'s used ring that `count` elements from slot `from`
/// on, and `used.idx`, live in.
fn used_pages(h: &Harness, q: Vq, from: u16, count: u16) -> BTreeSet<u64> {
    let (ring, size) = match q {
        Vq::Rx => (&h.rx, h.rx.size()),
        Vq::Tx => (&h.tx, h.tx.size()),
    };
    let used = ring.addresses().2;
    let mut out: BTreeSet<u64> = pages(used + 2, 2).collect();
    for i in 0..count {
        let slot = u64::from(from.wrapping_add(i) % size);
        out.extend(pages(used + 4 + 8 * slot, 8));
    }
    out
}

/// The page of `q`'s `avail_event`.
fn avail_event_page(h: &Harness, q: Vq) -> u64 {
    let (ring, size) = match q {
        Vq::Rx => (&h.rx, h.rx.size()),
        Vq::Tx => (&h.tx, h.tx.size()),
    };
    (ring.addresses().2 + 4 + 8 * u64::from(size)) / LOG_PAGE
}

/// The pages the delivered frames' bytes landed in.
fn frame_pages(delivered: &[Delivered], posted: &[Posted]) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for d in delivered {
        for u in &d.used {
            let p = posted.iter().find(|p| p.head == u.id).expect("posted");
            out.extend(pages(p.addr, u64::from(u.len)));
        }
    }
    out
}

/// Every expected page is marked, and nothing but expected pages and
/// `allowed` ones.
fn assert_marks(log: &Log, expected: &BTreeSet<u64>, allowed: &[u64]) {
    let marked = log.marked();
    let missing: Vec<_> = expected.difference(&marked).collect();
    assert!(
        missing.is_empty(),
        "pages written but not marked: {missing:x?}"
    );
    let extra: Vec<_> = marked
        .difference(expected)
        .filter(|p| !allowed.contains(p))
        .collect();
    assert!(extra.is_empty(), "pages marked but not written: {extra:x?}");
}

fn gso_guest(queue_size: u16) -> Setup {
    Setup {
        features: MODERN | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4,
        queue_size,
        ..Setup::default()
    }
}

#[test]
fn rx_marks_the_pages_of_every_frame_and_of_the_used_ring() {
    // 1024 entries: the used ring spans three pages.
    let mut h = gso_guest(1024).build();
    let log = Log::attach(&mut h, true);
    // Buffer sizes that straddle page boundaries, and whole pages.
    let mut posted = h.rx.post(30, 1526);
    posted.extend(h.rx.post(20, 4096));
    posted.extend(h.rx.post(10, 700));
    for (i, len) in [60, 1514, 3000, 9000, 64, 40_000, 1200, 5000]
        .into_iter()
        .enumerate()
    {
        h.fake.push_rx(frame(len, i as u8));
    }
    h.rx_kick();
    let delivered = h.delivered(&posted);
    assert_eq!(delivered.len(), 8);
    let used: u16 = delivered.iter().map(|d| d.used.len() as u16).sum();
    let mut expected = frame_pages(&delivered, &posted);
    expected.extend(used_pages(&h, Vq::Rx, 0, used));
    assert_marks(&log, &expected, &[avail_event_page(&h, Vq::Rx)]);
}

#[test]
fn rx_marks_the_used_ring_as_it_wraps() {
    let mut h = gso_guest(256).build();
    let log = Log::attach(&mut h, true);
    // Three rounds of 200 one-buffer frames: the used index passes 256
    // and 512, each round's elements wrap into the ring's start.
    for round in 0..3u16 {
        log.clear();
        let posted = h.rx.post(200, 1100);
        for i in 0..200 {
            h.fake.push_rx(frame(1000, i as u8));
        }
        h.rx_kick();
        let delivered = h.delivered(&posted);
        assert_eq!(delivered.len(), 200);
        let mut expected = frame_pages(&delivered, &posted);
        expected.extend(used_pages(&h, Vq::Rx, 200 * round, 200));
        assert_marks(&log, &expected, &[avail_event_page(&h, Vq::Rx)]);
    }
}

#[test]
fn rx_without_mergeable_buffers_marks_multi_descriptor_chains() {
    let mut h = Setup {
        features: 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1,
        ..Setup::default()
    }
    .build();
    let log = Log::attach(&mut h, true);
    // Chains of three descriptors, 600 bytes each, in scattered places.
    let mut chains = Vec::new();
    for _ in 0..8 {
        let descs: Vec<Desc> = (0..3)
            .map(|_| Desc {
                addr: h.guest.alloc(5000) + 3900,
                len: 600,
                write: true,
            })
            .collect();
        chains.push((h.rx.add_chain(&descs), descs));
    }
    for i in 0..8u8 {
        h.fake.push_rx(frame(300 + 150 * usize::from(i), i));
    }
    h.rx_kick();
    let used = h.rx.take_used();
    assert_eq!(used.len(), 8);
    let mut expected = used_pages(&h, Vq::Rx, 0, 8);
    for u in &used {
        let (_, descs) = chains.iter().find(|(head, _)| *head == u.id).unwrap();
        let mut left = u64::from(u.len);
        for d in descs {
            let n = left.min(u64::from(d.len));
            expected.extend(pages(d.addr, n));
            left -= n;
        }
    }
    assert_marks(&log, &expected, &[avail_event_page(&h, Vq::Rx)]);
}

#[test]
fn a_held_frame_is_marked_where_it_lands() {
    let mut h = gso_guest(256).build();
    let log = Log::attach(&mut h, true);
    let mut posted = h.rx.post(2, 1526);
    h.fake.push_rx(frame(6000, 7));
    h.rx_kick();
    assert!(h.rx.take_used().is_empty(), "held for want of room");
    // The first part already changed the two posted buffers, and the
    // device asked for a kick on more (avail_event).
    let mut first: BTreeSet<u64> = posted
        .iter()
        .flat_map(|p| pages(p.addr, u64::from(p.len)))
        .collect();
    first.insert(avail_event_page(&h, Vq::Rx));
    assert_marks(&log, &first, &[]);

    posted.extend(h.rx.post(4, 1526));
    h.rx_kick();
    let delivered = h.delivered(&posted);
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].bytes.len(), HDR + 6000);
    let mut expected = frame_pages(&delivered, &posted);
    expected.extend(used_pages(&h, Vq::Rx, 0, delivered[0].used.len() as u16));
    assert_marks(&log, &expected, &[avail_event_page(&h, Vq::Rx)]);
}

#[test]
fn tx_marks_the_used_ring_when_lent_chains_complete_and_when_stop_drains_them() {
    let mut h = Setup {
        drain: Duration::from_secs(600),
        ..Setup::lending(ZeroCopyMode::On)
    }
    .build();
    let log = Log::attach(&mut h, true);
    for i in 0..4 {
        h.send(&frame(2000, i));
    }
    h.tx_kick();
    assert_eq!(h.tx.used_idx(), 0, "all four lent");
    // Sending reads guest memory only; notification suppression may
    // write avail_event.
    assert_marks(&log, &BTreeSet::new(), &[avail_event_page(&h, Vq::Tx)]);

    h.fake.complete(0, 1, false);
    // EPOLLERR also runs RX, which finds no buffers and asks for a kick.
    h.notified();
    assert_eq!(h.tx.take_used().len(), 2);
    assert_marks(
        &log,
        &used_pages(&h, Vq::Tx, 0, 2),
        &[avail_event_page(&h, Vq::Tx), avail_event_page(&h, Vq::Rx)],
    );

    log.clear();
    h.fake.arrive_during_waits([vec![Completion {
        first: 2,
        last: 3,
        copied: false,
    }]]);
    h.stop(Vq::Tx);
    assert_eq!(h.tx.take_used().len(), 2, "drained before the reply");
    assert_marks(&log, &used_pages(&h, Vq::Tx, 2, 2), &[]);
}

#[test]
fn with_log_all_cleared_nothing_is_marked() {
    let mut h = gso_guest(256).build();
    let log = Log::attach(&mut h, false);
    assert!(log.dirty.batch().is_none());
    let posted = h.rx.post(40, 1526);
    for i in 0..10 {
        h.fake.push_rx(frame(1000 + 500 * i, i as u8));
    }
    h.rx_kick();
    assert_eq!(h.delivered(&posted).len(), 10);
    h.send(&frame(500, 1));
    h.tx_kick();
    assert_eq!(h.tx.take_used().len(), 1);
    assert!(log.marked().is_empty(), "{:x?}", log.marked());

    // Acked again: marks resume with the next event.
    log.dirty.set_log_all(true);
    h.send(&frame(500, 2));
    h.tx_kick();
    assert_eq!(h.tx.take_used().len(), 1);
    assert_marks(
        &log,
        &used_pages(&h, Vq::Tx, 1, 1),
        &[avail_event_page(&h, Vq::Tx)],
    );
}
