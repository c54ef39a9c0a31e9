//! Lending: a lent chain is used only when the kernel's notifications
//! cover its frame (DESIGN.md, invariants 1 to 3), in whatever order they
//! come, and the engine backs off or reaps as it should.

use zcnet_tap::{SendMode, Sent};

use crate::lending::{LendPolicy, ZeroCopyMode};
use crate::testing::{frame, Harness, Reply, Setup, Used, Vq};

/// The heads the guest got back since the last look, sorted (lent chains
/// complete in the order their notifications finish them).
fn used_heads(h: &Harness) -> Vec<u16> {
    let mut heads: Vec<u16> =
        h.tx.take_used()
            .into_iter()
            .map(|Used { id, len }| {
                assert_eq!(len, 0, "TX chains are used with length 0");
                id
            })
            .collect();
    heads.sort_unstable();
    heads
}

/// Publishes `n` frames of 1000 bytes and kicks; returns their heads.
fn lend(h: &Harness, n: u8) -> Vec<u16> {
    let heads = (0..n).map(|i| h.send(&frame(1000, i))).collect();
    h.tx_kick();
    heads
}

engine_test! {
fn a_lent_chain_is_used_only_after_its_completion() {
    let h = Setup::lending(ZeroCopyMode::On).build();
    let heads = lend(&h, 1);
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mode, SendMode::Lend);
    assert_eq!(
        sent[0].sent,
        Sent::Lent {
            first_id: 0,
            last_id: 0
        }
    );
    assert_eq!(h.tx.used_idx(), 0, "the kernel still holds the pages");
    assert_eq!(h.calls(Vq::Tx), 0);
    assert_eq!(h.metrics.zc_sends.get(), 1);
    assert_eq!(h.metrics.lent_chains.get(), 1);
    assert_eq!(h.metrics.tx_frames.get(), 1);

    h.notified();
    assert_eq!(h.tx.used_idx(), 0, "an event without a notification");

    h.fake.complete(0, 0, false);
    h.notified();
    assert_eq!(used_heads(&h), heads);
    assert_eq!(h.calls(Vq::Tx), 1);
    assert_eq!(h.metrics.zc_completed.get(), 1);
    assert_eq!(h.metrics.lent_chains.get(), 0);
    assert_eq!(h.metrics.zc_copy_fallbacks.get(), 0);
}
}

engine_test! {
fn out_of_order_completions_complete_exactly_their_chains() {
    let h = Setup::lending(ZeroCopyMode::On).build();
    let heads = lend(&h, 4); // ids 0, 1, 2, 3
    h.fake.complete(2, 3, false);
    h.notified();
    assert_eq!(used_heads(&h), heads[2..4]);
    h.fake.complete(0, 0, false);
    h.notified();
    assert_eq!(used_heads(&h), heads[0..1]);
    assert_eq!(h.metrics.lent_chains.get(), 1);
    h.fake.complete(1, 1, false);
    h.notified();
    assert_eq!(used_heads(&h), heads[1..2]);
    assert_eq!(h.tx.outstanding(), 0);
    assert_eq!(h.metrics.zc_completed.get(), 4);
    assert_eq!(h.metrics.lent_chains.get(), 0);
}
}

engine_test! {
fn a_frame_that_took_several_ids_completes_when_all_of_them_have() {
    let h = Setup::lending(ZeroCopyMode::On).build();
    h.fake.reply([Reply::LendIds(3), Reply::Accept]);
    let heads = lend(&h, 2);
    let sent: Vec<Sent> = h.fake.sent().iter().map(|s| s.sent).collect();
    assert_eq!(
        sent,
        [
            Sent::Lent {
                first_id: 0,
                last_id: 2
            },
            Sent::Lent {
                first_id: 3,
                last_id: 3
            }
        ]
    );
    h.fake.complete(0, 0, false);
    h.fake.complete(2, 2, false);
    h.notified();
    assert_eq!(used_heads(&h), [0u16; 0], "id 1 is still out");
    h.fake.complete(3, 3, false);
    h.notified();
    assert_eq!(used_heads(&h), heads[1..2], "the next frame is not held up");
    h.fake.complete(1, 1, false);
    h.notified();
    assert_eq!(used_heads(&h), heads[0..1]);
    assert_eq!(h.metrics.zc_sends.get(), 2);
    assert_eq!(h.metrics.lent_chains.get(), 0);
}
}

engine_test! {
fn duplicate_and_unknown_completions_complete_nothing() {
    let h = Setup::lending(ZeroCopyMode::On).build();
    h.fake.reply([Reply::LendIds(2), Reply::Accept]);
    let heads = lend(&h, 2); // ids 0-1, then 2
    h.fake.complete(0, 0, false);
    h.notified();
    assert_eq!(used_heads(&h), [0u16; 0]);
    h.fake.complete(0, 0, false);
    h.notified();
    assert_eq!(used_heads(&h), [0u16; 0], "a repeated id 0 is not id 1");
    h.fake.complete(7, 9, false);
    h.fake.complete(u32::MAX - 5, u32::MAX, false);
    h.notified();
    assert_eq!(used_heads(&h), [0u16; 0], "ids never lent");
    assert_eq!(h.metrics.lent_chains.get(), 2);
    h.fake.complete(1, 1, false);
    h.notified();
    assert_eq!(used_heads(&h), heads[0..1]);
    h.fake.complete(0, 1, false);
    h.notified();
    assert_eq!(used_heads(&h), [0u16; 0], "a chain is used once");
    h.fake.complete(2, 2, false);
    h.notified();
    assert_eq!(used_heads(&h), heads[1..2]);
    assert_eq!(h.metrics.lent_chains.get(), 0);
}
}

