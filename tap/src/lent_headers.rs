//! Header bytes an attachment puts in front of a lent frame.
//!
//! With `MSG_ZEROCOPY` the kernel pins every page of the send, including
//! the pages of headers that live in zcnet's memory, and reads them until
//! its notification for that send arrives. So a header sent with a lent
//! frame must stay unchanged until then: it gets a slot here, released by
//! the notification that covers its send's id.

use crate::attachment::Completion;

/// A fixed set of header slots of `slot_len` bytes each, allocated once.
pub struct LentHeaders {
    bytes: Box<[u8]>,
    slot_len: usize,
    /// The zero-copy id each slot is held for; `None` when free.
    held: Box<[Option<u32>]>,
    free: Vec<usize>,
}

impl LentHeaders {
    /// `slots` slots of `slot_len` bytes.
    pub fn new(slots: usize, slot_len: usize) -> Self {
        LentHeaders {
            bytes: vec![0u8; slots * slot_len].into_boxed_slice(),
            slot_len,
            held: vec![None; slots].into_boxed_slice(),
            free: (0..slots).rev().collect(),
        }
    }

    /// A free slot, or `None` when every slot is held (send by copy then).
    pub fn take(&mut self) -> Option<usize> {
        self.free.pop()
    }

    /// Gives back a slot taken but not used for a lent send.
    pub fn put_back(&mut self, slot: usize) {
        debug_assert!(self.held[slot].is_none());
        self.free.push(slot);
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
        self.held[slot] = Some(id);
    }

    /// Frees every slot whose send `c` covers.
    pub fn release(&mut self, c: &Completion) {
        let span = c.last.wrapping_sub(c.first);
        for (slot, held) in self.held.iter_mut().enumerate() {
            if let Some(id) = *held {
                if id.wrapping_sub(c.first) <= span {
                    *held = None;
                    self.free.push(slot);
                }
            }
        }
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held.iter().filter(|h| h.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_held_until_their_id_is_notified() {
        let mut h = LentHeaders::new(2, 12);
        let a = h.take().unwrap();
        let b = h.take().unwrap();
        assert_eq!(h.take(), None, "two slots only");
        h.slot_mut(a).copy_from_slice(&[1; 12]);
        h.hold(a, u32::MAX);
        h.hold(b, 0);
        h.release(&Completion {
            first: 5,
            last: 9,
            copied: false,
        });
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
        h.release(&Completion {
            first: u32::MAX,
            last: 0,
            copied: false,
        });
        assert_eq!(h.held(), 0, "a range that wraps covers id 0");
    }
}
