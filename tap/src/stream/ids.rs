//! Zero-copy ids across the successive TCP sockets of one attachment.
//!
//! The kernel numbers the `MSG_ZEROCOPY` sends of each socket from 0. The
//! completion engine sees one id space per attachment, which must never
//! hand out an id twice while a chain may still wait for it. So the ids
//! the engine sees are the socket's own ids plus a per-attachment offset
//! (`base`): a new socket's kernel id 0 maps to the first engine id the
//! previous socket never used. Engine ids therefore keep increasing (mod
//! 2^32) across reconnects, and a late notification can never complete a
//! chain of another socket.
//!
//! When a socket dies with sends outstanding, [`IdMap::retire`] reports
//! them complete (the caller has purged the socket's write queue first),
//! exactly once, and moves the offset past every id the socket took.

use std::collections::BTreeSet;

use crate::attachment::Completion;

#[derive(Debug, Default)]
pub(super) struct IdMap {
    /// The engine id of the current socket's kernel id 0.
    base: u32,
    /// How many ids the current socket took: its next kernel id.
    taken: u32,
    /// Kernel ids of the current socket the kernel has not released yet.
    outstanding: BTreeSet<u32>,
}

impl IdMap {
    /// Records a successful `MSG_ZEROCOPY` call; returns its engine id.
    pub(super) fn take(&mut self) -> u32 {
        let kernel = self.taken;
        self.taken = kernel.wrapping_add(1);
        self.outstanding.insert(kernel);
        self.base.wrapping_add(kernel)
    }

    /// Sends of the current socket not yet released.
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Translates a notification of the current socket (kernel ids,
    /// inclusive, wrapping) into engine ids, and forgets the ids it covers.
    pub(super) fn complete(&mut self, c: Completion) -> Completion {
        let covered: Vec<u32> = if c.first <= c.last {
            self.outstanding.range(c.first..=c.last).copied().collect()
        } else {
            self.outstanding
                .range(c.first..)
                .chain(self.outstanding.range(..=c.last))
                .copied()
                .collect()
        };
        for id in covered {
            self.outstanding.remove(&id);
        }
        Completion {
            first: self.base.wrapping_add(c.first),
            last: self.base.wrapping_add(c.last),
            copied: c.copied,
        }
    }

    /// The current socket is gone: appends a completion for every id it
    /// took that the kernel never reported (one per run of consecutive
    /// ids), and starts the next socket's ids past all of them.
    pub(super) fn retire(&mut self, out: &mut Vec<Completion>) {
        let mut run: Option<(u32, u32)> = None;
        for &id in &self.outstanding {
            run = match run {
                Some((first, last)) if last.wrapping_add(1) == id => Some((first, id)),
                Some((first, last)) => {
                    out.push(self.synthetic(first, last));
                    Some((id, id))
                }
                None => Some((id, id)),
            };
        }
        if let Some((first, last)) = run {
            out.push(self.synthetic(first, last));
        }
        self.outstanding.clear();
        self.base = self.base.wrapping_add(self.taken);
        self.taken = 0;
    }

    fn synthetic(&self, first: u32, last: u32) -> Completion {
        Completion {
            first: self.base.wrapping_add(first),
            last: self.base.wrapping_add(last),
            copied: false,
        }
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
    fn a_new_socket_continues_the_id_space() {
        let mut m = IdMap::default();
        assert_eq!((m.take(), m.take(), m.take()), (0, 1, 2));
        assert_eq!(m.complete(c(0, 0)), c(0, 0));
        let mut out = Vec::new();
        m.retire(&mut out);
        assert_eq!(out, vec![c(1, 2)], "only what the kernel never released");
        // The next socket's kernel id 0 is engine id 3.
        assert_eq!(m.take(), 3);
        assert_eq!(m.complete(c(0, 0)), c(3, 3));
        assert_eq!(m.outstanding(), 0);
        out.clear();
        m.retire(&mut out);
        assert!(out.is_empty());
        assert_eq!(m.take(), 4);
    }

    #[test]
    fn out_of_order_notifications_leave_gaps_that_retire_reports() {
        let mut m = IdMap::default();
        for _ in 0..6 {
            m.take();
        }
        m.complete(c(1, 2));
        m.complete(c(4, 4));
        assert_eq!(m.outstanding(), 3);
        let mut out = Vec::new();
        m.retire(&mut out);
        assert_eq!(out, vec![c(0, 0), c(3, 3), c(5, 5)]);
    }

    #[test]
    fn ids_wrap_in_both_spaces() {
        let mut m = IdMap {
            base: u32::MAX - 1,
            taken: u32::MAX,
            outstanding: BTreeSet::new(),
        };
        // Kernel ids u32::MAX and 0: engine ids u32::MAX - 2 and u32::MAX - 1.
        assert_eq!(m.take(), u32::MAX - 2);
        assert_eq!(m.take(), u32::MAX - 1);
        assert_eq!(m.take(), u32::MAX);
        assert_eq!(m.complete(c(u32::MAX, 0)), c(u32::MAX - 2, u32::MAX - 1));
        assert_eq!(m.outstanding(), 1);
        let mut out = Vec::new();
        m.retire(&mut out);
        assert_eq!(out, vec![c(u32::MAX, u32::MAX)]);
        assert_eq!(m.take(), 0, "the engine's id space wraps too");
    }
}
