//! A guest that sends bad descriptors: every malformed chain goes back with
//! length 0 and is counted, and the daemon goes on serving. The frame after
//! the bad one still comes out of the tap, and the bad one never does.

use std::time::Duration;

use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::frames::{self, PacketSock, GUEST_MAC, HOST_MAC, PACKET_HDR_LEN};
use zcnet_harness::guest::{FakeGuest, GuestOpts, HDR_LEN, HOST_TSO6};
use zcnet_harness::malformed::{Malformed, SCRATCH_LEN};
use zcnet_harness::ring::Desc;
use zcnet_harness::setup::{Setup, TAP};

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

const BAD_TAG: u32 = 0xbad;
const GOOD_TAG: u32 = 0x600d;

/// Queues one malformed TX chain (the harness's builders, shared with
/// the soak) and returns its head.
fn malformed(g: &mut FakeGuest, kind: Malformed) -> u16 {
    let scratch = g.alloc(SCRATCH_LEN);
    kind.queue(g, 0, scratch, BAD_TAG)
}

/// Runs `bad` to queue one malformed TX chain (returning its head), then
/// queues a good frame, and checks what a user cares about.
fn tx_case(opts: GuestOpts, bad: impl FnOnce(&mut FakeGuest) -> u16) {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::connect(&s.daemon.socket, &opts);
    let bad_head = bad(&mut g);
    let good = frames::test_frame(200, GOOD_TAG, HOST_MAC, GUEST_MAC);
    let good_head = g.queue_tx(0, &frames::plain_hdr(), &good, 2);
    g.tx(0).kick();

    let used = g.wait_tx_used(0, 2);
    let mut ids: Vec<u16> = used.iter().map(|u| u.id).collect();
    ids.sort();
    let mut want = vec![bad_head, good_head];
    want.sort();
    assert_eq!(ids, want, "both chains returned exactly once: {used:?}");
    assert!(used.iter().all(|u| u.len == 0), "{used:?}");

    // Frames leave the tap in the order they were written: the bad one
    // would come before the good one.
    let first = host
        .recv_matching(Duration::from_secs(20), |f| {
            frames::tag_of(&f[PACKET_HDR_LEN..]).is_some()
        })
        .expect("the good frame after the bad chain never came out of the tap");
    assert_eq!(
        frames::tag_of(&first[PACKET_HDR_LEN..]),
        Some(GOOD_TAG),
        "the malformed frame was sent"
    );
    assert_eq!(&first[PACKET_HDR_LEN..], &good[..]);

    let m = Daemon::scrape(&s.ns);
    assert_eq!(
        Daemon::metric(&m, "zcnet_malformed_chains_total", 0),
        1,
        "counted once"
    );
    assert_eq!(Daemon::metric(&m, "zcnet_tx_frames_total", 0), 1);
    assert!(g.tx(0).take_used().is_empty(), "nothing returned twice");
}

#[test]
fn descriptor_outside_guest_memory() {
    tx_case(GuestOpts::default(), |g| {
        malformed(g, Malformed::OutsideMemory)
    });
}

#[test]
fn descriptor_in_the_memory_hole() {
    tx_case(GuestOpts::default(), |g| malformed(g, Malformed::InTheHole));
}

#[test]
fn descriptor_crossing_the_end_of_memory() {
    tx_case(GuestOpts::default(), |g| {
        malformed(g, Malformed::CrossingTheEnd)
    });
}

#[test]
fn write_only_descriptor_on_tx() {
    tx_case(GuestOpts::default(), |g| malformed(g, Malformed::WriteOnly));
}

#[test]
fn descriptor_loop_longer_than_the_queue() {
    tx_case(GuestOpts::default(), |g| {
        malformed(g, Malformed::DescriptorLoop)
    });
}

#[test]
fn indirect_table_that_loops() {
    tx_case(GuestOpts::default(), |g| {
        malformed(g, Malformed::IndirectLoop)
    });
}

#[test]
fn frame_over_64_kib() {
    tx_case(GuestOpts::default(), |g| malformed(g, Malformed::Over64KiB));
}

#[test]
fn chain_shorter_than_header_and_ethernet() {
    tx_case(GuestOpts::default(), |g| malformed(g, Malformed::TooShort));
}

fn lying_header(g: &mut FakeGuest, hdr: [u8; HDR_LEN]) -> u16 {
    let frame = frames::test_frame(3000, BAD_TAG, HOST_MAC, GUEST_MAC);
    g.queue_tx(0, &hdr, &frame, 1)
}

#[test]
fn gso_header_with_zero_mss() {
    tx_case(GuestOpts::default(), |g| {
        malformed(g, Malformed::GsoZeroMss)
    });
}

#[test]
fn gso_type_the_guest_did_not_negotiate() {
    let opts = GuestOpts {
        wanted: GuestOpts::default().wanted & !HOST_TSO6,
        ..GuestOpts::default()
    };
    tx_case(opts, |g| {
        let (gso, _) = frames::tcp4_frame(2000, 1448, 1, HOST_MAC, GUEST_MAC);
        let mut hdr = frames::v1_hdr(&gso.hdr);
        hdr[1] = 4; // TCPv6
        lying_header(g, hdr)
    });
}

#[test]
fn checksum_offset_outside_the_frame() {
    tx_case(GuestOpts::default(), |g| {
        malformed(g, Malformed::CsumOutsideFrame)
    });
}

#[test]
fn read_only_descriptor_on_rx() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, false);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    let bad_addr = g.alloc(2048);
    let ring = g.rx(0);
    let bad = ring.add_chain(&[Desc {
        addr: bad_addr,
        len: 2048,
        write: false,
    }]);
    ring.publish(bad);
    // Room for the largest (64 KiB GSO) frame: zcnet waits for that much.
    let good = g.post_rx(0, 40, 2048);
    let frame = frames::test_frame(100, GOOD_TAG, GUEST_MAC, HOST_MAC);
    host.send(&frame);

    let used = g.wait_rx_used(0, 2);
    let bad_used = used
        .iter()
        .find(|u| u.id == bad)
        .expect("bad chain returned");
    assert_eq!(bad_used.len, 0);
    let good_used = used
        .iter()
        .find(|u| u.id == good[0].0)
        .expect("good buffer used");
    assert_eq!(good_used.len as usize, HDR_LEN + frame.len());
    assert_eq!(&g.read(good[0].1 + HDR_LEN as u64, frame.len()), &frame);
    assert_eq!(
        g.read(bad_addr, 16),
        vec![0u8; 16],
        "nothing written into the read-only buffer"
    );
    let m = Daemon::scrape(&s.ns);
    assert_eq!(Daemon::metric(&m, "zcnet_malformed_chains_total", 0), 1);
    assert_eq!(Daemon::metric(&m, "zcnet_rx_frames_total", 0), 1);
}
