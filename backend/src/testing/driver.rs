//! The guest's side of split virtqueues, in anonymous guest memory: what a
//! virtio driver does (lay out a ring, fill descriptors, publish them on
//! the avail ring, read the used ring, move `used_event`), and nothing
//! more.
//!
//! virtio-queue's `MockSplitQueue` is not used: in 0.18 its `create` puts
//! the used ring over the avail ring's entries (`SplitQueueRing::end`
//! adds the element count, not the byte length), its `add_desc_chains`
//! does not wrap the avail ring, and it keeps no free descriptor slots.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor, VirtqUsedElem};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::iovec::Mem;

/// Guest memory with a bump allocator for buffers. Clones share both.
#[derive(Clone)]
pub struct Guest {
    mem: Mem,
    next: Arc<AtomicU64>,
    end: u64,
}

impl Guest {
    /// `size` bytes of guest memory at guest-physical 0; buffers are
    /// allocated from `heap` on (below it is room for rings).
    pub fn new(size: u64, heap: u64) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
            .expect("anonymous guest memory");
        Guest {
            mem,
            next: Arc::new(AtomicU64::new(heap)),
            end: size,
        }
    }

    pub fn mem(&self) -> &Mem {
        &self.mem
    }

    /// A fresh, zeroed `len`-byte buffer (never reused).
    pub fn alloc(&self, len: usize) -> u64 {
        let len = (len as u64).next_multiple_of(64);
        let addr = self.next.fetch_add(len, Ordering::Relaxed);
        assert!(addr + len <= self.end, "test guest memory exhausted");
        addr
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }
}

/// One descriptor as the driver wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (an RX buffer).
    pub write: bool,
}

/// An element the device put on the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub id: u16,
    pub len: u32,
}

/// An RX buffer the guest posted: a one-descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posted {
    pub head: u16,
    pub addr: u64,
    pub len: u32,
}

struct Ring {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    free: Vec<u16>,
    /// The descriptor slots of each chain the device holds, by head.
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
}

/// The driver of one split virtqueue. Clones drive the same queue (a test
/// hook can publish chains while the device works).
#[derive(Clone)]
pub struct GuestQueue {
    guest: Guest,
    ring: Arc<Mutex<Ring>>,
}

impl GuestQueue {
    /// Lays out an empty ring of `size` entries at guest address `base`.
    pub fn new(guest: &Guest, base: u64, size: u16) -> Self {
        // virtio 1.x, 2.7: 16-byte descriptors, then the avail ring (flags,
        // idx, ring, used_event), then the used ring (flags, idx, ring of
        // 8-byte elements, avail_event) 4-byte aligned.
        let size64 = u64::from(size);
        let avail = base + 16 * size64;
        let used = (avail + 6 + 2 * size64).next_multiple_of(4);
        let end = used + 6 + 8 * size64;
        guest.write(base, &vec![0u8; (end - base) as usize]);
        let ring = Ring {
            size,
            desc: GuestAddress(base),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
        };
        GuestQueue {
            guest: guest.clone(),
            ring: Arc::new(Mutex::new(ring)),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn size(&self) -> u16 {
        self.ring().size
    }

    /// Guest addresses of the descriptor table, avail ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        let r = self.ring();
        (r.desc.0, r.avail.0, r.used.0)
    }

    /// Writes `descs` as one chain into free slots and publishes it on the
    /// avail ring; returns its head.
    pub fn add_chain(&self, descs: &[Desc]) -> u16 {
        let mut r = self.ring();
        assert!(
            !descs.is_empty() && descs.len() <= r.free.len(),
            "ring full"
        );
        let slots: Vec<u16> = (0..descs.len()).map(|_| r.free.pop().unwrap()).collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = if d.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = match slots.get(i + 1) {
                Some(&next) => {
                    flags |= VRING_DESC_F_NEXT as u16;
                    next
                }
                None => 0,
            };
            let at = r.desc.unchecked_add(16 * u64::from(slots[i]));
            let desc = Descriptor::new(d.addr, d.len, flags, next);
            self.guest.mem().write_obj(desc, at).unwrap();
        }
        let head = slots[0];
        r.chains.insert(head, slots);
        let slot = r
            .avail
            .unchecked_add(4 + 2 * u64::from(r.avail_idx % r.size));
        self.guest.mem().write_obj(head.to_le(), slot).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        // The ring entry before the index, as a driver's write barrier.
        fence(Ordering::Release);
        let idx = r.avail.unchecked_add(2);
        self.guest
            .mem()
            .write_obj(r.avail_idx.to_le(), idx)
            .unwrap();
        fence(Ordering::SeqCst);
        head
    }

