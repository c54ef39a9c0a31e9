//! Live migration through the real daemon and a real tap: the dirty log
//! QEMU shares (SET_LOG_BASE, `LOG_ALL`, `VHOST_VRING_F_LOG`) gets a bit
//! for every guest page zcnet writes and none while logging is off; bad
//! logs are refused with an error reply and the daemon keeps serving;
//! SEND_RARP puts QEMU's RARP announcement on the tap.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use zcnet_harness::daemon::ZcnetBin;
use zcnet_harness::frames::{self, PacketSock, GUEST_MAC, HOST_MAC};
use zcnet_harness::guest::*;
use zcnet_harness::ring::Desc;
use zcnet_harness::roundtrip::tx_roundtrip;
use zcnet_harness::setup::{Setup, TAP};
use zcnet_harness::vhost::vhost_user::message::VhostUserProtocolFeatures;
use zcnet_harness::vhost::VhostBackend;

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

const WAIT: Duration = Duration::from_secs(20);

/// QEMU's protocol features with migration: LOG_SHMFD and RARP.
fn migrating(wanted: u64) -> GuestOpts {
    GuestOpts {
        wanted,
        protocol: VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::RARP,
        ..GuestOpts::default()
    }
}

/// The pages of ring `ring`'s used area that elements `from..from +
/// count` and `used.idx` live in.
fn used_pages(ring: &zcnet_harness::ring::Ring, from: u16, count: usize) -> BTreeSet<u64> {
    let used = ring.used_addr();
    let mut out: BTreeSet<u64> = log_pages(used + 2, 2).collect();
    for i in 0..count {
        let slot = u64::from(from.wrapping_add(i as u16) % ring.size());
        out.extend(log_pages(used + 4 + 8 * slot, 8));
    }
    out
}

/// Sends tagged frames of `sizes` into the tap, as the host would.
fn inject(plain: &PacketSock, sizes: &[usize], tag0: u32) {
    for (i, &len) in sizes.iter().enumerate() {
        plain.send(&frames::test_frame(
            len,
            tag0 + i as u32,
            GUEST_MAC,
            HOST_MAC,
        ));
    }
}

/// Waits for `count` RX frames; returns each as the (address, length) of
/// the buffers it filled.
fn rx_frames(g: &mut FakeGuest, posted: &[(u16, u64)], count: usize) -> Vec<Vec<(u64, u32)>> {
    let addr = |id: u16| {
        posted
            .iter()
            .find(|(h, _)| *h == id)
            .expect("a posted buffer")
            .1
    };
    let mut used = Vec::new();
    let mut frames = Vec::new();
    let mut next = 0;
    while frames.len() < count {
        while used.len() <= next {
            used.extend(g.wait_rx_used(0, 1));
        }
        let first: zcnet_harness::ring::Used = used[next];
        let hdr = g.read(addr(first.id), HDR_LEN);
        let num_buffers = usize::from(u16::from_le_bytes([hdr[10], hdr[11]]));
        assert!(num_buffers >= 1);
        while used.len() < next + num_buffers {
            used.extend(g.wait_rx_used(0, 1));
        }
        frames.push(
            used[next..next + num_buffers]
                .iter()
                .map(|u| (addr(u.id), u.len))
                .collect(),
        );
        next += num_buffers;
    }
    frames
}

fn assert_all_marked(log: &DirtyLogFile, expected: &BTreeSet<u64>) {
    let marked = log.marked();
    let missing: Vec<_> = expected.difference(&marked).collect();
    assert!(
        missing.is_empty(),
        "pages zcnet wrote whose bits are not set: {missing:x?} (marked: {} pages)",
        marked.len()
    );
}

