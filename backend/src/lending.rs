//! The TX completion engine: which frames to lend, and which lent chains
//! the kernel's notifications complete.
//!
//! Invariants (../shared/DESIGN.md): a lent chain goes to the used ring
//! only when notifications cover every id of its frame (not early), each
//! chain is returned once (the engine forgets a chain as it hands it
//! back), chains lent at once are capped (past the cap frames are copied,
//! so the guest never waits on the kernel), and completions may arrive in
//! any order, which is why IN_ORDER is never negotiated.
//!
//! A pending chain is kept by head index and id range only, never by
//! pointer: the memory table may change while pages are lent (the kernel
//! holds its own page references).

use std::collections::VecDeque;

use log::info;
use zcnet_tap::{Completion, SendMode};

/// `--zerocopy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ZeroCopyMode {
    /// Lend, but copy while the kernel keeps reporting that it copied.
    #[default]
    Auto,
    /// Lend every frame at or above the threshold.
    On,
    /// Copy every frame.
    Off,
}

/// How lending is decided for one queue.
#[derive(Clone, Copy, Debug)]
pub struct LendPolicy {
    pub mode: ZeroCopyMode,
    /// Frames shorter than this are copied.
    pub min_bytes: usize,
    /// The most chains lent at once (vhost-net: min(128, ring/4)).
    pub cap: usize,
}

/// In `auto`, this many sends completed COPIED in a row mean the path copies
/// anyway (local delivery): copy for `BACKOFF_FRAMES`, then probe again.
const COPIED_STREAK: u32 = 16;
const BACKOFF_FRAMES: u32 = 4096;

#[derive(Clone, Debug)]
struct Pending {
    head: u16,
    first_id: u32,
    ids: u32,
    /// Ids of this chain not yet completed.
    left: u32,
    /// Which ids of the frame have completed (bit `i`: id `first_id + i`),
    /// so an id reported twice is counted once.
    done: IdBits,
}

/// A bitmap of a frame's ids: inline up to 64 ids (a TSO frame's batches,
/// a flood to a few dozen VTEPs: no allocation), on the heap beyond.
#[derive(Clone, Debug)]
enum IdBits {
    Inline(u64),
    Heap(Vec<u64>),
}

impl IdBits {
    fn new(ids: u32) -> Self {
        if ids <= 64 {
            IdBits::Inline(0)
        } else {
            IdBits::Heap(vec![0; ids.div_ceil(64) as usize])
        }
    }

    /// Sets bit `i`; returns whether it was clear.
    fn set(&mut self, i: u32) -> bool {
        let (word, bit) = match self {
            IdBits::Inline(w) => (w, 1u64 << i),
            IdBits::Heap(v) => (&mut v[(i / 64) as usize], 1u64 << (i % 64)),
        };
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

impl Pending {
    /// Marks id `first_id + i` completed; returns whether it was not yet.
    fn mark(&mut self, i: u32) -> bool {
        let fresh = self.done.set(i);
        if fresh {
            self.left -= 1;
        }
        fresh
    }
}

/// Why a frame was copied although lending was possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyReason {
    Cap,
    Backoff,
}

pub struct Lending {
    policy: LendPolicy,
    pending: VecDeque<Pending>,
    copied_streak: u32,
    backoff: u32,
    pub max_lent: usize,
}

impl Lending {
    pub fn new(policy: LendPolicy) -> Self {
        Lending {
            policy,
            pending: VecDeque::new(),
            copied_streak: 0,
            backoff: 0,
            max_lent: 0,
        }
    }

    pub fn lent(&self) -> usize {
        self.pending.len()
    }

    /// Whether the next frame would be copied for the cap, with
    /// `in_batch` frames of the batch being built already chosen to be
    /// lent (they are lent, or not, when the batch has been sent).
    pub fn at_cap(&self, ring_size: u16, in_batch: usize) -> bool {
        self.policy.mode != ZeroCopyMode::Off
            && self.pending.len() + in_batch >= self.cap(ring_size)
    }

    fn cap(&self, ring_size: u16) -> usize {
        self.policy.cap.min(usize::from(ring_size / 4).max(1))
    }

    /// How to send a frame of `len` bytes, and why it is copied when it
    /// could have been lent; `in_batch` frames of the batch being built
    /// are already to be lent and count towards the cap. The cap is also
    /// at most a quarter of the ring (`ring_size`), so the guest always
    /// has room to queue more frames.
    pub fn choose(
        &mut self,
        len: usize,
        ring_size: u16,
        in_batch: usize,
    ) -> (SendMode, Option<CopyReason>) {
        if self.policy.mode == ZeroCopyMode::Off || len < self.policy.min_bytes {
            return (SendMode::Copy, None);
        }
        if self.pending.len() + in_batch >= self.cap(ring_size) {
            return (SendMode::Copy, Some(CopyReason::Cap));
        }
        if self.policy.mode == ZeroCopyMode::Auto && self.backoff > 0 {
            self.backoff -= 1;
            return (SendMode::Copy, Some(CopyReason::Backoff));
        }
        (SendMode::Lend, None)
    }

    /// Records a chain whose frame took ids `first_id..=last_id`.
    pub fn lend(&mut self, head: u16, first_id: u32, last_id: u32) {
        let ids = last_id.wrapping_sub(first_id).wrapping_add(1);
        self.pending.push_back(Pending {
            head,
            first_id,
            ids,
            left: ids,
            done: IdBits::new(ids),
        });
        self.max_lent = self.max_lent.max(self.pending.len());
    }

