//! One tagged frame each way through the tap, checked byte for byte: the
//! "does this connection still move frames" step of many tests.

use std::time::Duration;

use crate::frames::{self, PacketSock, GUEST_MAC, HOST_MAC, PACKET_HDR_LEN};
use crate::guest::{FakeGuest, HDR_LEN};

const WAIT: Duration = Duration::from_secs(20);

/// Sends one 300-byte frame tagged `tag` from pair 0 of the guest and
/// checks it is returned and leaves the tap unchanged (`host` reads the
/// tap with a virtio-net header).
pub fn tx_roundtrip(g: &mut FakeGuest, host: &PacketSock, tag: u32) {
    let f = frames::test_frame(300, tag, HOST_MAC, GUEST_MAC);
    let head = g.queue_tx(0, &frames::plain_hdr(), &f, 1);
    g.tx(0).kick();
    let used = g.wait_tx_used(0, 1);
    assert_eq!(used[0].id, head);
    let got = host
        .recv_matching(WAIT, |x| frames::tag_of(&x[PACKET_HDR_LEN..]) == Some(tag))
        .unwrap_or_else(|| panic!("frame {tag} did not leave the tap"));
    assert_eq!(&got[PACKET_HDR_LEN..], &f[..]);
}

/// Posts one RX buffer on pair 0, sends one 90-byte frame tagged `tag`
/// into the tap (`raw`, without a header) and checks the guest gets it.
pub fn rx_roundtrip(g: &mut FakeGuest, raw: &PacketSock, tag: u32) {
    let bufs = g.post_rx(0, 1, 2048);
    let f = frames::test_frame(90, tag, GUEST_MAC, HOST_MAC);
    raw.send(&f);
    let used = g.wait_rx_used(0, 1);
    assert_eq!(used[0].id, bufs[0].0);
    assert_eq!(&g.read(bufs[0].1 + HDR_LEN as u64, f.len()), &f);
}