#[test]
fn with_log_all_every_page_zcnet_writes_is_marked_mergeable() {
    let s = Setup::new(&zcnet(), &[]);
    let plain = PacketSock::open(&s.ns, TAP, false);
    let gso_sock = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::connect(&s.daemon.socket, &migrating(GuestOpts::default().wanted));
    assert_ne!(g.acked & MRG_RXBUF, 0);
    assert!(g.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD));
    let log = g.start_dirty_log();
    s.daemon.wait_log("dirty logging on");

    // RX buffers of several sizes, most straddling page boundaries.
    let mut posted = g.post_rx(0, 30, 1526);
    posted.extend(g.post_rx(0, 20, 4096));
    posted.extend(g.post_rx(0, 30, 700));
    let sizes = [60, 1514, 1000, 64, 1200, 1514, 333];
    inject(&plain, &sizes, 100);
    // One 60 KB TSO frame: it spans many mergeable buffers.
    let (gso, tso) = frames::tcp4_frame(60_000, 1448, 40_000, GUEST_MAC, HOST_MAC);
    let mut wire = gso.hdr.to_vec();
    wire.extend_from_slice(&tso);
    gso_sock.send(&wire);

    // TX frames: zcnet only reads their buffers, and writes the used ring.
    let tx_first = g.tx(0).used_idx();
    let mut tx_bufs = Vec::new();
    for (i, len) in [60usize, 1514, 4000].into_iter().enumerate() {
        let f = frames::test_frame(len, 200 + i as u32, HOST_MAC, GUEST_MAC);
        let before = g.buffer_room();
        g.queue_tx(0, &frames::plain_hdr(), &f, 2);
        let addr = MEM_SIZE - before;
        tx_bufs.push((addr, (HDR_LEN + len) as u64));
    }
    g.tx(0).kick();
    let tx_used = g.wait_tx_used(0, 3);

    // Every injected frame arrives; each is `num_buffers` used elements.
    let rx_used = rx_frames(&mut g, &posted, sizes.len() + 1);
    let rx_elements: usize = rx_used.iter().map(Vec::len).sum();
    assert!(
        rx_elements > sizes.len(),
        "the TSO frame took several buffers"
    );

    let mut expected = BTreeSet::new();
    for parts in &rx_used {
        for &(addr, len) in parts {
            expected.extend(log_pages(addr, u64::from(len)));
        }
    }
    expected.extend(used_pages(g.rx(0), 0, rx_elements));
    expected.extend(used_pages(g.tx(0), tx_first, tx_used.len()));
    assert_all_marked(&log, &expected);

    // Pages zcnet only read (TX buffers), unless something else on them
    // was written, stay clear: the log is not simply all ones.
    let marked = log.marked();
    let read_only: BTreeSet<u64> = tx_bufs
        .iter()
        .flat_map(|&(a, l)| log_pages(a, l))
        .filter(|p| !expected.contains(p))
        .collect();
    assert!(
        !read_only.is_empty(),
        "the TX buffers share no page with RX"
    );
    let wrongly: Vec<_> = read_only.intersection(&marked).collect();
    assert!(
        wrongly.is_empty(),
        "pages zcnet only read are marked: {wrongly:x?}"
    );
}

#[test]
fn with_log_all_every_page_zcnet_writes_is_marked_without_mergeable_buffers() {
    let s = Setup::new(&zcnet(), &[]);
    let plain = PacketSock::open(&s.ns, TAP, false);
    let wanted = VERSION_1 | PROTOCOL_FEATURES | EVENT_IDX | MAC | STATUS;
    let mut g = FakeGuest::connect(&s.daemon.socket, &migrating(wanted));
    assert_eq!(g.acked & MRG_RXBUF, 0);
    let log = g.start_dirty_log();

    // Chains of three 600-byte descriptors, each starting 200 bytes
    // before a page boundary.
    let mut chains = Vec::new();
    for _ in 0..10 {
        let descs: Vec<Desc> = (0..3)
            .map(|_| {
                let at = g.alloc(8192);
                let addr = (at + 4096) / 4096 * 4096 - 200;
                Desc {
                    addr,
                    len: 600,
                    write: true,
                }
            })
            .collect();
        let head = g.rx(0).add_chain(&descs);
        g.rx(0).publish(head);
        chains.push((head, descs));
    }
    g.rx(0).kick();
    let sizes = [60, 500, 1000, 1514, 200, 1300];
    inject(&plain, &sizes, 300);
    let used = g.wait_rx_used(0, sizes.len());

    let mut expected = used_pages(g.rx(0), 0, used.len());
    for u in &used {
        let (_, descs) = chains.iter().find(|(h, _)| *h == u.id).unwrap();
        let mut left = u64::from(u.len);
        for d in descs {
            let n = left.min(u64::from(d.len));
            expected.extend(log_pages(d.addr, n));
            left -= n;
        }
    }
    assert!(expected.len() > 2 * sizes.len(), "frames crossed pages");
    assert_all_marked(&log, &expected);
}

