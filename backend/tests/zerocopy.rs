//! The UDP attachment and the TX completion engine, with the real kernel:
//! guest pages lent with MSG_ZEROCOPY, chains held until the kernel's
//! notification, GET_VRING_BASE draining them, and nothing lost, doubled
//! or returned early.

use std::collections::HashSet;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::frames::{self, GUEST_MAC, HOST_MAC};
use zcnet_harness::guest::{FakeGuest, GuestOpts, HDR_LEN};
use zcnet_harness::udp_lab::{Path, UdpLab};
use zcnet_harness::vhost::VhostBackend;

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

fn frame(len: usize, tag: u32) -> Vec<u8> {
    frames::test_frame(len, tag, HOST_MAC, GUEST_MAC)
}

fn connect(lab: &UdpLab) -> FakeGuest {
    let opts = GuestOpts {
        queue_size: 1024,
        ..GuestOpts::default()
    };
    FakeGuest::connect(&lab.daemon.socket, &opts)
}

fn queue(g: &mut FakeGuest, f: &[u8]) -> u16 {
    g.queue_tx(0, &[0u8; HDR_LEN], f, 1 + f.len() / 8192)
}

fn metric(m: &str, name: &str) -> u64 {
    Daemon::metric(m, name, 0)
}

/// Holds frames on zcnet's veth: after the first (which spends the
/// bucket), frames wait in the qdisc, their pages still lent.
fn hold(lab: &UdpLab) {
    lab.tc(&[
        "qdisc", "add", "dev", "va", "root", "tbf", "rate", "8kbit", "burst", "21000", "latency",
        "100s",
    ]);
}

/// Lets the held frames go (the qdisc is replaced, its queue freed).
fn release(lab: &UdpLab) {
    lab.tc(&["qdisc", "replace", "dev", "va", "root", "pfifo"]);
}

#[test]
fn lent_pages_reach_an_ifb_wire_uncopied_and_every_chain_returns_once() {
    let lab = UdpLab::new(
        &zcnet(),
        Path::Ifb,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "1000"],
    );
    let mut g = connect(&lab);
    assert_eq!(
        g.acked & zcnet_harness::guest::CSUM,
        0,
        "raw UDP frames cannot carry offloads"
    );

    let mut heads: Vec<u16> = (0..40).map(|t| queue(&mut g, &frame(20_000, t))).collect();
    heads.push(queue(&mut g, &frame(500, 99))); // below the threshold: copied
    g.tx(0).kick();
    let used = g.wait_tx_used(0, heads.len());
    let ids: Vec<u16> = used.iter().map(|u| u.id).collect();
    assert_eq!(ids.len(), heads.len());
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        heads.iter().collect::<HashSet<_>>(),
        "every chain returned exactly once"
    );

    let m = lab.wait_metric("zcnet_tx_zerocopy_completed_total", 40);
    assert_eq!(metric(&m, "zcnet_tx_frames_total"), 41);
    assert_eq!(metric(&m, "zcnet_tx_zerocopy_sends_total"), 40);
    assert_eq!(metric(&m, "zcnet_tx_zerocopy_completed_total"), 40);
    assert_eq!(
        metric(&m, "zcnet_tx_zerocopy_copied_total"),
        0,
        "the kernel copied frames that left through ifb"
    );
    assert_eq!(metric(&m, "zcnet_tx_copy_fallbacks_total"), 0);
    assert_eq!(metric(&m, "zcnet_tx_lent_chains"), 0);
    assert!(metric(&m, "zcnet_tx_lent_chains_max") >= 1);
}

