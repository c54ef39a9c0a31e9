//! RX: chains gathered, returned or given back; `num_buffers`; a frame
//! held for want of room; frames that can never fit.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::testing::{frame, Delivered, Desc, Harness, Posted, Setup, Used, Vq, MODERN};

/// A Linux guest's RX buffer: a 1500-byte MTU frame and its header.
const BUF: u32 = 1526;
const HDR: usize = 12;

/// A modern guest that accepts 64 KiB TSO frames.
fn gso_guest() -> Setup {
    Setup {
        features: MODERN | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4,
        ..Setup::default()
    }
}

/// The frames' bytes after the header, checking each header's
/// `num_buffers` against its buffers and the used lengths against it.
fn frames_of(delivered: &[Delivered]) -> Vec<Vec<u8>> {
    delivered
        .iter()
        .map(|d| {
            assert_eq!(usize::from(d.num_buffers), d.used.len());
            let total: u32 = d.used.iter().map(|u| u.len).sum();
            assert_eq!(total as usize, d.bytes.len());
            d.bytes[HDR..].to_vec()
        })
        .collect()
}

fn heads(posted: &[Posted]) -> Vec<u16> {
    posted.iter().map(|p| p.head).collect()
}

engine_test! {
/// The counters move before the used ring does: whoever saw a frame
/// arrive and then reads them finds it counted. The read of the second
/// frame looks at the first frame's chain and the counters.
fn a_frame_is_counted_before_the_used_ring_shows_it() {
    let h = Setup::default().build();
    h.rx.post(2, BUF);
    h.fake.push_rx(frame(100, 1));
    h.fake.push_rx(frame(200, 2));
    let (rx, metrics) = (h.rx.clone(), h.metrics.clone());
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    h.fake.on_recv(move |n| {
        if n == 2 {
            *s.lock().unwrap() = Some((
                rx.used_idx(),
                metrics.rx_frames.get(),
                metrics.rx_bytes.get(),
            ));
        }
    });
    h.rx_kick();

    assert_eq!(
        *seen.lock().unwrap(),
        Some((1, 1, 100)),
        "(used.idx, frames, bytes) before the second frame was read"
    );
    assert_eq!(h.rx.take_used().len(), 2);
    assert_eq!(h.metrics.rx_frames.get(), 2);
    assert_eq!(h.metrics.rx_bytes.get(), 300);
}
}

engine_test! {
fn a_malformed_chain_between_good_ones_is_returned_once_and_skips_none() {
    let h = Setup::default().build();
    let good1 = h.rx.post(1, BUF)[0];
    // Device-readable: not an RX buffer.
    let bad = h.rx.add_chain(&[Desc {
        addr: h.guest.alloc(BUF as usize),
        len: BUF,
        write: false,
    }]);
    let good2 = h.rx.post(1, BUF)[0];
    let first = frame(100, 1);
    h.fake.push_rx(first.clone());
    h.rx_kick();

    assert_eq!(
        h.rx.take_used(),
        [
            Used {
                id: good1.head,
                len: (HDR + 100) as u32
            },
            Used { id: bad, len: 0 }
        ]
    );
    assert_eq!(&h.guest.read(good1.addr, HDR + 100)[HDR..], &first[..]);
    assert_eq!(h.next_avail(Vq::Rx), 2, "the last good chain is given back");
    assert_eq!(h.metrics.malformed_chains.get(), 1);
    assert_eq!(h.metrics.rx_frames.get(), 1);

    let second = frame(200, 2);
    h.fake.push_rx(second.clone());
    h.readable();
    assert_eq!(
        h.rx.take_used(),
        [Used {
            id: good2.head,
            len: (HDR + 200) as u32
        }],
        "the malformed chain is not returned again"
    );
    assert_eq!(&h.guest.read(good2.addr, HDR + 200)[HDR..], &second[..]);
    assert_eq!(h.metrics.malformed_chains.get(), 1);
    assert_eq!(h.metrics.rx_frames.get(), 2);
    assert_eq!(h.rx.outstanding(), 0);
}
}

engine_test! {
fn a_frame_spanning_three_buffers_says_so_in_num_buffers() {
    let h = Setup::default().build();
    let posted = h.rx.post(8, BUF);
    let f = frame(4000, 1);
    h.fake.push_rx(f.clone());
    h.rx_kick();

    let d = h.delivered(&posted);
    assert_eq!(d.len(), 1, "delivered at once: eight buffers hold it");
    assert_eq!(d[0].num_buffers, 3);
    let lens: Vec<u32> = d[0].used.iter().map(|u| u.len).collect();
    assert_eq!(lens, [BUF, BUF, (HDR + 4000) as u32 - 2 * BUF]);
    assert_eq!(frames_of(&d), [f]);
    assert_eq!(
        h.next_avail(Vq::Rx),
        3,
        "five buffers left for later frames"
    );
    assert_eq!(h.metrics.rx_frames.get(), 1);
    assert_eq!(h.metrics.rx_bytes.get(), 4000);
    assert_eq!(h.calls(Vq::Rx), 1);
}
}

