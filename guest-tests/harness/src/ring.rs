//! The driver side of a split virtqueue, laid out in the fake guest's
//! memory, as a guest's virtio driver would run it.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// One descriptor as the driver wants it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub id: u16,
    pub len: u32,
}

pub struct Ring {
    mem: GuestMemoryMmap,
    pub(crate) size: u16,
    pub(crate) desc: GuestAddress,
    pub(crate) avail: GuestAddress,
    pub(crate) used: GuestAddress,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
    pub(crate) kick: EventFd,
    pub(crate) call: EventFd,
}

impl Ring {
    /// Lays out an empty ring of `size` entries at `base`.
    pub(crate) fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Ring {
        let desc = GuestAddress(base);
        let avail = GuestAddress(base + 16 * u64::from(size));
        let used = GuestAddress((avail.0 + 6 + 2 * u64::from(size) + 3) & !3);
        let zero = vec![0u8; (used.0 + 6 + 8 * u64::from(size) - base) as usize];
        mem.write_slice(&zero, desc).unwrap();
        Ring {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// An empty stand-in, while a ring is lent out of the guest's list.
    pub(crate) fn placeholder(mem: &GuestMemoryMmap) -> Ring {
        Ring {
            mem: mem.clone(),
            size: 0,
            desc: GuestAddress(0),
            avail: GuestAddress(0),
            used: GuestAddress(0),
            free: Vec::new(),
            chains: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// Entries in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest address of the used ring.
    pub fn used_addr(&self) -> u64 {
        self.used.0
    }

    /// Writes `idx` as the driver's avail index without publishing any
    /// entry, as a buggy or hostile driver would (the ring's own count is
    /// unchanged).
    pub fn write_avail_idx(&self, idx: u16) {
        fence(Ordering::SeqCst);
        self.mem
            .write_obj(idx.to_le(), self.avail.unchecked_add(2))
            .unwrap();
        fence(Ordering::SeqCst);
    }

    /// Writes `used_event` (EVENT_IDX): the driver wants an interrupt once
    /// the used index passes `event`.
    pub fn write_used_event(&self, event: u16) {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(event.to_le(), at).unwrap();
        fence(Ordering::SeqCst);
    }

    /// Writes descriptor `index` of the table as given, flags and all.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc.unchecked_add(16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Takes a free descriptor slot (for hand-built chains).
    pub fn take_slot(&mut self) -> u16 {
        self.free.pop().expect("descriptor table full")
    }

    /// Builds a chain from `descs` in free slots; returns its head. Not yet
    /// visible to the device: see [`publish`](Self::publish).
    pub fn add_chain(&mut self, descs: &[Desc]) -> u16 {
        let slots: Vec<u16> = (0..descs.len()).map(|_| self.take_slot()).collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = if d.write { F_WRITE } else { 0 };
            let next = if i + 1 < descs.len() {
                flags |= F_NEXT;
                slots[i + 1]
            } else {
                0
            };
            self.write_desc(slots[i], d.addr, d.len, flags, next);
        }
        self.chains.insert(slots[0], slots.clone());
        slots[0]
    }

    /// Records that `head` owns `slots` (for hand-built chains).
    pub fn own(&mut self, head: u16, slots: Vec<u16>) {
        self.chains.insert(head, slots);
    }

    /// Puts `head` on the avail ring and publishes the new index.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        self.mem
            .write_obj(
                head.to_le(),
                self.avail.unchecked_add(4 + 2 * u64::from(slot)),
            )
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::Release);
        self.mem
            .write_obj(self.avail_idx.to_le(), self.avail.unchecked_add(2))
            .unwrap();
        fence(Ordering::SeqCst);
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// The avail index published so far.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The device's `avail_event` (EVENT_IDX): it wants a kick once the
    /// avail index moves past it.
    pub(crate) fn avail_event(&self) -> u16 {
        fence(Ordering::SeqCst);
        let at = self.used.unchecked_add(4 + 8 * u64::from(self.size));
        u16::from_le(self.mem.read_obj(at).unwrap())
    }

    /// Kicks only if the device asked for a kick at an avail index in
    /// `old..` the current one, as a virtio driver does with EVENT_IDX
    /// (`vring_need_event`). Returns whether it kicked. Only meaningful with
    /// EVENT_IDX negotiated.
    pub(crate) fn kick_if_needed(&self, old: u16) -> bool {
        let new = self.avail_idx;
        let event = self.avail_event();
        let needed = new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old);
        if needed {
            self.kick();
        }
        needed
    }

    /// Asks the device for a call on its next used element (EVENT_IDX);
    /// check the used ring again afterwards, then wait for the call.
    pub(crate) fn request_call(&self) {
        self.arm_used_event();
    }

    /// Asks the device for a call once `count` more used elements have
    /// arrived (EVENT_IDX), as Linux's `virtqueue_enable_cb_delayed` asks
    /// for three quarters of what is outstanding.
    pub(crate) fn request_call_after(&self, count: u16) {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        let event = self.last_used.wrapping_add(count.max(1) - 1);
        self.mem.write_obj(event.to_le(), at).unwrap();
        fence(Ordering::SeqCst);
    }

    /// The device's used index as it is in memory now.
    pub fn used_idx(&self) -> u16 {
        fence(Ordering::Acquire);
        u16::from_le(self.mem.read_obj(self.used.unchecked_add(2)).unwrap())
    }

    /// How many chains are on the avail ring and not yet returned.
    pub fn outstanding(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }

    /// Used elements published since the last call.
    pub fn take_used(&mut self) -> Vec<Used> {
        let end = self.used_idx();
        let mut out = Vec::new();
        while self.last_used != end {
            let slot = self.last_used % self.size;
            let at = self.used.unchecked_add(4 + 8 * u64::from(slot));
            let id = u32::from_le(self.mem.read_obj(at).unwrap());
            let len = u32::from_le(self.mem.read_obj(at.unchecked_add(4)).unwrap());
            let id = id as u16;
            if let Some(slots) = self.chains.remove(&id) {
                self.free.extend(slots);
            }
            out.push(Used { id, len });
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// Asks for an interrupt on the next used element (EVENT_IDX).
    fn arm_used_event(&self) {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(self.last_used.to_le(), at).unwrap();
        fence(Ordering::SeqCst);
    }

    /// Waits for `count` used elements, driven by the call eventfd, with a
    /// deadline. Panics with what arrived if they do not.
    pub(crate) fn wait_used(&mut self, count: usize, timeout: Duration) -> Vec<Used> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            got.extend(self.take_used());
            if got.len() >= count {
                return got;
            }
            self.arm_used_event();
            let armed_at = got.len();
            got.extend(self.take_used());
            if got.len() >= count {
                return got;
            }
            if got.len() > armed_at {
                // The event armed above is behind what was just taken: a
                // device that checked it before it moved will not call
                // again for the later elements. Arm it anew, as Linux's
                // virtqueue_enable_cb does when it finds more used.
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waited {timeout:?} for {count} used elements, got {}: {got:?}",
                got.len()
            );
            self.wait_call(left);
        }
    }

    /// Waits until the device signals the call eventfd (or `timeout`).
    /// Returns whether it did.
    pub fn wait_call(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd on the stack and the count is 1;
        // the eventfd is owned by this ring and open.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            let _ = self.call.read();
            true
        } else {
            false
        }
    }
}
