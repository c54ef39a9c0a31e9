//! The lending ledger, model-checked: random interleavings of frames
//! (copied or lent, taking one id or several, as partial TCP sends do),
//! notifications (in order, out of order, duplicated, covering ids never
//! sent, as a lost peer's socket does, COPIED or not), and queue stops,
//! from ids near `u32::MAX` so they wrap, against a reference model that
//! knows every id of every chain. After every step it checks DESIGN.md's
//! invariants of the completion engine:
//!
//! - **not early**: a chain comes back only when notifications have
//!   covered every id of its frame (and, since the engine is told nothing
//!   else, as soon as they have);
//! - **exactly once**: no chain comes back twice; at the end every chain
//!   was copied, came back, or was abandoned by a queue stop, exactly once;
//! - **bounded**: no more chains lent than the cap (and at most a quarter
//!   of the ring), and `choose` copies at the cap.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use zcnet_tap::{Completion, SendMode};

use super::{CopyReason, LendPolicy, Lending, ZeroCopyMode};

const MIN_BYTES: usize = 1000;

#[derive(Clone, Debug)]
enum Op {
    /// A frame of `big` (lendable) size or not, taking `ids` ids if lent.
    Frame { big: bool, ids: u32 },
    /// A notification for the ids of the `pick`th chain still lent (or of
    /// a recent one), possibly cut or widened.
    Notify {
        pick: usize,
        shape: Shape,
        copied: bool,
    },
    /// A notification for `len` ids starting `ahead` past the last id
    /// sent: ids never seen (a lost peer's socket, a confused kernel).
    Unseen { ahead: u32, len: u32 },
    /// The queue stops (GET_VRING_BASE after an expired drain).
    Abandon,
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Exactly the chain's ids.
    Exact,
    /// Only its first id.
    First,
    /// Only its last id.
    Last,
    /// From its first id through the last id sent so far (several chains
    /// at once, as the kernel merges consecutive ranges).
    ThroughNewest,
    /// The same range as an earlier notification, again.
    Repeat(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), prop_oneof![3 => Just(1u32), 1 => 2u32..5])
            .prop_map(|(big, ids)| Op::Frame { big, ids }),
        4 => (any::<usize>(), shape(), any::<bool>())
            .prop_map(|(pick, shape, copied)| Op::Notify { pick, shape, copied }),
        1 => (0u32..8, 1u32..8).prop_map(|(ahead, len)| Op::Unseen { ahead, len }),
        1 => Just(Op::Abandon),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        3 => Just(Shape::Exact),
        1 => Just(Shape::First),
        1 => Just(Shape::Last),
        1 => Just(Shape::ThroughNewest),
        1 => any::<usize>().prop_map(Shape::Repeat),
    ]
}

/// What became of a chain, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Lent,
    Copied,
    Returned,
    Abandoned,
}

/// One chain as the model knows it.
#[derive(Debug)]
struct Chain {
    head: u16,
    /// Its ids, in the order they were sent.
    ids: Vec<u32>,
    covered: BTreeSet<u32>,
    fate: Fate,
}

struct Model {
    chains: Vec<Chain>,
    /// Heads on the guest's side, free to be used by a new chain.
    free_heads: Vec<u16>,
    /// Chain index by head, while the chain is lent.
    lent: BTreeMap<u16, usize>,
    next_id: u32,
    /// Every notification range sent, for repeats.
    sent: Vec<(u32, u32)>,
}

impl Model {
    fn new(ring: u16, first_id: u32) -> Model {
        Model {
            chains: Vec::new(),
            free_heads: (0..ring).rev().collect(),
            lent: BTreeMap::new(),
            next_id: first_id,
            sent: Vec::new(),
        }
    }

    /// Marks the ids of `first..=last` covered in every lent chain that
    /// has them; returns the heads that became whole.
    fn cover(&mut self, first: u32, last: u32) -> BTreeSet<u16> {
        let span = last.wrapping_sub(first);
        let mut whole = BTreeSet::new();
        for (&head, &i) in &self.lent {
            let c = &mut self.chains[i];
            for &id in &c.ids {
                if id.wrapping_sub(first) <= span {
                    c.covered.insert(id);
                }
            }
            if c.covered.len() == c.ids.len() {
                whole.insert(head);
            }
        }
        whole
    }
}

