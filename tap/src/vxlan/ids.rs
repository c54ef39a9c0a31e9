//! Zero-copy ids across the transmit sockets of one queue pair.
//!
//! The kernel numbers each socket's `MSG_ZEROCOPY` sends from 0, one id per
//! successful call. A queue pair sends through several sockets (one per
//! outer source port, see `attachment`), but the completion engine sees one
//! id space per attachment. So every lent send also gets the pair's next
//! *engine* id, and each socket remembers, in kernel-id order, which engine
//! id each of its outstanding sends got. A notification for kernel ids
//! `a..=b` of a socket becomes notifications for the engine ids of those
//! sends, merged into runs.
//!
//! All the sends of one frame go through one socket (its flow picks it),
//! so a frame's engine ids are consecutive: `Sent::Lent { first_id,
//! last_id }` covers them.
//!
//! # Failed sends may take an id too
//! A `MSG_ZEROCOPY` call that fails while the kernel appends the data
//! gives its id back, but one that fails after the skb was built (EPERM
//! from a netfilter drop on the way out, EINVAL from a `UDP_SEGMENT`
//! check) keeps it: the kernel frees the skb before `sendmsg` returns, and
//! the notification for that id is queued by then (measured here: three
//! EPERM sends took ids 0 to 2, notified at once, and the next good send
//! got id 3). So after a failed lent send the caller records a *phantom*
//! (an id no chain waits for) and reaps the socket at once: a phantom the
//! reap completed took an id; one it did not took none and is removed
//! ([`SocketIds::settle_phantom`]).

use std::collections::VecDeque;

use crate::attachment::Completion;

/// Sends a socket expects to have outstanding at once; more only grows the
/// queue (once).
const EXPECTED_OUTSTANDING: usize = 512;

#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// The engine id of this send (none for a phantom).
    id: Option<u32>,
    /// Guest pages the send lent (for the lent-pages gauge).
    pages: u32,
    done: bool,
}

/// The outstanding lent sends of one socket.
#[derive(Debug)]
pub struct SocketIds {
    /// The kernel id of `inflight[0]`.
    front: u32,
    /// Every send from `front` on, in kernel-id order; the front is popped
    /// once done, so completed sends are forgotten in order.
    inflight: VecDeque<InFlight>,
}

impl Default for SocketIds {
    fn default() -> Self {
        SocketIds {
            front: 0,
            inflight: VecDeque::with_capacity(EXPECTED_OUTSTANDING),
        }
    }
}

impl SocketIds {
    /// Records a successful `MSG_ZEROCOPY` call of this socket that got
    /// engine id `id` and lent `pages` guest pages. The kernel gave it the
    /// socket's next id.
    pub fn lent(&mut self, id: u32, pages: u32) {
        self.inflight.push_back(InFlight {
            id: Some(id),
            pages,
            done: false,
        });
    }

    /// Records a failed `MSG_ZEROCOPY` call that may have taken the
    /// socket's next id (see the module doc); reap the socket, then call
    /// [`settle_phantom`](Self::settle_phantom).
    pub fn phantom(&mut self) {
        self.inflight.push_back(InFlight {
            id: None,
            pages: 0,
            done: false,
        });
    }

    /// After the reap that followed [`phantom`](Self::phantom): if the
    /// kernel notified no id for it, the failed call took none, and the
    /// phantom is removed. Returns whether it had taken an id.
    pub fn settle_phantom(&mut self) -> bool {
        match self.inflight.back() {
            Some(f) if f.id.is_none() && !f.done => {
                self.inflight.pop_back();
                false
            }
            _ => true,
        }
    }

    /// Sends not yet notified.
    pub fn outstanding(&self) -> usize {
        self.inflight
            .iter()
            .filter(|f| !f.done && f.id.is_some())
            .count()
    }