#[test]
fn local_delivery_is_reported_copied_and_auto_backs_off_to_copying() {
    let lab = UdpLab::new(&zcnet(), Path::Veth, &["--zerocopy-min-bytes", "1000"]);
    let rx = lab.receiver();
    let mut g = connect(&lab);
    let sent: Vec<Vec<u8>> = (0..100).map(|t| frame(20_000, t)).collect();
    // Phase 1 is lent until zcnet has seen a streak of COPIED (local
    // delivery): how many that is depends on when the notifications are
    // reaped, but never fewer than a streak. In phase 2, once every
    // notification of phase 1 is in, `auto` copies every frame.
    let mut lent_in_phase_1 = 0;
    for (phase, frames) in [&sent[..40], &sent[40..]].into_iter().enumerate() {
        let heads: HashSet<u16> = frames.iter().map(|f| queue(&mut g, f)).collect();
        g.tx(0).kick();
        let used = g.wait_tx_used(0, frames.len());
        assert_eq!(
            used.iter().map(|u| u.id).collect::<HashSet<_>>(),
            heads,
            "every chain returned exactly once"
        );
        let lent = metric(&Daemon::scrape(&lab.ns), "zcnet_tx_zerocopy_sends_total");
        lab.wait_metric("zcnet_tx_zerocopy_completed_total", lent);
        if phase == 0 {
            lent_in_phase_1 = lent;
        }
    }
    let mut buf = vec![0u8; 70_000];
    for (i, f) in sent.iter().enumerate() {
        let n = rx.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], &f[..], "frame {i} altered or out of order");
    }
    let m = Daemon::scrape(&lab.ns);
    let lent = metric(&m, "zcnet_tx_zerocopy_sends_total");
    assert_eq!(metric(&m, "zcnet_tx_frames_total"), 100);
    assert!(
        (16..=40).contains(&lent_in_phase_1),
        "{lent_in_phase_1} frames lent before the back-off: at least a streak (16), at most phase 1"
    );
    assert_eq!(
        lent, lent_in_phase_1,
        "phase 2 lent nothing: auto backed off"
    );
    assert_eq!(
        metric(&m, "zcnet_tx_zerocopy_copied_total"),
        lent,
        "local delivery copies every lent frame"
    );
    assert_eq!(
        metric(&m, "zcnet_tx_copy_fallbacks_total"),
        100 - lent,
        "auto mode copies after a streak of COPIED"
    );
    assert!(lab
        .daemon
        .log_text()
        .contains("the kernel copies lent frames anyway"));
}

#[test]
fn a_lent_chain_is_not_used_before_the_kernel_releases_its_pages() {
    let lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "1000"],
    );
    let rx = lab.receiver();
    hold(&lab);
    let mut g = connect(&lab);
    let sent: Vec<Vec<u8>> = (0..4).map(|t| frame(20_000, t)).collect();
    let heads: Vec<u16> = sent.iter().map(|f| queue(&mut g, f)).collect();
    g.tx(0).kick();

    // The first frame passes the qdisc and is released; the rest are
    // sent (lent) but held.
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 4);
    lab.wait_metric("zcnet_tx_zerocopy_completed_total", 1);
    let mut buf = vec![0u8; 70_000];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &sent[0][..]);
    let first = g.wait_tx_used(0, 1);
    assert_eq!(first[0].id, heads[0]);
    let m = Daemon::scrape(&lab.ns);
    assert_eq!(metric(&m, "zcnet_tx_lent_chains"), 3);
    assert_eq!(
        g.tx(0).used_idx(),
        1,
        "a chain went to the used ring while the kernel still held its pages"
    );

    release(&lab);
    let rest = g.wait_tx_used(0, 3);
    assert_eq!(
        rest.iter().map(|u| u.id).collect::<HashSet<_>>(),
        heads[1..].iter().copied().collect::<HashSet<_>>()
    );
    let m = lab.wait_metric("zcnet_tx_zerocopy_completed_total", 4);
    assert_eq!(metric(&m, "zcnet_tx_lent_chains"), 0);
    // The three held at once (the first may be released before the last
    // is lent).
    assert!(metric(&m, "zcnet_tx_lent_chains_max") >= 3);
}

