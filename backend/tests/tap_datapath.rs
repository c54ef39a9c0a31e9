//! The datapath through a real tap: frames from the fake guest come out of
//! the tap byte for byte and in order, frames sent into the tap land in the
//! guest's buffers with the right header, on one queue pair and on two; a
//! tap that is down costs frames, never chains. Every test runs once per
//! TX I/O engine: `NAME::uring` (batches of linked io_uring writes) and
//! `NAME::syscall` (one writev per frame).

use std::collections::HashSet;
use std::time::Duration;

use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::frames::{self, PacketSock, GUEST_MAC, HOST_MAC, PACKET_HDR_LEN};
use zcnet_harness::guest::{FakeGuest, GuestOpts, HDR_LEN};
use zcnet_harness::setup::{Setup, TAP};

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

const WAIT: Duration = Duration::from_secs(20);

/// A test run once per `--io-engine`: the body sees the engine's name as
/// `$engine`, and passes it to zcnet.
macro_rules! engine_test {
    ($(#[$meta:meta])* fn $name:ident($engine:ident) $body:block) => {
        mod $name {
            use super::*;

            $(#[$meta])*
            #[test]
            fn uring() {
                let $engine = "uring";
                $body
            }

            $(#[$meta])*
            #[test]
            fn syscall() {
                let $engine = "syscall";
                $body
            }
        }
    };
}

engine_test! {
fn tx_frames_come_out_of_the_tap_byte_for_byte(engine) {
    let s = Setup::new(&zcnet(), &["--io-engine", engine]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());

    let small = frames::test_frame(60, 1, HOST_MAC, GUEST_MAC);
    let mtu = frames::test_frame(1514, 2, HOST_MAC, GUEST_MAC);
    let (gso, tso) = frames::tcp4_frame(64_000, 1448, 40_000, HOST_MAC, GUEST_MAC);
    let heads = [
        g.queue_tx(0, &frames::plain_hdr(), &small, 1),
        g.queue_tx(0, &frames::plain_hdr(), &mtu, 3),
        g.queue_tx(0, &frames::v1_hdr(&gso.hdr), &tso, 17),
    ];
    g.tx(0).kick();

    let used = g.wait_tx_used(0, 3);
    let ids: Vec<u16> = used.iter().map(|u| u.id).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        heads.iter().collect::<HashSet<_>>(),
        "each chain returned once: {used:?}"
    );
    assert_eq!(ids.len(), 3);
    assert!(
        used.iter().all(|u| u.len == 0),
        "TX used length is 0: {used:?}"
    );

    for (tag, frame) in [(1, &small), (2, &mtu)] {
        let got = host
            .recv_matching(WAIT, |f| frames::tag_of(&f[PACKET_HDR_LEN..]) == Some(tag))
            .unwrap_or_else(|| panic!("frame {tag} never came out of the tap"));
        assert_eq!(&got[PACKET_HDR_LEN..], &frame[..], "frame {tag} altered");
    }
    let got = host
        .recv_matching(WAIT, |f| {
            f.len() > PACKET_HDR_LEN + 14 && f[PACKET_HDR_LEN + 12..PACKET_HDR_LEN + 14] == [8, 0]
        })
        .expect("the TSO frame never came out of the tap");
    assert_eq!(
        got.len(),
        PACKET_HDR_LEN + tso.len(),
        "the TSO frame arrived whole, not segmented"
    );
    assert_eq!(&got[PACKET_HDR_LEN..], &tso[..]);
    assert_eq!(got[1], 1, "GSO type TCPv4 kept");
    assert_eq!(u16::from_le_bytes([got[4], got[5]]), 1448, "MSS kept");

    let m = Daemon::scrape(&s.ns);
    assert_eq!(Daemon::metric(&m, "zcnet_tx_frames_total", 0), 3);
    assert_eq!(
        Daemon::metric(&m, "zcnet_tx_bytes_total", 0),
        (small.len() + mtu.len() + tso.len()) as u64
    );
    assert_eq!(Daemon::metric(&m, "zcnet_malformed_chains_total", 0), 0);
    assert_eq!(Daemon::metric(&m, "zcnet_tx_dropped_total", 0), 0);
    assert!(g.tx(0).take_used().is_empty(), "no chain returned twice");
}
}

engine_test! {
fn rx_frames_land_in_guest_buffers_with_a_header(engine) {
    let s = Setup::new(&zcnet(), &["--io-engine", engine]);
    let host = PacketSock::open(&s.ns, TAP, false);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    // Room for the largest (64 KiB GSO) frame: zcnet waits for that much.
    let bufs = g.post_rx(0, 40, 2048);

    let sent = [
        frames::test_frame(60, 11, GUEST_MAC, HOST_MAC),
        frames::test_frame(1514, 12, GUEST_MAC, HOST_MAC),
    ];
    for f in &sent {
        host.send(f);
    }
    let used = g.wait_rx_used(0, 2);
    for (u, f) in used.iter().zip(&sent) {
        let addr = bufs
            .iter()
            .find(|(h, _)| *h == u.id)
            .expect("used id is a posted buffer")
            .1;
        assert_eq!(
            u.len as usize,
            HDR_LEN + f.len(),
            "used length covers header and frame"
        );
        let got = g.read(addr, u.len as usize);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(got[1], 0, "no GSO on a plain frame");
        assert_eq!(&got[HDR_LEN..], &f[..], "frame bytes");
    }
    let m = Daemon::scrape(&s.ns);
    assert_eq!(Daemon::metric(&m, "zcnet_rx_frames_total", 0), 2);
    assert_eq!(
        Daemon::metric(&m, "zcnet_rx_bytes_total", 0),
        (60 + 1514) as u64
    );
}
}

engine_test! {
fn rx_gso_frame_spans_mergeable_buffers(engine) {
    let s = Setup::new(&zcnet(), &["--io-engine", engine]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    const BUF: usize = 4096;
    let bufs = g.post_rx(0, 64, BUF);

    let (gso, frame) = frames::tcp4_frame(60_000, 1448, 41_000, GUEST_MAC, HOST_MAC);
    let mut wire = gso.hdr.to_vec();
    wire.extend_from_slice(&frame);
    host.send(&wire);

    let total = HDR_LEN + frame.len();
    let expect_bufs = total.div_ceil(BUF);
    let used = g.wait_rx_used(0, expect_bufs);
    assert_eq!(
        used.len(),
        expect_bufs,
        "one frame, {expect_bufs} buffers: {used:?}"
    );
    let mut bytes = Vec::new();
    for u in &used {
        let addr = bufs
            .iter()
            .find(|(h, _)| *h == u.id)
            .expect("posted buffer")
            .1;
        bytes.extend(g.read(addr, u.len as usize));
    }
    assert_eq!(bytes.len(), total);
    assert_eq!(
        u16::from_le_bytes([bytes[10], bytes[11]]) as usize,
        expect_bufs,
        "num_buffers"
    );
    assert_eq!(bytes[1], 1, "delivered as one TCPv4 GSO frame");
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 1448, "MSS");
    assert_eq!(&bytes[HDR_LEN..], &frame[..], "frame bytes");
}
}

engine_test! {
fn rx_gso_frame_waits_for_room_and_is_never_delivered_cut(engine) {
    let s = Setup::new(&zcnet(), &["--io-engine", engine]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    const BUF: usize = 4096;
    // Too little for the frame: zcnet must wait, not deliver 16 KiB of it.
    let mut bufs = g.post_rx(0, 4, BUF);
    let (gso, frame) = frames::tcp4_frame(60_000, 1448, 42_000, GUEST_MAC, HOST_MAC);
    let mut wire = gso.hdr.to_vec();
    wire.extend_from_slice(&frame);
    host.send(&wire);
    bufs.extend(g.post_rx(0, 60, BUF));

    let total = HDR_LEN + frame.len();
    let expect_bufs = total.div_ceil(BUF);
    let used = g.wait_rx_used(0, expect_bufs);
    let first = bufs.iter().find(|(h, _)| *h == used[0].id).unwrap().1;
    let hdr = g.read(first, HDR_LEN);
    assert_eq!(
        u16::from_le_bytes([hdr[10], hdr[11]]) as usize,
        expect_bufs,
        "the first frame delivered is the whole GSO frame, not a cut one: {used:?}"
    );
    let delivered: usize = used.iter().map(|u| u.len as usize).sum();
    assert_eq!(delivered, total);
    let m = Daemon::scrape(&s.ns);
    assert_eq!(Daemon::metric(&m, "zcnet_rx_frames_total", 0), 1);
    assert_eq!(Daemon::metric(&m, "zcnet_rx_dropped_total", 0), 0);
}
}

engine_test! {
fn two_queue_pairs_carry_traffic_at_once(engine) {
    let s = Setup::new(&zcnet(), &["--queue-pairs", "2", "--io-engine", engine]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let opts = GuestOpts {
        pairs: 2,
        ..GuestOpts::default()
    };
    let mut g = FakeGuest::connect(&s.daemon.socket, &opts);
    assert_eq!(g.queue_num, 4);
    const PER_PAIR: u32 = 100;

    // TX: both pairs at once.
    for pair in 0..2 {
        for i in 0..PER_PAIR {
            let f = frames::test_frame(200, pair * 1000 + i, HOST_MAC, GUEST_MAC);
            g.queue_tx(pair as usize, &frames::plain_hdr(), &f, 1);
        }
    }
    g.tx(0).kick();
    g.tx(1).kick();
    assert_eq!(
        g.wait_tx_used(0, PER_PAIR as usize).len(),
        PER_PAIR as usize
    );
    assert_eq!(
        g.wait_tx_used(1, PER_PAIR as usize).len(),
        PER_PAIR as usize
    );
    let mut seen = HashSet::new();
    while seen.len() < 2 * PER_PAIR as usize {
        let f = host
            .recv_matching(WAIT, |f| frames::tag_of(&f[PACKET_HDR_LEN..]).is_some())
            .unwrap_or_else(|| panic!("only {} of {} frames came out", seen.len(), 2 * PER_PAIR));
        assert!(
            seen.insert(frames::tag_of(&f[PACKET_HDR_LEN..]).unwrap()),
            "duplicate frame"
        );
    }

    // RX: many flows, which the tap spreads over its queues.
    for pair in 0..2 {
        g.post_rx(pair, 128, 2048);
    }
    let flows = 64u16;
    let raw = PacketSock::open(&s.ns, TAP, false);
    for port in 0..flows {
        let (_, f) = frames::tcp4_frame(100, 1448, 30_000 + port, GUEST_MAC, HOST_MAC);
        // A non-GSO frame with a full checksum is not needed: the guest
        // side here only counts frames.
        raw.send(&f);
    }
    let m = wait_for_rx(&s, &mut g, flows as u64);
    let rx0 = Daemon::metric(&m, "zcnet_rx_frames_total", 0);
    let rx1 = Daemon::metric(&m, "zcnet_rx_frames_total", 1);
    assert_eq!(rx0 + rx1, u64::from(flows));
    assert!(rx0 > 0 && rx1 > 0, "both queues received: {rx0} + {rx1}");
    assert_eq!(
        Daemon::metric(&m, "zcnet_tx_frames_total", 0),
        u64::from(PER_PAIR)
    );
    assert_eq!(
        Daemon::metric(&m, "zcnet_tx_frames_total", 1),
        u64::from(PER_PAIR)
    );
}
}

/// Collects RX used elements on both pairs until `frames` frames arrived,
/// then returns a metrics scrape.
fn wait_for_rx(s: &Setup, g: &mut FakeGuest, frames: u64) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    let mut got = 0u64;
    while got < frames {
        assert!(
            std::time::Instant::now() < deadline,
            "only {got} of {frames} frames reached the guest"
        );
        for pair in 0..2 {
            got += g.rx(pair).take_used().len() as u64;
        }
        if got < frames {
            g.rx(0).wait_call(Duration::from_millis(50));
        }
    }
    Daemon::scrape(&s.ns)
}

engine_test! {
/// Hundreds of frames queued at once leave the tap in the order the
/// guest queued them, once each, and zcnet says which engine it used.
fn tx_frames_leave_the_tap_in_ring_order(engine) {
    let s = Setup::new(&zcnet(), &["--io-engine", engine]);
    s.daemon
        .wait_log(&format!("TX I/O engine: {engine} (--io-engine {engine})"));
    let host = PacketSock::open(&s.ns, TAP, false);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    // Few enough for the packet socket's receive buffer to hold at once.
    const FRAMES: u32 = 120;
    for tag in 0..FRAMES {
        let f = frames::test_frame(60 + tag as usize % 50, tag, HOST_MAC, GUEST_MAC);
        g.queue_tx(0, &frames::plain_hdr(), &f, 1 + tag as usize % 3);
    }
    g.tx(0).kick();
    assert_eq!(g.wait_tx_used(0, FRAMES as usize).len(), FRAMES as usize);
    let tags: Vec<u32> = (0..FRAMES)
        .map(|i| {
            let f = host
                .recv_matching(WAIT, |f| frames::tag_of(f).is_some())
                .unwrap_or_else(|| panic!("only {i} of {FRAMES} frames came out"));
            frames::tag_of(&f).unwrap()
        })
        .collect();
    assert_eq!(tags, (0..FRAMES).collect::<Vec<_>>(), "in ring order");
    let m = Daemon::scrape(&s.ns);
    assert_eq!(Daemon::metric(&m, "zcnet_tx_frames_total", 0), u64::from(FRAMES));
    assert_eq!(Daemon::metric(&m, "zcnet_tx_dropped_total", 0), 0);
}
}

engine_test! {
/// A tap that is down refuses every write (EIO): each frame is a drop,
/// each chain comes back once, and once the tap is up frames go again.
fn a_tap_that_is_down_costs_frames_not_chains(engine) {
    let s = Setup::new(&zcnet(), &["--io-engine", engine]);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    s.ns.ip(&["link", "set", TAP, "down"]);
    const FRAMES: usize = 150;
    let mut heads: Vec<u16> = (0..FRAMES as u32)
        .map(|tag| {
            let f = frames::test_frame(100, tag, HOST_MAC, GUEST_MAC);
            g.queue_tx(0, &frames::plain_hdr(), &f, 1)
        })
        .collect();
    g.tx(0).kick();
    let mut ids: Vec<u16> = g.wait_tx_used(0, FRAMES).iter().map(|u| u.id).collect();
    ids.sort_unstable();
    heads.sort_unstable();
    assert_eq!(ids, heads, "every chain back, once");
    let m = Daemon::scrape(&s.ns);
    assert_eq!(Daemon::metric(&m, "zcnet_tx_dropped_total", 0), FRAMES as u64);
    assert_eq!(Daemon::metric(&m, "zcnet_tx_frames_total", 0), 0);

    s.ns.ip(&["link", "set", TAP, "up"]);
    let host = PacketSock::open(&s.ns, TAP, false);
    let f = frames::test_frame(100, 7777, HOST_MAC, GUEST_MAC);
    g.queue_tx(0, &frames::plain_hdr(), &f, 1);
    g.tx(0).kick();
    assert_eq!(g.wait_tx_used(0, 1).len(), 1);
    let got = host
        .recv_matching(WAIT, |f| frames::tag_of(f) == Some(7777))
        .expect("the frame sent once the tap is up came out");
    assert_eq!(got, f);
    assert!(g.tx(0).take_used().is_empty(), "no chain returned twice");
}
}
