//! GET_VRING_BASE (DESIGN.md, invariant 4): lent chains are drained
//! before the reply, within the drain time; the rest are abandoned and
//! never touch the used ring again.

use std::time::Duration;

use zcnet_tap::Completion;

use crate::lending::ZeroCopyMode;
use crate::testing::{frame, Harness, Setup, Vq};

fn c(first: u32, last: u32) -> Completion {
    Completion {
        first,
        last,
        copied: false,
    }
}

/// Lends three frames (ids 0, 1, 2) on a pair that drains for `drain`.
fn three_lent(drain: Duration) -> (Harness, Vec<u16>) {
    let h = Setup {
        drain,
        ..Setup::lending(ZeroCopyMode::On)
    }
    .build();
    let heads: Vec<u16> = (0..3).map(|i| h.send(&frame(1000, i))).collect();
    h.tx_kick();
    assert_eq!(h.metrics.lent_chains.get(), 3);
    assert_eq!(h.tx.used_idx(), 0);
    (h, heads)
}

fn sorted_used(h: &Harness) -> Vec<u16> {
    let mut ids: Vec<u16> = h.tx.take_used().iter().map(|u| u.id).collect();
    ids.sort_unstable();
    ids
}

engine_test! {
fn lent_chains_completed_while_stopping_are_used_before_the_reply() {
    // A drain time no test reaches: the stop ends when the last arrives.
    let (h, heads) = three_lent(Duration::from_secs(600));
    h.fake
        .arrive_during_waits([vec![c(1, 1)], vec![c(2, 2), c(0, 0)]]);

    let base = h.stop(Vq::Tx);
    assert_eq!(sorted_used(&h), heads, "all used before stop returned");
    assert_eq!(h.fake.waits(), 2, "waited for each arrival, no more");
    assert_eq!(base, 3, "the base covers every chain taken");
    assert_eq!(h.calls(Vq::Tx), 1);
    assert_eq!(h.metrics.lent_chains.get(), 0);
    assert_eq!(h.metrics.zc_completed.get(), 3);
}
}

engine_test! {
fn chains_still_lent_at_the_deadline_are_abandoned_for_good() {
    let (h, heads) = three_lent(Duration::from_millis(1));
    // Released before GET_VRING_BASE came.
    h.fake.complete(1, 1, false);

    let base = h.stop(Vq::Tx);
    assert_eq!(sorted_used(&h), [heads[1]], "the released one is used");
    assert_eq!(base, 3);
    assert_eq!(h.calls(Vq::Tx), 1);
    assert_eq!(h.metrics.lent_chains.get(), 0, "nothing counted as lent");

    // The kernel releases the others after the reply: the device must not
    // write the ring or notify any more.
    h.fake.complete(0, 0, false);
    h.fake.complete(2, 2, false);
    h.notified();
    h.tx_kick();
    assert_eq!(h.tx.used_idx(), 1, "abandoned chains are never used");
    assert_eq!(h.calls(Vq::Tx), 0);
    assert_eq!(h.metrics.zc_completed.get(), 3, "the late ones were read");
}
}