#[test]
fn with_log_all_off_the_log_stays_all_zero() {
    let s = Setup::new(&zcnet(), &[]);
    let plain = PacketSock::open(&s.ns, TAP, false);
    let mut g = FakeGuest::connect(&s.daemon.socket, &migrating(GuestOpts::default().wanted));

    // A log, but LOG_ALL never acked.
    let log = DirtyLogFile::new(g.log_size());
    g.set_log_base(&log.file, log.size).expect("SET_LOG_BASE");
    traffic(&mut g, &plain, 400);
    assert!(log.marked().is_empty(), "marked: {:x?}", log.marked());

    // Acked, then cleared (a cancelled migration): nothing after.
    let log = g.start_dirty_log();
    traffic(&mut g, &plain, 500);
    assert!(!log.marked().is_empty(), "logging while LOG_ALL is acked");
    g.stop_dirty_log();
    s.daemon.wait_log("dirty logging off");
    log.clear();
    traffic(&mut g, &plain, 600);
    assert!(
        log.marked().is_empty(),
        "marked after LOG_ALL was cleared: {:x?}",
        log.marked()
    );
}

/// Two frames each way.
fn traffic(g: &mut FakeGuest, plain: &PacketSock, tag: u32) {
    let posted = g.post_rx(0, 2, 2048);
    inject(plain, &[100, 1400], tag);
    assert_eq!(rx_frames(g, &posted, 2).len(), 2);
    for i in 0..2 {
        let f = frames::test_frame(300, tag + 10 + i, HOST_MAC, GUEST_MAC);
        g.queue_tx(0, &frames::plain_hdr(), &f, 1);
    }
    g.tx(0).kick();
    g.wait_tx_used(0, 2);
}

#[test]
fn bad_logs_get_an_error_reply_and_the_daemon_keeps_serving() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::connect(&s.daemon.socket, &migrating(GuestOpts::default().wanted));
    let need = g.log_size();

    // Not shared memory: a pipe.
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let e = g.set_log_base(&pipe_r, need).unwrap_err();
    eprintln!("pipe: {e}");
    // Too small for guest memory (the last page has no bit).
    let short = DirtyLogFile::new(need);
    g.set_log_base(&short.file, need / 2).unwrap_err();
    // A size larger than the file: a mapping past its end would SIGBUS.
    g.set_log_base(&short.file, need * 2).unwrap_err();

    let log = s.daemon.log_text();
    for why in [
        "not a shared-memory file (a pipe)",
        "guest memory reaches",
        "holds",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("refused SET_LOG_BASE") && l.contains(why)),
            "no refusal saying {why:?}:\n{log}"
        );
    }
    // The same connection still moves frames, and takes a good log.
    tx_roundtrip(&mut g, &host, 7);
    let good = DirtyLogFile::new(need);
    g.set_log_base(&good.file, need)
        .expect("a good log after bad ones");
    g.frontend
        .set_features(g.acked | LOG_ALL)
        .expect("SET_FEATURES with LOG_ALL");
    g.sync();
    tx_roundtrip(&mut g, &host, 8);
    assert!(!good.marked().is_empty(), "the good log is the one in use");
    assert!(short.marked().is_empty(), "a refused log is never written");
}