engine_test! {
/// Issue 12, case 3: a frame is delivered as soon as the posted buffers
/// can hold it, not when there is room for the largest frame.
fn small_frames_are_delivered_at_once_into_few_buffers() {
    let h = Setup::default().build();
    let posted = h.rx.post(8, BUF);
    let sent: Vec<Vec<u8>> = (0..8).map(|i| frame(1000, i)).collect();
    for f in &sent {
        h.fake.push_rx(f.clone());
    }
    h.rx_kick();

    let d = h.delivered(&posted);
    assert_eq!(frames_of(&d), sent, "all eight, in order, one buffer each");
    let used: Vec<u16> = d.iter().map(|d| d.used[0].id).collect();
    assert_eq!(used, heads(&posted));
    assert_eq!(h.metrics.rx_frames.get(), 8);
    assert_eq!(h.metrics.rx_dropped.get(), 0);
}
}

/// A frame larger than what the guest posted waits for more room; then it
/// arrives whole, and the frames behind it follow in order.
fn held_until_room(h: &Harness, first_posted: usize, big: usize) {
    let mut posted = h.rx.post(first_posted, BUF);
    let sent = [frame(big, 1), frame(1000, 2), frame(60, 3)];
    for f in &sent {
        h.fake.push_rx(f.clone());
    }
    h.rx_kick();
    assert_eq!(h.rx.used_idx(), 0, "nothing delivered, nothing cut");
    assert_eq!(h.next_avail(Vq::Rx), 0, "its buffers stay the device's");
    assert_eq!(h.calls(Vq::Rx), 0);
    assert_eq!(h.metrics.rx_frames.get(), 0);
    assert_eq!(h.metrics.rx_dropped.get(), 0);

    posted.extend(h.rx.post(64, BUF));
    h.rx_kick();
    let d = h.delivered(&posted);
    let want_bufs = (HDR + big).div_ceil(BUF as usize);
    assert_eq!(usize::from(d[0].num_buffers), want_bufs);
    assert_eq!(frames_of(&d), sent, "whole, then the rest in order");
    let used: Vec<u16> = d.iter().flat_map(|d| d.used.iter().map(|u| u.id)).collect();
    assert_eq!(
        used,
        heads(&posted[..want_bufs + 2]),
        "buffers in posted order"
    );
    assert_eq!(h.metrics.rx_frames.get(), 3);
    assert_eq!(h.metrics.rx_bytes.get(), (big + 1060) as u64);
    assert_eq!(h.metrics.rx_dropped.get(), 0);
}

engine_test! {
fn a_frame_larger_than_the_posted_buffers_is_held_until_the_guest_posts_more() {
    held_until_room(&Setup::default().build(), 2, 4000);
}
}

engine_test! {
fn a_gso_frame_larger_than_the_posted_buffers_is_held_until_the_guest_posts_more() {
    held_until_room(&gso_guest().build(), 8, 40_000);
}
}

engine_test! {
fn a_frame_larger_than_the_whole_ring_is_dropped_and_the_next_delivered() {
    let h = Setup {
        queue_size: 16,
        ..gso_guest()
    }
    .build();
    let posted = h.rx.post(16, BUF); // 24 KiB in all
    let next = frame(1000, 2);
    h.fake.push_rx(frame(30_000, 1));
    h.fake.push_rx(next.clone());
    h.rx_kick();

    let d = h.delivered(&posted);
    assert_eq!(frames_of(&d), [next]);
    assert_eq!(d[0].used[0].id, posted[0].head);
    assert_eq!(h.metrics.rx_dropped.get(), 1);
    assert_eq!(h.metrics.rx_frames.get(), 1);
}
}

engine_test! {
/// A legacy guest (neither VERSION_1 nor MRG_RXBUF) has a 10-byte header
/// and no `num_buffers`; the attachment is told so.
fn a_legacy_guest_gets_a_ten_byte_header() {
    let h = Setup {
        features: 1 << VIRTIO_RING_F_EVENT_IDX,
        ..Setup::default()
    }
    .build();
    assert_eq!(h.fake.config().hdr_len, 10);
    let posted = h.rx.post(2, BUF);
    let f = frame(100, 1);
    h.fake.push_rx(f.clone());
    h.rx_kick();
    let used = h.rx.take_used();
    assert_eq!(
        used,
        [Used {
            id: posted[0].head,
            len: 110
        }]
    );
    let got = h.guest.read(posted[0].addr, 110);
    assert_eq!((&got[..10], &got[10..]), (&[0u8; 10][..], &f[..]));
    assert_eq!(h.metrics.rx_frames.get(), 1);
    assert_eq!(h.metrics.rx_bytes.get(), 100);
}
}

engine_test! {
fn without_mergeable_buffers_a_frame_larger_than_one_chain_is_dropped() {
    let h = Setup {
        features: 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX,
        ..Setup::default()
    }
    .build();
    let posted = h.rx.post(4, BUF);
    let next = frame(1000, 2);
    h.fake.push_rx(frame(2000, 1));
    h.fake.push_rx(next.clone());
    h.rx_kick();

    let d = h.delivered(&posted);
    assert_eq!(frames_of(&d), [next]);
    assert_eq!(d[0].used[0].id, posted[0].head);
    assert_eq!(h.metrics.rx_dropped.get(), 1);
    assert_eq!(h.metrics.rx_frames.get(), 1);
}
}
