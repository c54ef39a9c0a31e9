//! Zero-copy ids across the successive TCP sockets of one attachment.
//!
//! The kernel numbers the `MSG_ZEROCOPY` sends of each socket from 0. The
//! completion engine sees one id space per attachment, which must never
//! hand out an id twice while a chain may still wait for it. So the ids
//! the engine sees are the socket's own ids plus a per-socket offset
//! (`base`): a new socket's kernel id 0 maps to the first engine id the
//! previous socket never used ([`SocketIds::successor`]). Engine ids
//! therefore keep increasing (mod 2^32) across reconnects, and a late
//! notification can never complete a chain of another socket.
//!
//! Which ids a socket still has outstanding is a bitmap over a window
//! that starts at its oldest unreleased id: a fixed size, so taking and
//! completing ids never allocates. Past the window a send is copied
//! ([`SocketIds::can_take`]). Only ids marked outstanding are ever
//! reported to the engine, each once: a notification covers what it
//! covers of them, and [`SocketIds::retire`] the rest when the socket is
//! gone.

use crate::attachment::Completion;

/// Kernel ids a socket may have outstanding at once, from its oldest
/// unreleased one (a power of two, so ids keep their bit across the
/// wrap at 2^32). The engine lends at most 128 chains per queue, and a
/// chain takes an id per `MSG_ZEROCOPY` call of its frame.
pub(super) const WINDOW: u32 = 4096;
const WORDS: usize = WINDOW as usize / 64;

/// The ids of one socket.
#[derive(Debug)]
pub(super) struct SocketIds {
    /// The engine id of this socket's kernel id 0.
    base: u32,
    /// How many ids the socket took: its next kernel id.
    taken: u32,
    /// Every kernel id before this one is released.
    oldest: u32,
    /// Ids taken and not released.
    outstanding: u32,
    /// Bit `id % WINDOW`: id (in `oldest..taken`) is outstanding.
    bits: [u64; WORDS],
}

impl SocketIds {
    /// The ids of a socket whose kernel id 0 is engine id `base`.
    pub(super) fn new(base: u32) -> Self {
        SocketIds {
            base,
            taken: 0,
            oldest: 0,
            outstanding: 0,
            bits: [0; WORDS],
        }
    }

    /// The ids of the socket after this one: they start past every id
    /// this one took.
    pub(super) fn successor(&self) -> Self {
        Self::new(self.base.wrapping_add(self.taken))
    }

    /// Whether the window has room for one more id.
    pub(super) fn can_take(&self) -> bool {
        self.taken.wrapping_sub(self.oldest) < WINDOW
    }

    /// Records a successful `MSG_ZEROCOPY` call; returns its engine id.
    /// Only after [`can_take`](Self::can_take) said yes.
    pub(super) fn take(&mut self) -> u32 {
        debug_assert!(self.can_take());
        let kernel = self.taken;
        self.taken = kernel.wrapping_add(1);
        self.set(kernel, true);
        self.outstanding += 1;
        self.base.wrapping_add(kernel)
    }

    /// Sends not yet released.
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding as usize
    }

    /// Applies a notification of this socket (kernel ids, inclusive,
    /// wrapping): appends, in engine ids, one completion per run of
    /// outstanding ids it covers, and forgets them.
    pub(super) fn complete(&mut self, c: Completion, out: &mut Vec<Completion>) {
        let span = self.taken.wrapping_sub(self.oldest);
        let covers = c.last.wrapping_sub(c.first);
        let mut run = Run::default();
        if covers < span {
            // A short notification: walk its ids.
            for i in 0..=covers {
                let id = c.first.wrapping_add(i);
                if id.wrapping_sub(self.oldest) < span && self.release(id) {
                    run.add(id, self, c.copied, out);
                }
            }
        } else {
            // A long one: walk the window.
            for i in 0..span {
                let id = self.oldest.wrapping_add(i);
                if id.wrapping_sub(c.first) <= covers && self.release(id) {
                    run.add(id, self, c.copied, out);
                }
            }
        }
        run.end(self, c.copied, out);
        while self.oldest != self.taken && !self.get(self.oldest) {
            self.oldest = self.oldest.wrapping_add(1);
        }
    }

    /// The socket is gone and its write queue purged: appends a
    /// completion for every id the kernel never reported (one per run of
    /// consecutive ids), and forgets them.
    pub(super) fn retire(&mut self, out: &mut Vec<Completion>) {
        let span = self.taken.wrapping_sub(self.oldest);
        let mut run = Run::default();
        for i in 0..span {
            let id = self.oldest.wrapping_add(i);
            if self.release(id) {
                run.add(id, self, false, out);
            }
        }
        run.end(self, false, out);
        self.oldest = self.taken;
    }

    /// Marks `id` released; returns whether it was outstanding.
    fn release(&mut self, id: u32) -> bool {
        let was = self.get(id);
        if was {
            self.set(id, false);
            self.outstanding -= 1;
        }
        was
    }

    fn get(&self, id: u32) -> bool {
        let bit = (id % WINDOW) as usize;
        self.bits[bit / 64] & (1 << (bit % 64)) != 0
    }

    fn set(&mut self, id: u32, on: bool) {
        let bit = (id % WINDOW) as usize;
        let mask = 1u64 << (bit % 64);
        if on {
            self.bits[bit / 64] |= mask;
        } else {
            self.bits[bit / 64] &= !mask;
        }
    }

    fn engine(&self, first: u32, last: u32, copied: bool) -> Completion {
        Completion {
            first: self.base.wrapping_add(first),
            last: self.base.wrapping_add(last),
            copied,
        }
    }
}

