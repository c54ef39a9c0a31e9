//! TX: the EVENT_IDX drain, EAGAIN, guest calls during a long drain, and
//! what a header or a host error does to a frame.

use std::sync::{Arc, Mutex};

use zcnet_tap::vnet_hdr::{VnetHdr, GSO_NONE};
use zcnet_tap::{SendMode, Sent, MAX_BATCH};

use crate::testing::{frame, Reply, Setup, Used, Vq};

fn used_in_order(heads: &[u16]) -> Vec<Used> {
    heads.iter().map(|&id| Used { id, len: 0 }).collect()
}

engine_test! {
fn chains_published_while_notifications_are_off_go_out_in_the_same_event() {
    let h = Setup::default().build();
    let frames: Vec<Vec<u8>> = (0..8).map(|i| frame(100 + i, i as u8)).collect();
    let mut heads: Vec<u16> = frames[..4].iter().map(|f| h.send(f)).collect();
    assert!(h.tx.needs_kick(0), "the first chains are kicked");

    // While the device drains, the guest publishes four more. The device
    // asked for no kick meanwhile, so the guest's driver sends none.
    let late: Vec<Vec<u8>> = frames[4..].iter().map(|f| h.wire(f)).collect();
    let (tx, late_heads, kicked) = (
        h.tx.clone(),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(None)),
    );
    let (lh, k) = (late_heads.clone(), kicked.clone());
    h.fake.on_send(move |n| {
        if n == 2 {
            let old = tx.avail_idx();
            lh.lock().unwrap().extend(late.iter().map(|w| tx.send(w)));
            *k.lock().unwrap() = Some(tx.needs_kick(old));
        }
    });
    h.tx_kick();

    assert_eq!(
        *kicked.lock().unwrap(),
        Some(false),
        "no kick was asked for"
    );
    heads.extend(late_heads.lock().unwrap().iter());
    let sent: Vec<Vec<u8>> = h.fake.sent().into_iter().map(|s| s.bytes).collect();
    assert_eq!(sent, frames, "all eight, in order, in one event");
    assert_eq!(h.tx.take_used(), used_in_order(&heads));
    assert_eq!(
        h.tx.avail_event(),
        8,
        "avail_event ends past every chain taken"
    );
    let old = h.tx.avail_idx();
    h.send(&frame(60, 9));
    assert!(h.tx.needs_kick(old), "so the next chain is kicked");
    assert_eq!(h.metrics.tx_frames.get(), 8);
    assert_eq!(h.metrics.tx_bytes.get(), (100..108).sum::<u64>());
    assert_eq!(h.calls(Vq::Tx), 1, "one call for the drain");
}
}

engine_test! {
/// The counters move before the used ring does: whoever saw a chain come
/// back and then reads them (an operator, a test scraping the daemon)
/// finds its frame counted. Here a second batch follows in the same pass
/// (a chain published while the first was written), and its first send
/// looks at the first batch's chains and the counters.
fn a_frame_is_counted_before_its_chain_is_used() {
    let h = Setup::default().build();
    for i in 0..4 {
        h.send(&frame(100, i));
    }
    let late = h.wire(&frame(60, 9));
    let (tx, metrics) = (h.tx.clone(), h.metrics.clone());
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    h.fake.on_send(move |n| match n {
        4 => {
            tx.send(&late);
        }
        5 => {
            *s.lock().unwrap() = Some((
                tx.used_idx(),
                metrics.tx_frames.get(),
                metrics.tx_bytes.get(),
            ));
        }
        _ => {}
    });
    h.tx_kick();

    assert_eq!(
        *seen.lock().unwrap(),
        Some((4, 4, 400)),
        "(used.idx, frames, bytes) while the second batch was written"
    );
    assert_eq!(h.tx.take_used().len(), 5);
    assert_eq!(h.metrics.tx_frames.get(), 5);
    assert_eq!(h.metrics.tx_bytes.get(), 460);
}
}

engine_test! {
fn a_send_that_would_block_leaves_the_chain_on_the_avail_ring_until_writable() {
    let h = Setup::default().build();
    h.fake.reply([Reply::WouldBlock]);
    let frames = [frame(200, 1), frame(300, 2)];
    let heads: Vec<u16> = frames.iter().map(|f| h.send(f)).collect();
    h.tx_kick();

    assert_eq!(h.fake.attempts(), 1, "stops at the first EAGAIN");
    assert!(h.fake.sent().is_empty());
    assert_eq!(h.tx.used_idx(), 0, "not returned");
    assert_eq!(h.next_avail(Vq::Tx), 0, "given back to the avail ring");
    assert_eq!(h.tx.outstanding(), 2, "and not lost: still the device's");
    assert_eq!(h.calls(Vq::Tx), 0);

    // Blocked: a kick does not retry; the worker waits for EPOLLOUT.
    h.tx_kick();
    assert_eq!(h.fake.attempts(), 1, "a kick while blocked sends nothing");

    h.writable();
    let sent: Vec<Vec<u8>> = h.fake.sent().into_iter().map(|s| s.bytes).collect();
    assert_eq!(sent, frames, "each frame sent exactly once, in order");
    assert_eq!(h.tx.take_used(), used_in_order(&heads));
    assert_eq!(h.calls(Vq::Tx), 1);
    assert_eq!(h.metrics.tx_frames.get(), 2);
    assert_eq!(h.metrics.tx_bytes.get(), 500);
    assert_eq!(h.metrics.tx_dropped.get(), 0);
    assert_eq!(h.metrics.malformed_chains.get(), 0);
}
}