#[test]
fn get_vring_base_waits_for_lent_chains_before_it_answers() {
    let lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "1000"],
    );
    let _rx = lab.receiver();
    hold(&lab);
    let mut g = connect(&lab);
    let heads: Vec<u16> = (0..4).map(|t| queue(&mut g, &frame(20_000, t))).collect();
    g.tx(0).kick();
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 4);
    lab.wait_metric("zcnet_tx_zerocopy_completed_total", 1);

    let (released_tx, released_rx) = mpsc::channel();
    let log = lab.daemon.log.clone();
    let ns_name = lab.ns.name.clone();
    let releaser = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("waiting up to")
        {
            assert!(Instant::now() < deadline, "zcnet never started draining");
            thread::sleep(Duration::from_millis(10)); // polling a condition, with a deadline
        }
        let releasing = Instant::now();
        let ok = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns_name, "tc", "qdisc", "replace", "dev", "va",
            ])
            .args(["root", "pfifo"])
            .status()
            .expect("tc");
        assert!(ok.success());
        released_tx.send(releasing).unwrap();
    });
    let base = g.frontend.get_vring_base(1).expect("GET_VRING_BASE");
    let answered = Instant::now();
    releaser.join().expect("releaser");
    let released = released_rx.recv().unwrap();
    assert!(
        answered >= released,
        "GET_VRING_BASE answered before the kernel released the lent pages"
    );
    assert_eq!(base, 4);
    // Every chain was on the used ring when the reply came.
    let used = g.tx(0).take_used();
    assert_eq!(
        used.iter().map(|u| u.id).collect::<HashSet<_>>(),
        heads.into_iter().collect::<HashSet<_>>()
    );
    assert!(lab.daemon.log_text().contains("3 lent TX chains drained"));
}

#[test]
fn an_expired_drain_abandons_chains_and_nothing_is_written_after_the_reply() {
    let lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &[
            "--zerocopy",
            "on",
            "--zerocopy-min-bytes",
            "1000",
            "--zerocopy-drain-ms",
            "200",
        ],
    );
    let _rx = lab.receiver();
    hold(&lab);
    let mut g = connect(&lab);
    for t in 0..4 {
        queue(&mut g, &frame(20_000, t));
    }
    g.tx(0).kick();
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 4);
    lab.wait_metric("zcnet_tx_zerocopy_completed_total", 1);
    g.wait_tx_used(0, 1);

    assert_eq!(g.frontend.get_vring_base(1).expect("GET_VRING_BASE"), 4);
    lab.daemon.wait_log("with 3 TX chains still lent");
    let after_reply = g.tx(0).used_idx();
    assert_eq!(after_reply, 1);

    // The kernel releases the pages now: zcnet reaps the notifications
    // but must not touch the stopped ring.
    release(&lab);
    lab.wait_metric("zcnet_tx_zerocopy_completed_total", 4);
    assert_eq!(
        g.tx(0).used_idx(),
        after_reply,
        "the used ring was written after the GET_VRING_BASE reply"
    );
}