#[test]
fn send_rarp_broadcasts_qemus_announcement_through_the_tap() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, false);
    // The vhost crate's frontend cannot send SEND_RARP: raw messages, in
    // QEMU's order, up to an enabled first queue pair.
    let mut raw = s.daemon.connect_raw();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const SET_OWNER: u32 = 3;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const SET_VRING_ENABLE: u32 = 18;
    const SEND_RARP: u32 = 19;
    const V1: u32 = 1;

    let offered = raw_call(&mut raw, GET_FEATURES, &[]);
    let proto = raw_call(&mut raw, GET_PROTOCOL_FEATURES, &[]);
    let rarp = VhostUserProtocolFeatures::RARP.bits();
    assert_ne!(proto & rarp, 0, "RARP offered");
    raw_send(&mut raw, SET_PROTOCOL_FEATURES, V1, &rarp.to_ne_bytes());
    raw_send(&mut raw, SET_OWNER, V1, &[]);
    // QEMU enables the first pair before SET_FEATURES, and a migration's
    // destination sends SEND_RARP before it starts the device: the
    // announcement must be well formed then too.
    let mut enable = 0u32.to_ne_bytes().to_vec();
    enable.extend_from_slice(&1u32.to_ne_bytes());
    raw_send(&mut raw, SET_VRING_ENABLE, V1, &enable);
    let mut body = [0u8; 8];
    body[..6].copy_from_slice(&GUEST_MAC);
    raw_send(&mut raw, SEND_RARP, V1, &body);
    assert_rarp(&host);

    let acked = offered & (VERSION_1 | PROTOCOL_FEATURES);
    raw_send(&mut raw, SET_FEATURES, V1, &acked.to_ne_bytes());
    // The handler has applied SET_FEATURES once it answers a later
    // request.
    assert_eq!(raw_call(&mut raw, GET_FEATURES, &[]), offered);
    raw_send(&mut raw, SEND_RARP, V1, &body);
    assert_rarp(&host);
    // The connection goes on.
    assert_eq!(raw_call(&mut raw, GET_FEATURES, &[]), offered);
    s.daemon
        .wait_log("SEND_RARP: broadcast a RARP announcement for 52:54:00:12:34:56");
}

/// The next RARP on the tap is QEMU's announcement for the guest.
fn assert_rarp(host: &PacketSock) {
    let got = host
        .recv_matching(WAIT, |f| f.len() >= 14 && f[12..14] == [0x80, 0x35])
        .expect("no RARP came out of the tap");
    assert_eq!(got.len(), 60);
    assert_eq!(&got[..6], &[0xff; 6], "broadcast");
    assert_eq!(&got[6..12], &GUEST_MAC, "from the guest's MAC");
    assert_eq!(
        &got[14..22],
        &[0, 1, 8, 0, 6, 4, 0, 3],
        "Ethernet/IPv4 reverse request"
    );
    assert_eq!(&got[22..28], &GUEST_MAC);
    assert_eq!(&got[32..38], &GUEST_MAC);
}

fn raw_send(sock: &mut UnixStream, code: u32, flags: u32, body: &[u8]) {
    let mut msg = Vec::new();
    for word in [code, flags, body.len() as u32] {
        msg.extend_from_slice(&word.to_ne_bytes());
    }
    msg.extend_from_slice(body);
    sock.write_all(&msg).expect("send a request");
}

/// Sends a request and reads its reply, which must carry one u64.
fn raw_call(sock: &mut UnixStream, code: u32, body: &[u8]) -> u64 {
    raw_send(sock, code, 1, body);
    let mut reply = [0u8; 20];
    sock.read_exact(&mut reply)
        .unwrap_or_else(|e| panic!("no reply to request {code}: {e}"));
    let word = |i: usize| u32::from_ne_bytes(reply[i..i + 4].try_into().unwrap());
    assert_eq!(word(0), code, "reply to another request");
    assert_eq!(word(8), 8, "not a u64 reply");
    u64::from_ne_bytes(reply[12..20].try_into().unwrap())
}