engine_test! {
/// In `auto`, a kernel that keeps copying lent frames (local delivery)
/// makes the engine copy for a while; `on` keeps lending.
fn copied_completions_make_auto_copy_and_on_keep_lending() {
    for mode in [ZeroCopyMode::Auto, ZeroCopyMode::On] {
        let h = Setup::lending(mode).build();
        lend(&h, 16);
        h.fake.complete(0, 15, true);
        h.notified();
        assert_eq!(used_heads(&h).len(), 16);
        assert_eq!(h.metrics.zc_copied.get(), 16);

        let next = h.send(&frame(1000, 99));
        h.tx_kick();
        let last = h.fake.sent().pop().unwrap();
        if mode == ZeroCopyMode::Auto {
            assert_eq!(
                (last.mode, last.sent),
                (SendMode::Copy, Sent::Copied),
                "backed off"
            );
            assert_eq!(used_heads(&h), [next], "a copied frame completes at once");
            assert_eq!(h.metrics.zc_copy_fallbacks.get(), 1);
            assert_eq!(h.metrics.zc_sends.get(), 16);
        } else {
            assert_eq!(last.mode, SendMode::Lend, "on keeps lending");
            assert!(matches!(last.sent, Sent::Lent { first_id: 16, .. }));
            assert_eq!(used_heads(&h), [0u16; 0]);
            assert_eq!(h.metrics.zc_copy_fallbacks.get(), 0);
            assert_eq!(h.metrics.zc_sends.get(), 17);
        }
    }
}
}

engine_test! {
/// The attachment copied a frame it was asked to lend (ENOBUFS: pinned
/// memory or option memory exhausted): the chain completes at once.
fn a_frame_the_attachment_copied_instead_of_lending_completes_at_once() {
    let h = Setup::lending(ZeroCopyMode::On).build();
    h.fake.reply([Reply::CopiedAnyway]);
    let heads = lend(&h, 2);
    let sent: Vec<(SendMode, Sent)> = h.fake.sent().iter().map(|s| (s.mode, s.sent)).collect();
    assert_eq!(
        sent,
        [
            (SendMode::Lend, Sent::Copied),
            (
                SendMode::Lend,
                Sent::Lent {
                    first_id: 0,
                    last_id: 0
                }
            )
        ]
    );
    assert_eq!(used_heads(&h), heads[0..1]);
    assert_eq!(h.metrics.zc_copy_fallbacks.get(), 1);
    assert_eq!(h.metrics.zc_sends.get(), 1);
    assert_eq!(h.metrics.tx_dropped.get(), 0);
    assert_eq!(h.metrics.lent_chains.get(), 1);
}
}

fn capped(cap: usize) -> Harness {
    Setup {
        lend: LendPolicy {
            mode: ZeroCopyMode::On,
            min_bytes: 0,
            cap,
        },
        ..Setup::lending(ZeroCopyMode::On)
    }
    .build()
}

engine_test! {
/// At the cap, completions the kernel has queued are taken in before the
/// next frame is decided on, so it is lent rather than copied. (The frames
/// of one batch are decided on before any of them is sent, so a release
/// counts from the next batch on.)
fn at_the_lend_cap_waiting_completions_are_reaped_before_deciding() {
    let h = capped(2);
    let mut heads = lend(&h, 2);
    // The kernel releases both; its notification has not woken the worker
    // yet when the guest kicks again.
    h.fake.complete(0, 1, false);
    heads.extend(lend(&h, 1));
    let modes: Vec<SendMode> = h.fake.sent().iter().map(|s| s.mode).collect();
    assert_eq!(modes, [SendMode::Lend; 3], "the third is lent, not copied");
    assert_eq!(used_heads(&h), heads[0..2]);
    assert_eq!(h.metrics.zc_copy_fallbacks.get(), 0);
    assert_eq!(h.metrics.lent_chains.get(), 1);
    assert_eq!(h.metrics.lent_chains_max.get(), 2);
}
}

engine_test! {
fn at_the_lend_cap_with_nothing_released_the_next_frame_is_copied() {
    let h = capped(2);
    let heads = lend(&h, 3);
    let modes: Vec<SendMode> = h.fake.sent().iter().map(|s| s.mode).collect();
    assert_eq!(modes, [SendMode::Lend, SendMode::Lend, SendMode::Copy]);
    assert_eq!(used_heads(&h), heads[2..3], "copied: used at once");
    assert_eq!(h.metrics.zc_copy_fallbacks.get(), 1);
    assert_eq!(h.metrics.lent_chains.get(), 2);
}
}