#[test]
fn randomized_run_loses_duplicates_and_returns_early_nothing() {
    const FRAMES: usize = 100_000;
    const ROUND: usize = 96;
    let lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "4096"],
    );
    let rx = lab.receiver();
    let mut g = FakeGuest::connect(
        &lab.daemon.socket,
        &GuestOpts {
            queue_size: 512,
            ..GuestOpts::default()
        },
    );
    let seed = fastrand::u64(..);
    eprintln!("randomized run seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    // The receiver checks every datagram against what the guest sent, in
    // order, pausing at random; it reports each finished round.
    let (frames_tx, frames_rx) = mpsc::channel::<Vec<Vec<u8>>>();
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let receiver = thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        let mut pause = fastrand::Rng::with_seed(seed ^ 1);
        let mut got = 0usize;
        for round in frames_rx {
            for f in &round {
                if pause.u8(..) == 0 {
                    thread::sleep(Duration::from_micros(pause.u64(100..3000))); // a slow receiver, not synchronisation
                }
                let n = rx.recv(&mut buf).expect("a datagram (lost?)");
                assert!(
                    buf[..n] == f[..],
                    "datagram {got} differs from the frame sent (an early completion lets the guest overwrite a lent buffer)"
                );
                got += 1;
            }
            done_tx.send(got).unwrap();
        }
        got
    });

    let mut make_round = |g: &mut FakeGuest, n: usize| {
        g.reset_alloc();
        let round: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let len = rng.usize(60..=30_000);
                let mut f = frame(len, 0);
                rng.fill(&mut f[14..]);
                f
            })
            .collect();
        let heads: Vec<u16> = round.iter().map(|f| queue(g, f)).collect();
        (round, heads)
    };
    let mut sent = 0;
    let (mut round, mut heads) = make_round(&mut g, ROUND);
    while sent < FRAMES {
        let n = round.len();
        frames_tx.send(round).unwrap();
        g.tx(0).kick();
        let used = g.wait_tx_used(0, n);
        let ids: HashSet<u16> = used.iter().map(|u| u.id).collect();
        assert_eq!(used.len(), n, "a chain was returned twice");
        assert_eq!(
            ids,
            heads.into_iter().collect(),
            "chains missing from the used ring"
        );
        sent += n;
        // Rewrite the same buffers at once, before the receiver has read
        // this round: safe only if no chain came back before the kernel
        // let go of its pages.
        (round, heads) = make_round(&mut g, ROUND.min(FRAMES - sent));
        // Flow control only, so the receiver's buffer never overflows.
        assert_eq!(done_rx.recv().unwrap(), sent);
    }
    drop(frames_tx);
    assert_eq!(receiver.join().expect("receiver"), FRAMES);

    let sends = metric(&Daemon::scrape(&lab.ns), "zcnet_tx_zerocopy_sends_total");
    let m = lab.wait_metric("zcnet_tx_zerocopy_completed_total", sends);
    assert_eq!(metric(&m, "zcnet_tx_frames_total"), FRAMES as u64);
    assert_eq!(metric(&m, "zcnet_tx_lent_chains"), 0);
    assert!(sends > 0, "nothing was lent");
    eprintln!(
        "randomized run: {FRAMES} frames, {sends} lent, {} copied by fallback, max {} lent at once",
        metric(&m, "zcnet_tx_copy_fallbacks_total"),
        metric(&m, "zcnet_tx_lent_chains_max")
    );
}

#[test]
fn datagrams_from_the_peer_land_in_guest_buffers_with_a_plain_header() {
    let lab = UdpLab::new(&zcnet(), Path::Veth, &[]);
    let peer = lab.receiver();
    let mut g = connect(&lab);
    let bufs = g.post_rx(0, 8, 2048);
    let sent = [frame(60, 1), frame(1514, 2)];
    for f in &sent {
        peer.send_to(f, zcnet_harness::udp_lab::LOCAL)
            .expect("send to zcnet");
    }
    let used = g.wait_rx_used(0, 2);
    for (u, f) in used.iter().zip(&sent) {
        let addr = bufs
            .iter()
            .find(|(h, _)| *h == u.id)
            .expect("a posted buffer")
            .1;
        assert_eq!(u.len as usize, HDR_LEN + f.len(), "used length");
        let got = g.read(addr, HDR_LEN + f.len());
        let mut hdr = [0u8; HDR_LEN];
        hdr[10] = 1; // num_buffers
        assert_eq!(
            &got[..HDR_LEN],
            &hdr,
            "a raw peer's frame gets a plain header"
        );
        assert_eq!(&got[HDR_LEN..], &f[..], "frame altered");
    }
    let m = Daemon::scrape(&lab.ns);
    assert_eq!(metric(&m, "zcnet_rx_frames_total"), 2);
    assert_eq!(metric(&m, "zcnet_rx_bytes_total"), (60 + 1514) as u64);
}