/// A run of consecutive kernel ids being gathered into one completion.
#[derive(Default)]
struct Run(Option<(u32, u32)>);

impl Run {
    fn add(&mut self, id: u32, ids: &SocketIds, copied: bool, out: &mut Vec<Completion>) {
        self.0 = match self.0 {
            Some((first, last)) if last.wrapping_add(1) == id => Some((first, id)),
            Some((first, last)) => {
                out.push(ids.engine(first, last, copied));
                Some((id, id))
            }
            None => Some((id, id)),
        };
    }

    fn end(self, ids: &SocketIds, copied: bool, out: &mut Vec<Completion>) {
        if let Some((first, last)) = self.0 {
            out.push(ids.engine(first, last, copied));
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

    fn complete(m: &mut SocketIds, n: Completion) -> Vec<Completion> {
        let mut out = Vec::new();
        m.complete(n, &mut out);
        out
    }

    fn retire(m: &mut SocketIds) -> Vec<Completion> {
        let mut out = Vec::new();
        m.retire(&mut out);
        out
    }

    #[test]
    fn a_new_socket_continues_the_id_space() {
        let mut m = SocketIds::new(0);
        assert_eq!((m.take(), m.take(), m.take()), (0, 1, 2));
        assert_eq!(complete(&mut m, c(0, 0)), vec![c(0, 0)]);
        assert_eq!(
            retire(&mut m),
            vec![c(1, 2)],
            "only what was never released"
        );
        // The next socket's kernel id 0 is engine id 3.
        let mut m = m.successor();
        assert_eq!(m.take(), 3);
        assert_eq!(complete(&mut m, c(0, 0)), vec![c(3, 3)]);
        assert_eq!(m.outstanding(), 0);
        assert!(retire(&mut m).is_empty());
        assert_eq!(m.successor().take(), 4);
    }

    #[test]
    fn out_of_order_notifications_leave_gaps_that_retire_reports() {
        let mut m = SocketIds::new(0);
        for _ in 0..6 {
            m.take();
        }
        assert_eq!(complete(&mut m, c(1, 2)), vec![c(1, 2)]);
        assert_eq!(complete(&mut m, c(4, 4)), vec![c(4, 4)]);
        assert_eq!(m.outstanding(), 3);
        assert_eq!(retire(&mut m), vec![c(0, 0), c(3, 3), c(5, 5)]);
        assert_eq!(m.outstanding(), 0);
    }

    #[test]
    fn an_id_is_reported_once_however_often_it_is_covered() {
        let mut m = SocketIds::new(100);
        for _ in 0..5 {
            m.take();
        }
        assert_eq!(complete(&mut m, c(1, 1)), vec![c(101, 101)]);
        assert_eq!(
            complete(&mut m, c(0, 3)),
            vec![c(100, 100), c(102, 103)],
            "id 1 again is not reported twice"
        );
        assert!(complete(&mut m, c(2, 2)).is_empty());
        assert!(complete(&mut m, c(9, 20)).is_empty(), "never taken");
        assert_eq!(
            complete(&mut m, c(3, 2)),
            vec![c(104, 104)],
            "a range that wraps all the way round covers the rest"
        );
        assert!(retire(&mut m).is_empty());
    }

    #[test]
    fn a_full_window_refuses_ids_until_the_oldest_is_released() {
        let mut m = SocketIds::new(0);
        for _ in 0..WINDOW {
            assert!(m.can_take());
            m.take();
        }
        assert!(!m.can_take());
        complete(&mut m, c(1, WINDOW - 1));
        assert!(!m.can_take(), "the oldest still holds the window");
        assert_eq!(complete(&mut m, c(0, 0)), vec![c(0, 0)]);
        assert!(m.can_take());
        assert_eq!(m.take(), WINDOW);
        assert_eq!(retire(&mut m), vec![c(WINDOW, WINDOW)]);
    }

    #[test]
    fn ids_wrap_in_both_spaces() {
        let mut m = SocketIds::new(u32::MAX - 1);
        m.taken = u32::MAX;
        m.oldest = u32::MAX;
        // Kernel ids u32::MAX, 0, 1: engine ids u32::MAX - 2, u32::MAX - 1,
        // u32::MAX.
        assert_eq!(m.take(), u32::MAX - 2);
        assert_eq!(m.take(), u32::MAX - 1);
        assert_eq!(m.take(), u32::MAX);
        assert_eq!(
            complete(&mut m, c(u32::MAX, 0)),
            vec![c(u32::MAX - 2, u32::MAX - 1)]
        );
        assert_eq!(m.outstanding(), 1);
        assert_eq!(retire(&mut m), vec![c(u32::MAX, u32::MAX)]);
        assert_eq!(m.successor().take(), 0, "the engine's id space wraps too");
    }
}