engine_test! {
/// A long drain calls the guest partway when its `used_event` asks, so
/// it can refill the ring while the device still works.
fn a_long_drain_calls_the_guest_before_it_ends() {
    let h = Setup::default().build();
    h.tx.set_used_event(0); // a call at the first used chain
    let heads: Vec<u16> = (0..200).map(|i| h.send(&frame(64, i as u8))).collect();
    let (calls, tx) = (h.watch_calls(Vq::Tx), h.tx.clone());
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    h.fake.on_send(move |n| {
        if n == 100 {
            *s.lock().unwrap() = Some((calls.take(), tx.used_idx()));
        }
    });
    h.tx_kick();

    assert_eq!(
        *seen.lock().unwrap(),
        Some((1, MAX_BATCH as u16)),
        "by the 100th send the guest was called, with the first batch back"
    );
    assert_eq!(h.tx.take_used(), used_in_order(&heads));
    assert_eq!(h.calls(Vq::Tx), 0, "used_event did not move: no more calls");
    assert_eq!(h.metrics.tx_frames.get(), 200);
}
}

engine_test! {
/// After the queue starts, the first used-ring update calls the guest
/// whatever `used_event` says (issue 12, case 6A: the index it was last
/// signalled at is unknown); after that, a `used_event` far ahead means no
/// call.
fn no_call_when_the_guest_asked_for_one_much_later() {
    let h = Setup::default().build();
    h.tx.set_used_event(1000);
    for round in 0..2 {
        for i in 0..200 {
            h.send(&frame(64, i as u8));
        }
        h.tx_kick();
        assert_eq!(h.tx.take_used().len(), 200);
        let want = if round == 0 { 1 } else { 0 };
        assert_eq!(
            h.calls(Vq::Tx),
            want,
            "round {round}: used_event is far ahead"
        );
    }
    assert_eq!(h.metrics.tx_frames.get(), 400);
}
}

engine_test! {
/// Issue 12, case 4: `hdr_len` is a hint without GSO. Whatever the guest
/// wrote there, the frame goes out with a normalised header.
fn a_lying_hdr_len_without_gso_is_normalised_and_the_frame_sent() {
    for hdr_len in [10u16, 2000] {
        let h = Setup::default().build();
        let hdr = VnetHdr {
            hdr_len,
            gso_type: GSO_NONE,
            ..VnetHdr::default()
        };
        let f = frame(100, 7);
        let head = h.send_with(&hdr, &f);
        h.tx_kick();

        let sent = h.fake.sent();
        assert_eq!(sent.len(), 1, "hdr_len {hdr_len}: sent");
        assert_eq!(
            sent[0].hdr,
            VnetHdr::default(),
            "hdr_len {hdr_len} became 0"
        );
        assert_eq!(sent[0].bytes, f);
        assert_eq!(h.tx.take_used(), used_in_order(&[head]));
        assert_eq!(h.metrics.malformed_chains.get(), 0);
        assert_eq!(h.metrics.tx_frames.get(), 1);
    }
}
}

engine_test! {
fn a_host_error_drops_the_frame_as_tx_dropped_not_malformed() {
    let h = Setup::default().build();
    h.fake.reply([Reply::Error(libc::EIO)]);
    let lost = h.send(&frame(100, 1));
    let next = frame(100, 2);
    let after = h.send(&next);
    h.tx_kick();

    assert_eq!(h.tx.take_used(), used_in_order(&[lost, after]));
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 1, "the queue goes on after the error");
    assert_eq!(
        (sent[0].bytes.as_slice(), sent[0].mode),
        (next.as_slice(), SendMode::Copy)
    );
    assert_eq!(sent[0].sent, Sent::Copied);
    assert_eq!(h.metrics.tx_dropped.get(), 1);
    assert_eq!(h.metrics.malformed_chains.get(), 0);
    assert_eq!(h.metrics.tx_frames.get(), 1);
}
}

engine_test! {
fn a_header_with_unknown_flags_is_malformed_not_dropped() {
    let h = Setup::default().build();
    let bad = VnetHdr {
        flags: 0x40,
        ..VnetHdr::default()
    };
    let head = h.send_with(&bad, &frame(100, 1));
    h.tx_kick();
    assert_eq!(h.tx.take_used(), used_in_order(&[head]));
    assert_eq!(h.fake.attempts(), 0, "never reaches the attachment");
    assert_eq!(h.metrics.malformed_chains.get(), 1);
    assert_eq!(h.metrics.tx_dropped.get(), 0);
    assert_eq!(h.metrics.tx_frames.get(), 0);
}
}

