//! What a restart does with one queue's record: vhost-user's "When
//! reconnecting" procedure for split rings, plus zcnet's checks that the
//! record belongs to this ring. Decided from a snapshot of the record and
//! the ring as it is now, touching neither, so every case is a unit test.

use super::record::{RingId, Snapshot, VERSION};

/// Which way the queue carries frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rx,
    Tx,
}

/// The ring as the restarted zcnet finds it.
#[derive(Clone, Copy, Debug)]
pub struct RingNow {
    pub id: RingId,
    /// The used index in guest memory.
    pub used_idx: u16,
    /// The driver's avail index.
    pub avail_idx: u16,
}

/// zcnet puts one chain on the used ring per update (`RingState::add_used`),
/// so a crash leaves at most one used entry whose flag is still set.
const MAX_BATCH: u16 = 1;

#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// No ring was running on this queue (never started, or stopped
    /// cleanly by GET_VRING_BASE): start at the frontend's base.
    Fresh,
    /// The record was written for another ring (another guest, or the
    /// driver laid its rings out anew): not this ring's; ignore it.
    Discard(String),
    /// The record was written for this ring, but the ring does not show
    /// what the record implies (it was reset or rewritten while zcnet was
    /// down): the chains the record had in flight cannot be returned.
    Unrecoverable { chains: usize, why: String },
    /// Resume where zcnet stopped.
    Resume(Resume),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Resume {
    /// Heads whose flag was still set although the used ring already has
    /// them (the crash fell between the used-ring write and the flag's
    /// clearing): not in flight.
    pub fixed: Vec<u16>,
    /// The chains in flight, in the order they were popped (the spec's
    /// counter order).
    pub heads: Vec<u16>,
    /// The ring's used index.
    pub used_idx: u16,
    pub action: Action,
    /// The counter for the next chain popped.
    pub next_counter: u64,
}