    /// Applies one notification; appends the heads of the chains it
    /// finished to `done`. Returns how many ids it covered that belong to
    /// chains zcnet still holds and that no earlier notification covered.
    pub fn complete(&mut self, c: Completion, pair: usize, done: &mut Vec<u16>) -> u64 {
        let span = c.last.wrapping_sub(c.first);
        let mut covered = 0u64;
        for p in &mut self.pending {
            for i in 0..p.ids {
                if p.first_id.wrapping_add(i).wrapping_sub(c.first) <= span && p.mark(i) {
                    covered += 1;
                }
            }
        }
        self.pending.retain(|p| {
            if p.left == 0 {
                done.push(p.head);
                false
            } else {
                true
            }
        });
        if self.policy.mode == ZeroCopyMode::Auto {
            if c.copied {
                // One notification may cover many sends.
                self.copied_streak = self.copied_streak.saturating_add(span.saturating_add(1));
                if self.copied_streak >= COPIED_STREAK && self.backoff == 0 {
                    info!(
                        "queue pair {pair}: the kernel copies lent frames anyway (local delivery?); \
                         copying the next {BACKOFF_FRAMES} frames before trying zero-copy again"
                    );
                    self.backoff = BACKOFF_FRAMES;
                    self.copied_streak = 0;
                }
            } else {
                self.copied_streak = 0;
            }
        }
        covered
    }

    /// Forgets every pending chain (the queue stopped before the kernel
    /// released them); returns how many there were.
    pub fn abandon(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        n
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(mode: ZeroCopyMode, cap: usize) -> Lending {
        Lending::new(LendPolicy {
            mode,
            min_bytes: 1000,
            cap,
        })
    }

    fn c(first: u32, last: u32) -> Completion {
        Completion {
            first,
            last,
            copied: false,
        }
    }

    #[test]
    fn out_of_order_ranges_complete_only_whole_frames() {
        let mut l = engine(ZeroCopyMode::On, 8);
        l.lend(10, 0, 0);
        l.lend(11, 1, 2); // a frame that took two ids
        l.lend(12, 3, 3);
        let mut done = Vec::new();
        assert_eq!(l.complete(c(2, 3), 0, &mut done), 2);
        assert_eq!(done, vec![12], "chain 11 still has id 1 outstanding");
        assert_eq!(l.complete(c(0, 1), 0, &mut done), 2);
        assert_eq!(done, vec![12, 10, 11]);
        assert_eq!(l.lent(), 0);
        // A repeated or unknown notification completes nothing.
        assert_eq!(l.complete(c(0, 3), 0, &mut done), 0);
        assert_eq!(done.len(), 3);
    }

    #[test]
    fn an_id_reported_twice_counts_once() {
        let mut l = engine(ZeroCopyMode::On, 8);
        l.lend(5, 0, 2);
        let mut done = Vec::new();
        assert_eq!(l.complete(c(0, 1), 0, &mut done), 2);
        assert_eq!(l.complete(c(1, 1), 0, &mut done), 0);
        assert_eq!(l.complete(c(0, 0), 0, &mut done), 0);
        assert!(done.is_empty(), "id 2 is still out");
        assert_eq!(l.complete(c(1, 2), 0, &mut done), 1);
        assert_eq!(done, vec![5]);
        // Past 64 ids the bitmap lives on the heap, same rules.
        l.lend(6, 10, 109);
        assert_eq!(l.complete(c(10, 100), 0, &mut done), 91);
        assert_eq!(l.complete(c(100, 100), 0, &mut done), 0);
        assert_eq!(done, vec![5]);
        assert_eq!(l.complete(c(101, 109), 0, &mut done), 9);
        assert_eq!(done, vec![5, 6]);
    }

    #[test]
    fn ids_wrap_at_2_pow_32() {
        let mut l = engine(ZeroCopyMode::On, 8);
        l.lend(1, u32::MAX, u32::MAX);
        l.lend(2, 0, 0);
        let mut done = Vec::new();
        l.complete(c(u32::MAX, 0), 0, &mut done);
        assert_eq!(done, vec![1, 2]);
    }

    #[test]
    fn cap_threshold_and_off_copy() {
        let mut l = engine(ZeroCopyMode::On, 2);
        assert_eq!(l.choose(999, 1024, 0), (SendMode::Copy, None));
        assert_eq!(l.choose(1000, 1024, 0), (SendMode::Lend, None));
        l.lend(0, 0, 0);
        l.lend(1, 1, 1);
        assert_eq!(
            l.choose(5000, 1024, 0),
            (SendMode::Copy, Some(CopyReason::Cap))
        );
        assert_eq!(l.max_lent, 2);
        let mut off = engine(ZeroCopyMode::Off, 2);
        assert_eq!(off.choose(60000, 1024, 0), (SendMode::Copy, None));
    }

    #[test]
    fn auto_backs_off_after_a_streak_of_copied_and_probes_again() {
        let mut l = engine(ZeroCopyMode::Auto, 1024);
        let mut done = Vec::new();
        for id in 0..COPIED_STREAK {
            assert_eq!(l.choose(5000, 1024, 0).0, SendMode::Lend);
            l.lend(id as u16, id, id);
            l.complete(
                Completion {
                    first: id,
                    last: id,
                    copied: true,
                },
                0,
                &mut done,
            );
        }
        for _ in 0..BACKOFF_FRAMES {
            assert_eq!(
                l.choose(5000, 1024, 0),
                (SendMode::Copy, Some(CopyReason::Backoff))
            );
        }
        assert_eq!(l.choose(5000, 1024, 0).0, SendMode::Lend, "probes again");
        // `on` never backs off.
        let mut on = engine(ZeroCopyMode::On, 1024);
        for id in 0..2 * COPIED_STREAK {
            on.lend(0, id, id);
            on.complete(
                Completion {
                    first: id,
                    last: id,
                    copied: true,
                },
                0,
                &mut done,
            );
        }
        assert_eq!(on.choose(5000, 1024, 0).0, SendMode::Lend);
    }
}