    /// Whether any send waits for its notification.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Translates the kernel's notification `c` for this socket: appends
    /// the engine ids it covers to `out` as runs of consecutive ids, and
    /// returns how many guest pages those sends had lent. Ids already
    /// notified, or never lent, are ignored.
    pub fn complete(&mut self, c: Completion, out: &mut Vec<Completion>) -> u64 {
        let span = c.last.wrapping_sub(c.first);
        let mut pages = 0u64;
        let mut run: Option<Completion> = None;
        for (i, f) in self.inflight.iter_mut().enumerate() {
            let kernel = self.front.wrapping_add(i as u32);
            if f.done || kernel.wrapping_sub(c.first) > span {
                continue;
            }
            f.done = true;
            pages += u64::from(f.pages);
            let Some(id) = f.id else {
                // A phantom: an id no chain waits for.
                continue;
            };
            run = match run {
                Some(r) if r.last.wrapping_add(1) == id => Some(Completion { last: id, ..r }),
                Some(r) => {
                    out.push(r);
                    Some(Completion {
                        first: id,
                        last: id,
                        copied: c.copied,
                    })
                }
                None => Some(Completion {
                    first: id,
                    last: id,
                    copied: c.copied,
                }),
            };
        }
        out.extend(run);
        while self.inflight.front().is_some_and(|f| f.done) {
            self.inflight.pop_front();
            self.front = self.front.wrapping_add(1);
        }
        pages
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
    fn kernel_ranges_become_runs_of_engine_ids() {
        // Two sockets interleaved: socket A's sends got engine ids 0, 1, 4
        // (a frame of two ids, then one), socket B's 2, 3.
        let (mut a, mut b) = (SocketIds::default(), SocketIds::default());
        a.lent(0, 1);
        a.lent(1, 2);
        b.lent(2, 16);
        b.lent(3, 16);
        a.lent(4, 3);
        let mut out = Vec::new();
        assert_eq!(b.complete(c(0, 1), &mut out), 32);
        assert_eq!(out, vec![c(2, 3)]);
        out.clear();
        // Out of order: A's last send first.
        assert_eq!(a.complete(c(2, 2), &mut out), 3);
        assert_eq!(out, vec![c(4, 4)]);
        assert_eq!((a.outstanding(), a.is_idle()), (2, false));
        out.clear();
        assert_eq!(a.complete(c(0, 1), &mut out), 3);
        assert_eq!(out, vec![c(0, 1)]);
        assert!(a.is_idle() && b.is_idle());
        out.clear();
        // Repeated or unknown kernel ids complete nothing.
        assert_eq!(a.complete(c(0, 7), &mut out), 0);
        assert!(out.is_empty());
        // The next send of A is kernel id 3.
        a.lent(9, 1);
        a.complete(c(3, 3), &mut out);
        assert_eq!(out, vec![c(9, 9)]);
    }

    #[test]
    fn a_failed_send_that_took_an_id_is_skipped_and_one_that_did_not_is_forgotten() {
        let mut s = SocketIds::default();
        s.lent(0, 1);
        // A send failed after the kernel built its skb: it took kernel id
        // 1, notified at once (with id 0, merged).
        s.phantom();
        let mut out = Vec::new();
        s.complete(c(0, 1), &mut out);
        assert!(s.settle_phantom());
        assert_eq!(out, vec![c(0, 0)]);
        // A send that failed before: no id taken, no notification.
        s.phantom();
        assert!(!s.settle_phantom());
        assert_eq!(s.outstanding(), 0);
        // The next good send is kernel id 2, whatever came before.
        s.lent(1, 1);
        out.clear();
        s.complete(c(2, 2), &mut out);
        assert_eq!(out, vec![c(1, 1)]);
        assert!(s.is_idle());
    }

    #[test]
    fn copied_is_kept_and_kernel_ids_wrap() {
        let mut s = SocketIds {
            front: u32::MAX,
            inflight: VecDeque::new(),
        };
        s.lent(10, 1);
        s.lent(11, 1);
        let mut out = Vec::new();
        s.complete(
            Completion {
                first: u32::MAX,
                last: 0,
                copied: true,
            },
            &mut out,
        );
        assert_eq!(
            out,
            vec![Completion {
                first: 10,
                last: 11,
                copied: true
            }]
        );
        assert!(s.is_idle());
    }
}