fn run(mode: ZeroCopyMode, cap: usize, ring: u16, first_id: u32, ops: Vec<Op>) {
    let mut l = Lending::new(LendPolicy {
        mode,
        min_bytes: MIN_BYTES,
        cap,
    });
    let bound = cap.min(usize::from(ring / 4).max(1));
    let mut m = Model::new(ring, first_id);
    let mut done = Vec::new();
    for op in ops {
        match op {
            Op::Frame { big, ids } => {
                let Some(head) = m.free_heads.pop() else {
                    // The guest has no free descriptor: it waits.
                    continue;
                };
                let len = if big { MIN_BYTES + 5000 } else { MIN_BYTES - 1 };
                let lent_before = l.lent();
                let (how, why) = l.choose(len, ring, 0);
                if how == SendMode::Lend {
                    assert!(lent_before < bound, "lends past the cap");
                    assert!(mode != ZeroCopyMode::Off && big);
                }
                if why == Some(CopyReason::Cap) {
                    assert_eq!(lent_before, bound, "copies for the cap below it");
                }
                if mode == ZeroCopyMode::On && big && lent_before < bound {
                    assert_eq!(how, SendMode::Lend, "`on` copies below the cap");
                }
                let chain = m.chains.len();
                if how == SendMode::Copy {
                    // Completed at once, never shown to the ledger.
                    m.chains.push(Chain {
                        head,
                        ids: Vec::new(),
                        covered: BTreeSet::new(),
                        fate: Fate::Copied,
                    });
                    m.free_heads.push(head);
                    continue;
                }
                let first = m.next_id;
                let chain_ids: Vec<u32> = (0..ids).map(|k| first.wrapping_add(k)).collect();
                m.next_id = first.wrapping_add(ids);
                l.lend(head, first, first.wrapping_add(ids - 1));
                m.chains.push(Chain {
                    head,
                    ids: chain_ids,
                    covered: BTreeSet::new(),
                    fate: Fate::Lent,
                });
                m.lent.insert(head, chain);
            }
            Op::Notify {
                pick,
                shape,
                copied,
            } => {
                let range = match shape {
                    Shape::Repeat(k) if !m.sent.is_empty() => m.sent[k % m.sent.len()],
                    _ => {
                        // A lent chain, or else the newest chain that was.
                        let heads: Vec<usize> = m.lent.values().copied().collect();
                        let i = if heads.is_empty() {
                            match m.chains.iter().rposition(|c| !c.ids.is_empty()) {
                                Some(i) => i,
                                None => continue,
                            }
                        } else {
                            heads[pick % heads.len()]
                        };
                        let ids = &m.chains[i].ids;
                        let (first, last) = (ids[0], ids[ids.len() - 1]);
                        match shape {
                            Shape::First => (first, first),
                            Shape::Last => (last, last),
                            Shape::ThroughNewest => (first, m.next_id.wrapping_sub(1)),
                            Shape::Exact | Shape::Repeat(_) => (first, last),
                        }
                    }
                };
                notify(&mut l, &mut m, &mut done, range, copied);
            }
            Op::Unseen { ahead, len } => {
                let first = m.next_id.wrapping_add(ahead);
                let range = (first, first.wrapping_add(len - 1));
                notify(&mut l, &mut m, &mut done, range, false);
            }
            Op::Abandon => {
                let n = l.abandon();
                assert_eq!(n, m.lent.len(), "abandoned chains");
                for (head, i) in std::mem::take(&mut m.lent) {
                    m.chains[i].fate = Fate::Abandoned;
                    m.free_heads.push(head);
                }
            }
        }
        assert_eq!(l.lent(), m.lent.len(), "chains lent");
        assert!(l.lent() <= bound, "{} lent, cap {bound}", l.lent());
        assert!(l.max_lent <= bound);
    }
    // The end of the run is a queue stop: every chain still lent is
    // abandoned, and then each chain met exactly one fate.
    assert_eq!(l.abandon(), m.lent.len());
    for (_, i) in std::mem::take(&mut m.lent) {
        m.chains[i].fate = Fate::Abandoned;
    }
    for c in &m.chains {
        assert_ne!(c.fate, Fate::Lent, "chain {} never came back", c.head);
    }
}

/// Applies one notification to the ledger and to the model, and checks
/// that exactly the chains it made whole came back, once each.
fn notify(l: &mut Lending, m: &mut Model, done: &mut Vec<u16>, range: (u32, u32), copied: bool) {
    m.sent.push(range);
    let whole = m.cover(range.0, range.1);
    done.clear();
    l.complete(
        Completion {
            first: range.0,
            last: range.1,
            copied,
        },
        0,
        done,
    );
    let mut back = BTreeSet::new();
    for &head in done.iter() {
        assert!(
            back.insert(head),
            "head {head} returned twice by one notification"
        );
        let Some(i) = m.lent.remove(&head) else {
            panic!("head {head} returned but not lent (twice, or never)");
        };
        let c = &mut m.chains[i];
        assert_eq!(
            c.covered.len(),
            c.ids.len(),
            "head {head} returned early: ids {:?}, covered {:?}, notification {range:?}",
            c.ids,
            c.covered
        );
        c.fate = Fate::Returned;
        m.free_heads.push(head);
    }
    assert_eq!(back, whole, "chains made whole by {range:?} but kept");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_keeps_the_engines_invariants(
        mode in prop_oneof![Just(ZeroCopyMode::On), Just(ZeroCopyMode::Auto), Just(ZeroCopyMode::Off)],
        cap in 1usize..12,
        ring in prop_oneof![Just(4u16), Just(16), Just(64), Just(256)],
        first_id in prop_oneof![Just(u32::MAX - 5), Just(u32::MAX), Just(0), any::<u32>()],
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        run(mode, cap, ring, first_id, ops);
    }
}

/// The case that shows why coverage must be counted per id: the same
/// notification twice must not complete a two-id frame.
#[test]
fn a_repeated_notification_does_not_complete_a_frame_early() {
    run(
        ZeroCopyMode::On,
        8,
        256,
        u32::MAX,
        vec![
            Op::Frame { big: true, ids: 2 },
            Op::Notify {
                pick: 0,
                shape: Shape::First,
                copied: false,
            },
            Op::Notify {
                pick: 0,
                shape: Shape::Repeat(0),
                copied: false,
            },
            Op::Notify {
                pick: 0,
                shape: Shape::Last,
                copied: false,
            },
        ],
    );
}