    /// Publishes `bytes` (virtio-net header and frame) as a one-buffer TX
    /// chain; returns its head.
    pub fn send(&self, bytes: &[u8]) -> u16 {
        let addr = self.guest.alloc(bytes.len());
        self.guest.write(addr, bytes);
        self.add_chain(&[Desc {
            addr,
            len: bytes.len() as u32,
            write: false,
        }])
    }

    /// Posts `count` RX buffers of `len` bytes each, in order.
    pub fn post(&self, count: usize, len: u32) -> Vec<Posted> {
        (0..count)
            .map(|_| {
                let addr = self.guest.alloc(len as usize);
                let head = self.add_chain(&[Desc {
                    addr,
                    len,
                    write: true,
                }]);
                Posted { head, addr, len }
            })
            .collect()
    }

    /// The avail index published so far.
    pub fn avail_idx(&self) -> u16 {
        self.ring().avail_idx
    }

    /// The device's `avail_event` (EVENT_IDX): it wants a kick once the
    /// avail index passes it.
    pub fn avail_event(&self) -> u16 {
        let r = self.ring();
        fence(Ordering::SeqCst);
        let at = r.used.unchecked_add(4 + 8 * u64::from(r.size));
        u16::from_le(self.guest.mem().read_obj(at).unwrap())
    }

    /// Whether a driver that published the chains from avail index `old`
    /// on would kick now (`vring_need_event` with EVENT_IDX).
    pub fn needs_kick(&self, old: u16) -> bool {
        let (new, event) = (self.avail_idx(), self.avail_event());
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Sets `used_event` (EVENT_IDX): the guest wants a call once the used
    /// index passes `idx`.
    pub fn set_used_event(&self, idx: u16) {
        let r = self.ring();
        let at = r.avail.unchecked_add(4 + 2 * u64::from(r.size));
        self.guest.mem().write_obj(idx.to_le(), at).unwrap();
        fence(Ordering::SeqCst);
    }

    /// The device's used index as it is in memory now.
    pub fn used_idx(&self) -> u16 {
        let r = self.ring();
        fence(Ordering::Acquire);
        u16::from_le(self.guest.mem().read_obj(r.used.unchecked_add(2)).unwrap())
    }

    /// The used elements published since the last call, in ring order;
    /// their descriptor slots become free again.
    pub fn take_used(&self) -> Vec<Used> {
        let end = self.used_idx();
        let mut r = self.ring();
        let mut out = Vec::new();
        while r.last_used != end {
            let at = r
                .used
                .unchecked_add(4 + 8 * u64::from(r.last_used % r.size));
            let e: VirtqUsedElem = self.guest.mem().read_obj(at).unwrap();
            let id = u16::try_from(e.id()).expect("used id fits the ring");
            let slots = r.chains.remove(&id).unwrap_or_else(|| {
                panic!("used id {id} is not a chain the device holds (returned twice?)")
            });
            r.free.extend(slots);
            out.push(Used { id, len: e.len() });
            r.last_used = r.last_used.wrapping_add(1);
        }
        out
    }

    /// Chains published and not yet taken back from the used ring.
    pub fn outstanding(&self) -> usize {
        self.ring().chains.len()
    }
}
