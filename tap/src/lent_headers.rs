//! Header bytes an attachment puts in front of a lent frame.
//!
//! With `MSG_ZEROCOPY` the kernel pins every page of the send, including
//! the pages of headers that live in zcnet's memory, and reads them until
//! its notification for that send arrives. So a header sent with a lent
//! frame must stay unchanged until then: it gets a slot here, released by
//! the notifications that cover its sends' ids.
//!
//! A slot may serve several sends (a VXLAN frame flooded to every remote
//! VTEP takes one id per remote, all with the same header): it is held for
//! a range of ids and freed when every id of the range is notified.
//! [`SlotHolds`] is that bookkeeping alone, for slots whose storage lives
//! elsewhere (the VXLAN attachment's per-segment TSO headers).

use crate::attachment::Completion;

#[derive(Clone, Copy, Debug)]
struct Hold {
    first: u32,
    /// Ids in the range (at least 1).
    ids: u32,
    /// Ids of the range not yet notified.
    left: u32,
}

/// Which of a fixed number of slots are free, and which lent sends hold
/// the others.
#[derive(Debug)]
pub struct SlotHolds {
    held: Box<[Option<Hold>]>,
    /// Taken (by `take`) and not yet held or put back.
    taken: Box<[bool]>,
    free: Vec<usize>,
}

impl SlotHolds {
    /// `slots` free slots.
    pub fn new(slots: usize) -> Self {
        SlotHolds {
            held: vec![None; slots].into_boxed_slice(),
            taken: vec![false; slots].into_boxed_slice(),
            free: (0..slots).rev().collect(),
        }
    }

    /// A free slot, or `None` when every slot is held (send by copy then).
    pub fn take(&mut self) -> Option<usize> {
        let slot = self.free.pop()?;
        self.taken[slot] = true;
        Some(slot)
    }

    /// Gives back a slot taken but not used for a lent send.
    pub fn put_back(&mut self, slot: usize) {
        debug_assert!(self.held[slot].is_none() && self.taken[slot]);
        self.taken[slot] = false;
        self.free.push(slot);
    }

    /// `slot` went out in the lent sends `first..=last` (wrapping): it is
    /// held until notifications cover every one of them.
    pub fn hold(&mut self, slot: usize, first: u32, last: u32) {
        debug_assert!(self.taken[slot]);
        self.taken[slot] = false;
        let ids = last.wrapping_sub(first).wrapping_add(1);
        self.held[slot] = Some(Hold {
            first,
            ids,
            left: ids,
        });
    }

    /// Counts the ids `c` covers against every held slot; frees the slots
    /// whose ids are all notified now.
    pub fn release(&mut self, c: &Completion) {
        let span = c.last.wrapping_sub(c.first);
        for (slot, held) in self.held.iter_mut().enumerate() {
            let Some(h) = held else { continue };
            // The overlap of `first..first + ids` with `c`, both wrapping.
            let covered = (0..h.ids)
                .filter(|i| h.first.wrapping_add(*i).wrapping_sub(c.first) <= span)
                .count() as u32;
            h.left = h.left.saturating_sub(covered);
            if h.left == 0 {
                *held = None;
                self.free.push(slot);
            }
        }
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held.iter().filter(|h| h.is_some()).count()
    }
}

/// A fixed set of header slots of `slot_len` bytes each, allocated once.
pub struct LentHeaders {
    bytes: Box<[u8]>,
    slot_len: usize,
    holds: SlotHolds,
}

impl LentHeaders {
    /// `slots` slots of `slot_len` bytes.
    pub fn new(slots: usize, slot_len: usize) -> Self {
        LentHeaders {
            bytes: vec![0u8; slots * slot_len].into_boxed_slice(),
            slot_len,
            holds: SlotHolds::new(slots),
        }
    }

    /// The length of every slot.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// A free slot, or `None` when every slot is held (send by copy then).
    pub fn take(&mut self) -> Option<usize> {
        self.holds.take()
    }

    /// Gives back a slot taken but not used for a lent send.
    pub fn put_back(&mut self, slot: usize) {
        self.holds.put_back(slot);
    }

    /// The bytes of `slot`.
    pub fn slot(&self, slot: usize) -> &[u8] {
        &self.bytes[slot * self.slot_len..(slot + 1) * self.slot_len]
    }

    /// The bytes of `slot`, to fill before the send.
    pub fn slot_mut(&mut self, slot: usize) -> &mut [u8] {
        &mut self.bytes[slot * self.slot_len..(slot + 1) * self.slot_len]
    }

    /// `slot` went out in the lent send `id`: it is held until a
    /// notification covers `id`.
    pub fn hold(&mut self, slot: usize, id: u32) {
        self.holds.hold(slot, id, id);
    }

    /// `slot` went out in the lent sends `first..=last`.
    pub fn hold_range(&mut self, slot: usize, first: u32, last: u32) {
        self.holds.hold(slot, first, last);
    }

    /// Frees every slot whose sends `c` finishes covering.
    pub fn release(&mut self, c: &Completion) {
        self.holds.release(c);
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.holds.held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(first: u32, last: u32) -> Completion {
        Completion {
            first,
            last,
            copied: false,
        }
    }

    #[test]
    fn slots_stay_held_until_their_id_is_notified() {
        let mut h = LentHeaders::new(2, 12);
        let a = h.take().unwrap();
        let b = h.take().unwrap();
        assert_eq!(h.take(), None, "two slots only");
        h.slot_mut(a).copy_from_slice(&[1; 12]);
        h.hold(a, u32::MAX);
        h.hold(b, 0);
        h.release(&c(5, 9));
        assert_eq!(h.held(), 2, "an unrelated range frees nothing");
        h.release(&Completion {
            first: u32::MAX,
            last: u32::MAX,
            copied: true,
        });
        assert_eq!(h.held(), 1);
        assert_eq!(h.take(), Some(a));
        assert_eq!(h.slot(a), &[1; 12]);
        h.put_back(a);
        h.release(&c(u32::MAX, 0));
        assert_eq!(h.held(), 0, "a range that wraps covers id 0");
    }

    #[test]
    fn a_slot_held_for_several_sends_waits_for_all_of_them() {
        let mut h = SlotHolds::new(1);
        let s = h.take().unwrap();
        h.hold(s, u32::MAX - 1, 1); // four ids, wrapping
        h.release(&c(0, 0));
        h.release(&c(u32::MAX - 1, u32::MAX - 1));
        assert_eq!(h.held(), 1, "two of four notified");
        h.release(&c(5, 9));
        h.release(&c(u32::MAX, u32::MAX));
        assert_eq!(h.held(), 1, "three of four notified");
        h.release(&c(1, 3));
        assert_eq!(h.held(), 0);
        assert_eq!(h.take(), Some(s));
    }
}