#[test]
fn an_unreachable_udp_peer_costs_frames_not_chains() {
    // Nothing listens on the remote port yet: the peer namespace answers
    // with ICMP port unreachable, which a connected UDP socket reports as
    // ECONNREFUSED on a later send.
    let lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "1000"],
    );
    let mut g = connect(&lab);
    let mut heads = HashSet::new();
    for round in 0..4u32 {
        let batch: Vec<u16> = (0..10)
            .map(|t| queue(&mut g, &frame(20_000, round * 10 + t)))
            .collect();
        g.tx(0).kick();
        let used = g.wait_tx_used(0, batch.len());
        assert_eq!(
            used.iter().map(|u| u.id).collect::<HashSet<_>>(),
            batch.iter().copied().collect::<HashSet<_>>(),
            "every chain returned exactly once"
        );
        heads.extend(batch);
    }
    let m = Daemon::scrape(&lab.ns);
    assert!(
        metric(&m, "zcnet_tx_dropped_total") > 0,
        "the refused sends were not counted:\n{m}"
    );
    // The peer comes up: frames flow again.
    let rx = lab.receiver();
    let f = frame(20_000, 999);
    queue(&mut g, &f);
    g.tx(0).kick();
    g.wait_tx_used(0, 1);
    let mut buf = vec![0u8; 70_000];
    let n = rx.recv(&mut buf).expect("a datagram once the peer listens");
    assert_eq!(&buf[..n], &f[..]);
    lab.wait_metric(
        "zcnet_tx_zerocopy_completed_total",
        metric(&Daemon::scrape(&lab.ns), "zcnet_tx_zerocopy_sends_total"),
    );
}

/// A lent send the kernel refuses after building its packet (EPERM from a
/// netfilter drop on the way out) still takes a zero-copy id. zcnet must
/// count it, or the refused send's notification later completes a chain
/// whose pages the kernel still holds.
#[test]
fn lent_sends_refused_on_the_way_out_keep_the_id_count_right() {
    let lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "1000"],
    );
    let rx = lab.receiver();
    lab.ns.exec(&["nft", "add", "table", "inet", "zcdrop"]);
    lab.ns.exec(&[
        "nft",
        "add chain inet zcdrop out { type filter hook output priority 0 ; }",
    ]);
    lab.ns
        .exec(&["nft", "add rule inet zcdrop out udp dport 7000 drop"]);
    let mut g = connect(&lab);
    let refused: Vec<u16> = (0..3).map(|t| queue(&mut g, &frame(20_000, t))).collect();
    g.tx(0).kick();
    let used = g.wait_tx_used(0, 3);
    assert_eq!(
        used.iter().map(|u| u.id).collect::<HashSet<_>>(),
        refused.iter().copied().collect::<HashSet<_>>()
    );
    let m = Daemon::scrape(&lab.ns);
    assert_eq!(metric(&m, "zcnet_tx_dropped_total"), 3, "refused, counted");
    lab.ns.exec(&["nft", "delete", "table", "inet", "zcdrop"]);

    // Now the kernel holds lent pages: none of these may come back early.
    hold(&lab);
    let sent: Vec<Vec<u8>> = (10..14).map(|t| frame(20_000, t)).collect();
    let heads: Vec<u16> = sent.iter().map(|f| queue(&mut g, f)).collect();
    g.tx(0).kick();
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 4);
    let mut buf = vec![0u8; 70_000];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &sent[0][..], "the first passes the qdisc");
    let first = g.wait_tx_used(0, 1);
    assert_eq!(first[0].id, heads[0]);
    // Every notification the kernel sent so far is reaped: the three
    // refused sends' ids and the first frame's.
    lab.wait_metric("zcnet_tx_zerocopy_completed_total", 4);
    g.sync();
    assert_eq!(
        g.tx(0).used_idx(),
        4,
        "a held chain went to the used ring: the refused sends' notifications completed it"
    );
    release(&lab);
    let rest = g.wait_tx_used(0, 3);
    assert_eq!(
        rest.iter().map(|u| u.id).collect::<HashSet<_>>(),
        heads[1..].iter().copied().collect::<HashSet<_>>()
    );
}
