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
    /// Which ids notifications have covered, as sorted, disjoint,
    /// half-open ranges of offsets from `first_id`. Empty (no allocation)
    /// until a notification covers only part of the chain: the usual
    /// notification covers whole chains and never touches it. Kept so that
    /// an id covered twice (a repeated or overlapping range) counts once.
    covered: Vec<(u64, u64)>,
}

impl Pending {
    /// Marks the chain's ids in `first..first + span + 1` (ids wrap at
    /// 2^32) covered; returns how many of them were not covered before.
    fn cover(&mut self, first: u32, span: u32) -> u32 {
        const WRAP: u64 = 1 << 32;
        let ids = u64::from(self.ids);
        // The notification as offsets from our first id: [start, end),
        // with end up to 2^33 when the range wraps past our first id.
        let start = u64::from(first.wrapping_sub(self.first_id));
        let end = start + u64::from(span) + 1;
        let mut hits = [
            (start, end.min(ids)),
            (0, end.saturating_sub(WRAP).min(ids)),
        ];
        if self.covered.is_empty() && hits.iter().any(|&(a, b)| a == 0 && b == ids) {
            // The whole chain at once: the common case.
            let newly = self.left;
            self.left = 0;
            return newly;
        }
        let before: u64 = self.covered.iter().map(|&(a, b)| b - a).sum();
        for hit in &mut hits {
            if hit.0 < hit.1 {
                self.covered.push(*hit);
            }
        }
        self.covered.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.covered.len());
        for &(a, b) in &self.covered {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.covered = merged;
        let after: u64 = self.covered.iter().map(|&(a, b)| b - a).sum();
        // `after <= ids`, which fits a u32.
        self.left = (ids - after) as u32;
        (after - before) as u32
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

    /// How to send a frame of `len` bytes, and why it is copied when it
    /// could have been lent.
    /// Whether the next frame would be copied for the cap.
    pub fn at_cap(&self, ring_size: u16) -> bool {
        self.policy.mode != ZeroCopyMode::Off && self.pending.len() >= self.cap(ring_size)
    }

    fn cap(&self, ring_size: u16) -> usize {
        self.policy.cap.min(usize::from(ring_size / 4).max(1))
    }

    /// The cap is also at most a quarter of the ring (`ring_size`), so
    /// the guest always has room to queue more frames.
    pub fn choose(&mut self, len: usize, ring_size: u16) -> (SendMode, Option<CopyReason>) {
        if self.policy.mode == ZeroCopyMode::Off || len < self.policy.min_bytes {
            return (SendMode::Copy, None);
        }
        if self.pending.len() >= self.cap(ring_size) {
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
            covered: Vec::new(),
        });
        self.max_lent = self.max_lent.max(self.pending.len());
    }

    /// Applies one notification; appends the heads of the chains it
    /// finished to `done`. Returns how many ids it covered, not covered
    /// before, that belong to chains zcnet still holds. An id covered again
    /// (a repeated or overlapping range) does not count twice, so a chain
    /// never comes back before every one of its ids was covered.
    pub fn complete(&mut self, c: Completion, pair: usize, done: &mut Vec<u16>) -> u64 {
        let span = c.last.wrapping_sub(c.first);
        let mut covered = 0u64;
        for p in &mut self.pending {
            if p.left > 0 {
                covered += u64::from(p.cover(c.first, span));
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
        assert_eq!(l.choose(999, 1024), (SendMode::Copy, None));
        assert_eq!(l.choose(1000, 1024), (SendMode::Lend, None));
        l.lend(0, 0, 0);
        l.lend(1, 1, 1);
        assert_eq!(
            l.choose(5000, 1024),
            (SendMode::Copy, Some(CopyReason::Cap))
        );
        assert_eq!(l.max_lent, 2);
        let mut off = engine(ZeroCopyMode::Off, 2);
        assert_eq!(off.choose(60000, 1024), (SendMode::Copy, None));
    }

    #[test]
    fn auto_backs_off_after_a_streak_of_copied_and_probes_again() {
        let mut l = engine(ZeroCopyMode::Auto, 1024);
        let mut done = Vec::new();
        for id in 0..COPIED_STREAK {
            assert_eq!(l.choose(5000, 1024).0, SendMode::Lend);
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
                l.choose(5000, 1024),
                (SendMode::Copy, Some(CopyReason::Backoff))
            );
        }
        assert_eq!(l.choose(5000, 1024).0, SendMode::Lend, "probes again");
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
        assert_eq!(on.choose(5000, 1024).0, SendMode::Lend);
    }
}