engine_test! {
/// A long drain hands the attachment whole batches, in ring order.
fn frames_go_to_the_attachment_in_batches() {
    let h = Setup::default().build();
    let frames: Vec<Vec<u8>> = (0..200).map(|i| frame(64 + i % 7, i as u8)).collect();
    let heads: Vec<u16> = frames.iter().map(|f| h.send(f)).collect();
    h.tx_kick();

    assert_eq!(h.fake.batches(), [MAX_BATCH, MAX_BATCH, MAX_BATCH, 200 - 3 * MAX_BATCH]);
    let sent: Vec<Vec<u8>> = h.fake.sent().into_iter().map(|s| s.bytes).collect();
    assert_eq!(sent, frames, "every frame once, in order");
    assert_eq!(h.tx.take_used(), used_in_order(&heads));
    assert_eq!(h.metrics.tx_frames.get(), 200);
}
}

engine_test! {
/// EAGAIN partway through a batch: the chains sent are used, the one that
/// would block and every later one go back to the avail ring, in order,
/// and go out once the attachment is writable, each exactly once.
fn a_frame_that_would_block_gives_back_itself_and_the_rest_of_its_batch() {
    let h = Setup::default().build();
    h.fake.reply([Reply::Accept, Reply::Accept, Reply::Accept, Reply::WouldBlock]);
    let frames: Vec<Vec<u8>> = (0..10).map(|i| frame(100, i as u8)).collect();
    let heads: Vec<u16> = frames.iter().map(|f| h.send(f)).collect();
    h.tx_kick();

    assert_eq!(h.fake.attempts(), 4, "nothing after the frame that would block");
    let sent: Vec<Vec<u8>> = h.fake.sent().into_iter().map(|s| s.bytes).collect();
    assert_eq!(sent, frames[..3]);
    assert_eq!(h.tx.take_used(), used_in_order(&heads[..3]));
    assert_eq!(h.next_avail(Vq::Tx), 3, "the other seven back on the avail ring");
    assert_eq!(h.tx.outstanding(), 7, "and still the device's");
    assert_eq!(h.calls(Vq::Tx), 1, "the guest hears of the three");

    h.tx_kick();
    assert_eq!(h.fake.attempts(), 4, "blocked: a kick sends nothing");
    h.writable();
    let sent: Vec<Vec<u8>> = h.fake.sent().into_iter().map(|s| s.bytes).collect();
    assert_eq!(sent, frames, "the rest after them, in order, once each");
    assert_eq!(h.tx.take_used(), used_in_order(&heads[3..]));
    assert_eq!(h.metrics.tx_frames.get(), 10);
    assert_eq!(h.metrics.tx_dropped.get(), 0);
}
}

engine_test! {
/// Malformed chains keep their place in the ring: one before the frame
/// that would block is used at once; one after it goes back with it and
/// is used (and counted) once, on the next try.
fn malformed_chains_around_a_frame_that_would_block_are_used_once() {
    let h = Setup::default().build();
    let bad = VnetHdr {
        flags: 0x40,
        ..VnetHdr::default()
    };
    h.fake.reply([Reply::Accept, Reply::WouldBlock]);
    let a = h.send(&frame(100, 1));
    let m1 = h.send_with(&bad, &frame(100, 2));
    let b = h.send(&frame(100, 3));
    let m2 = h.send_with(&bad, &frame(100, 4));
    let c = h.send(&frame(100, 5));
    h.tx_kick();

    assert_eq!(h.tx.take_used(), used_in_order(&[a, m1]));
    assert_eq!(h.metrics.malformed_chains.get(), 1);
    assert_eq!(h.next_avail(Vq::Tx), 2);

    h.writable();
    assert_eq!(h.tx.take_used(), used_in_order(&[b, m2, c]));
    assert_eq!(h.metrics.malformed_chains.get(), 2, "each counted once");
    let seeds: Vec<u8> = h.fake.sent().iter().map(|s| s.bytes[11]).collect();
    assert_eq!(seeds, [1, 3, 5]);
    assert_eq!(h.metrics.tx_frames.get(), 3);
}
}

engine_test! {
/// A refused frame in the middle of a batch is that frame's drop only:
/// the frames after it in the same batch still go, in order.
fn a_refused_frame_mid_batch_does_not_stop_the_batch() {
    let h = Setup::default().build();
    let mut replies = vec![Reply::Accept; 20];
    replies[7] = Reply::Error(libc::EIO);
    h.fake.reply(replies);
    let frames: Vec<Vec<u8>> = (0..20).map(|i| frame(80, i as u8)).collect();
    let heads: Vec<u16> = frames.iter().map(|f| h.send(f)).collect();
    h.tx_kick();

    assert_eq!(h.tx.take_used(), used_in_order(&heads));
    let sent: Vec<Vec<u8>> = h.fake.sent().into_iter().map(|s| s.bytes).collect();
    let mut want = frames.clone();
    want.remove(7);
    assert_eq!(sent, want);
    assert_eq!(h.metrics.tx_dropped.get(), 1);
    assert_eq!(h.metrics.tx_frames.get(), 19);
    assert_eq!(h.fake.batches(), [20], "one batch");
}
}