impl Resume {
    /// Where popping goes on once `action` is done: every chain before it
    /// is on the used ring.
    pub fn next_avail(&self) -> u16 {
        match self.action {
            Action::Repop => self.used_idx,
            Action::Return | Action::ReturnEmpty => {
                self.used_idx.wrapping_add(self.heads.len() as u16)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// TX: the chains were sent (or lent) before the crash. They go on the
    /// used ring without being sent again: a frame may be lost, never
    /// duplicated.
    Return,
    /// RX: the chains are the guest's posted buffers, and they are the
    /// next entries of the avail ring from the used index, in the order
    /// they were popped (zcnet uses RX chains in order). Popping them
    /// again from there resubmits them in counter order.
    Repop,
    /// RX chains that are not found there in order (zcnet does not leave
    /// such a record): given back empty, so none is lost.
    ReturnEmpty,
}

/// Decides what to do with `snap`, the record of a queue whose ring now
/// looks like `now`. `avail_entry(i)` reads the avail ring's entry at
/// index `i` (modulo the size).
pub fn plan(
    snap: &Snapshot,
    now: &RingNow,
    kind: Kind,
    avail_entry: impl Fn(u16) -> Option<u16>,
) -> Plan {
    if !snap.running {
        return Plan::Fresh;
    }
    if snap.id != now.id {
        return Plan::Discard(format!(
            "it was written for another ring ({}), not this one ({})",
            describe(&snap.id),
            describe(&now.id)
        ));
    }
    let size = now.id.size;
    let recorded = snap.descs.iter().filter(|d| d.inflight).count();
    let unrecoverable = |chains: usize, why: String| Plan::Unrecoverable { chains, why };
    if snap.version != VERSION || snap.desc_num != size || snap.descs.len() != usize::from(size) {
        return unrecoverable(
            recorded,
            format!(
                "the record is damaged (version {}, {} descriptors for a {size}-entry ring)",
                snap.version, snap.desc_num
            ),
        );
    }
    let mut inflight: Vec<bool> = snap.descs.iter().map(|d| d.inflight).collect();
    let mut fixed = Vec::new();
    // The last batch: used entries the ring has past the record's used
    // index; their flags may not have been cleared.
    let batch = now.used_idx.wrapping_sub(snap.used_idx);
    if batch > MAX_BATCH {
        return unrecoverable(
            recorded,
            format!(
                "the ring's used index is {} but the record's is {}: the ring was reset or \
                 written by someone else while zcnet was down",
                now.used_idx, snap.used_idx
            ),
        );
    }
    let mut head = snap.last_batch_head;
    for _ in 0..batch {
        let Some(slot) = inflight.get_mut(usize::from(head)) else {
            return unrecoverable(
                recorded,
                format!("the record's last batch starts at head {head}, past the ring's {size}"),
            );
        };
        *slot = false;
        fixed.push(head);
        head = snap.descs[usize::from(head)].next;
    }
    let mut heads: Vec<u16> = (0..size).filter(|&h| inflight[usize::from(h)]).collect();
    heads.sort_by_key(|&h| (snap.descs[usize::from(h)].counter, h));
    let outstanding = now.avail_idx.wrapping_sub(now.used_idx);
    if outstanding > size || heads.len() > usize::from(outstanding) {
        return unrecoverable(
            heads.len(),
            format!(
                "{} chains are recorded in flight but the driver has {outstanding} outstanding \
                 (avail index {}, used index {})",
                heads.len(),
                now.avail_idx,
                now.used_idx
            ),
        );
    }
    let action = match kind {
        Kind::Tx => Action::Return,
        Kind::Rx => {
            let in_order = heads
                .iter()
                .enumerate()
                .all(|(i, &h)| avail_entry(now.used_idx.wrapping_add(i as u16)) == Some(h));
            if in_order {
                Action::Repop
            } else {
                Action::ReturnEmpty
            }
        }
    };
    let next_counter = snap
        .descs
        .iter()
        .map(|d| d.counter)
        .max()
        .map_or(0, |c| c.wrapping_add(1));
    Plan::Resume(Resume {
        fixed,
        heads,
        used_idx: now.used_idx,
        action,
        next_counter,
    })
}

fn describe(id: &RingId) -> String {
    format!(
        "{} entries at {:#x}/{:#x}/{:#x}, memory file {}:{}",
        id.size, id.desc, id.avail, id.used, id.dev, id.ino
    )
}

#[cfg(test)]
mod tests {
    use super::super::record::DescSnap;
    use super::*;

    const ID: RingId = RingId {
        size: 16,
        desc: 0x10_0000,
        avail: 0x10_0100,
        used: 0x10_0124,
        dev: 42,
        ino: 7,
    };

    /// A running record of ring `ID` with used index `used` and `inflight`
    /// as (head, counter).
    fn snap(used: u16, inflight: &[(u16, u64)]) -> Snapshot {
        let mut descs = vec![DescSnap::default(); 16];
        for &(h, c) in inflight {
            descs[usize::from(h)] = DescSnap {
                inflight: true,
                next: 0,
                counter: c,
            };
        }
        Snapshot {
            running: true,
            id: ID,
            version: VERSION,
            desc_num: 16,
            last_batch_head: 0,
            used_idx: used,
            descs,
        }
    }

    fn now(used: u16, avail: u16) -> RingNow {
        RingNow {
            id: ID,
            used_idx: used,
            avail_idx: avail,
        }
    }

    fn resume(p: Plan) -> Resume {
        match p {
            Plan::Resume(r) => r,
            other => panic!("expected to resume, got {other:?}"),
        }
    }

    fn no_avail(_: u16) -> Option<u16> {
        None
    }

    #[test]
    fn the_field_case_returns_the_lent_chains_and_resumes_at_the_avail_index() {
        // h0..h5 popped with counters 0..5; h0, h2, h3 used; h1, h4, h5 lent.
        let s = snap(3, &[(4, 4), (1, 1), (5, 5)]);
        let r = resume(plan(&s, &now(3, 6), Kind::Tx, no_avail));
        assert_eq!(r.heads, vec![1, 4, 5], "counter order");
        assert_eq!(r.action, Action::Return);
        assert!(r.fixed.is_empty());
        assert_eq!(r.next_avail(), 6, "not the used index QEMU sets, 3");
        assert_eq!(r.next_counter, 6);
    }

    #[test]
    fn popped_but_unused_chains_after_them_are_popped_again() {
        // Chains 6 and 7 were published but never popped: the avail index
        // is past the next avail index, which is still 6.
        let s = snap(3, &[(1, 1), (4, 4), (5, 5)]);
        let r = resume(plan(&s, &now(3, 8), Kind::Tx, no_avail));
        assert_eq!(
            r.next_avail(),
            6,
            "not the avail index cloud-hypervisor sets, 8"
        );
    }

    #[test]
    fn resubmission_follows_the_counter_not_the_head_index() {
        let s = snap(10, &[(9, 102), (2, 100), (14, 101)]);
        let r = resume(plan(&s, &now(10, 20), Kind::Tx, no_avail));
        assert_eq!(r.heads, vec![2, 14, 9]);
    }

    #[test]
    fn a_crash_between_the_used_write_and_the_flag_is_fixed_up() {
        // Chain 3 reached the used ring (used index 4) but its flag and
        // the record's used index were not updated.
        let mut s = snap(3, &[(1, 1), (3, 3), (4, 4)]);
        s.last_batch_head = 3;
        let r = resume(plan(&s, &now(4, 6), Kind::Tx, no_avail));
        assert_eq!(r.fixed, vec![3]);
        assert_eq!(r.heads, vec![1, 4], "3 is not returned a second time");
        assert_eq!(r.next_avail(), 6);
        // The flag was cleared but the used index was not stored: same.
        let mut s = snap(3, &[(1, 1), (4, 4)]);
        s.last_batch_head = 3;
        let r = resume(plan(&s, &now(4, 6), Kind::Tx, no_avail));
        assert_eq!(r.heads, vec![1, 4]);
        assert_eq!(r.next_avail(), 6);
    }

    #[test]
    fn indices_wrap() {
        let mut s = snap(65535, &[(5, 70_000), (6, 70_001)]);
        s.last_batch_head = 2;
        s.descs[2] = DescSnap {
            inflight: true,
            next: 0,
            counter: 69_999,
        };
        let r = resume(plan(&s, &now(0, 3), Kind::Tx, no_avail));
        assert_eq!(r.fixed, vec![2]);
        assert_eq!(r.heads, vec![5, 6]);
        assert_eq!(r.next_avail(), 2);
    }

    #[test]
    fn rx_chains_next_on_the_avail_ring_are_popped_again_in_order() {
        let s = snap(5, &[(11, 20), (12, 21)]);
        let avail = |i: u16| match i {
            5 => Some(11),
            6 => Some(12),
            _ => Some(0),
        };
        let r = resume(plan(&s, &now(5, 9), Kind::Rx, avail));
        assert_eq!(r.action, Action::Repop);
        assert_eq!(r.next_avail(), 5, "the buffers are used before newer ones");
        // Not where they should be: given back empty instead.
        let swapped = |i: u16| match i {
            5 => Some(12),
            6 => Some(11),
            _ => None,
        };
        let r = resume(plan(&s, &now(5, 9), Kind::Rx, swapped));
        assert_eq!(r.action, Action::ReturnEmpty);
        assert_eq!(r.heads, vec![11, 12]);
        assert_eq!(r.next_avail(), 7);
    }

    #[test]
    fn a_record_of_no_running_ring_leaves_the_frontends_base() {
        let mut s = snap(3, &[(1, 1)]);
        s.running = false;
        assert_eq!(plan(&s, &now(3, 6), Kind::Tx, no_avail), Plan::Fresh);
        assert_eq!(
            plan(&Snapshot::default(), &now(0, 0), Kind::Rx, no_avail),
            Plan::Fresh
        );
    }

    #[test]
    fn a_record_of_another_ring_is_discarded() {
        let s = snap(3, &[(1, 1)]);
        for other in [
            RingId {
                desc: 0x20_0000,
                ..ID
            },
            RingId {
                used: 0x10_0200,
                ..ID
            },
            RingId { size: 32, ..ID },
            RingId { ino: 8, ..ID },
        ] {
            let n = RingNow {
                id: other,
                ..now(3, 6)
            };
            assert!(
                matches!(plan(&s, &n, Kind::Tx, no_avail), Plan::Discard(_)),
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_ring_that_moved_on_without_zcnet_is_unrecoverable_and_counted() {
        let s = snap(3, &[(1, 1), (4, 4), (5, 5)]);
        // The driver reset its ring in place: used index 0.
        match plan(&s, &now(0, 0), Kind::Tx, no_avail) {
            Plan::Unrecoverable { chains, why } => {
                assert_eq!(chains, 3);
                assert!(
                    why.contains("used index is 0 but the record's is 3"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Fewer chains outstanding than recorded in flight.
        match plan(&s, &now(3, 5), Kind::Tx, no_avail) {
            Plan::Unrecoverable { chains, why } => {
                assert_eq!(chains, 3);
                assert!(why.contains("2 outstanding"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let mut damaged = snap(3, &[(1, 1)]);
        damaged.version = 0;
        assert!(matches!(
            plan(&damaged, &now(3, 6), Kind::Tx, no_avail),
            Plan::Unrecoverable { chains: 1, .. }
        ));
    }
}
