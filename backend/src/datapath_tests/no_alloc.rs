//! Nothing on the TX or RX path allocates per frame: after a warm-up that
//! grows the buffers the datapath reuses, thousands of frames go each way
//! through the queue pair's events with zero heap allocations on the
//! worker's thread (`testing::alloc` counts them; the fake attachment
//! records nothing, and the guest publishes its chains outside the
//! counted calls).

use crate::lending::ZeroCopyMode;
use crate::testing::alloc::allocations;
use crate::testing::{frame, Desc, Harness, Setup};

/// Frames per counted round: what the 256-entry ring holds, less room.
const ROUND: usize = 250;
const ROUNDS: usize = 8;

/// `packet` written once into guest memory, as a descriptor for every
/// chain of the rounds (the guest's memory is not reused otherwise).
fn tx_buffer(h: &Harness, packet: &[u8]) -> Desc {
    let addr = h.guest.alloc(packet.len());
    h.guest.write(addr, packet);
    Desc {
        addr,
        len: packet.len() as u32,
        write: false,
    }
}

/// Publishes a round of TX chains of `buf`, then counts what the kick
/// allocates.
fn tx_round(h: &Harness, buf: Desc) -> u64 {
    for _ in 0..ROUND {
        h.tx.add_chain(&[buf]);
    }
    let n = allocations(|| h.tx_kick());
    h.tx.take_used();
    n
}

engine_test! {
fn tx_allocates_nothing_per_frame() {
    for len in [60, 1500, 65000] {
        let h = Setup::default().build();
        h.fake.record(false);
        let buf = tx_buffer(&h, &h.wire(&frame(len, 1)));
        tx_round(&h, buf);
        let counted: Vec<u64> = (0..ROUNDS).map(|_| tx_round(&h, buf)).collect();
        assert_eq!(counted, [0; ROUNDS], "{len}-byte frames");
        assert_eq!(h.fake.sent_count(), (ROUNDS + 1) * ROUND);
        assert_eq!(h.metrics.tx_frames.get(), ((ROUNDS + 1) * ROUND) as u64);
    }
}
}

engine_test! {
/// Lent frames too: sends, the kernel's completions, and the chains they
/// return.
fn lending_allocates_nothing_per_frame() {
    let h = Setup::lending(ZeroCopyMode::On).build();
    h.fake.record(false);
    let buf = tx_buffer(&h, &h.wire(&frame(9000, 2)));
    let mut next_id = 0u32;
    let mut round = || {
        for _ in 0..ROUND {
            h.tx.add_chain(&[buf]);
        }
        let mut n = allocations(|| h.tx_kick());
        // Everything sent so far (lent or, past the cap, copied) is
        // released; the notification wakes the worker.
        let lent = h.metrics.zc_sends.get() as u32;
        if lent > next_id {
            h.fake.complete(next_id, lent - 1, false);
            next_id = lent;
        }
        n += allocations(|| h.notified());
        h.tx.take_used();
        n
    };
    round();
    let counted: Vec<u64> = (0..ROUNDS).map(|_| round()).collect();
    assert_eq!(counted, [0; ROUNDS]);
    assert!(h.metrics.zc_sends.get() > 0, "frames were lent");
    assert_eq!(h.tx.outstanding(), 0, "every chain came back");
}
}

engine_test! {
fn rx_allocates_nothing_per_frame() {
    for len in [60, 1500] {
        let h = Setup::default().build();
        let f = frame(len, 3);
        let round = || {
            let posted = h.rx.post(ROUND, 2048);
            for _ in 0..ROUND {
                h.fake.push_rx(f.clone());
            }
            let n = allocations(|| h.readable());
            assert_eq!(h.rx.take_used().len(), posted.len(), "{len}: every frame delivered");
            n
        };
        round();
        let counted: Vec<u64> = (0..ROUNDS).map(|_| round()).collect();
        assert_eq!(counted, [0; ROUNDS], "{len}-byte frames");
        assert_eq!(h.metrics.rx_frames.get(), ((ROUNDS + 1) * ROUND) as u64);
    }
}
}
