//! The vhost-user side: negotiation as QEMU and cloud-hypervisor do it,
//! bad messages, disconnect and reconnect, GET_VRING_BASE, SIGTERM, and
//! bad command lines.

use std::io::{Read, Write};
use std::time::Duration;

use nix::sys::signal::Signal;
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::frames::{self, PacketSock, GUEST_MAC, HOST_MAC};
use zcnet_harness::guest::*;
use zcnet_harness::netns::NetNs;
use zcnet_harness::roundtrip::tx_roundtrip;
use zcnet_harness::setup::{Setup, TAP};
use zcnet_harness::vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use zcnet_harness::vhost::vhost_user::VhostUserFrontend;
use zcnet_harness::vhost::VhostBackend;

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn qemu_negotiation_offers_offloads_and_no_in_order() {
    let s = Setup::new(&zcnet(), &["--queue-pairs", "2"]);
    let opts = GuestOpts {
        pairs: 2,
        // QEMU acks what it knows of what is offered; LOG_ALL only while
        // it migrates (vhost_dev_set_features).
        wanted: !LOG_ALL,
        protocol: VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MTU
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::RARP
            | VhostUserProtocolFeatures::BACKEND_REQ,
        ..GuestOpts::default()
    };
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::connect(&s.daemon.socket, &opts);
    for (bit, name) in [
        (VERSION_1, "VERSION_1"),
        (CSUM, "CSUM"),
        (GUEST_CSUM, "GUEST_CSUM"),
        (HOST_TSO4, "HOST_TSO4"),
        (HOST_TSO6, "HOST_TSO6"),
        (GUEST_TSO4, "GUEST_TSO4"),
        (GUEST_TSO6, "GUEST_TSO6"),
        (MRG_RXBUF, "MRG_RXBUF"),
        (EVENT_IDX, "EVENT_IDX"),
        (INDIRECT_DESC, "INDIRECT_DESC"),
        (MQ, "MQ"),
        (MAC, "MAC"),
        (STATUS, "STATUS"),
    ] {
        assert_ne!(g.acked & bit, 0, "{name} not negotiated");
    }
    assert_eq!(g.offered & IN_ORDER, 0, "IN_ORDER must not be offered");
    assert_eq!(g.offered & MTU, 0, "MTU only with --mtu");
    // NET_MTU would make QEMU send NET_SET_MTU, which the vhost crate
    // cannot dispatch. LOG_SHMFD and RARP are live migration's: without
    // LOG_SHMFD QEMU refuses to migrate the guest, and LOG_ALL must be
    // offered too (QEMU's other migration blocker).
    assert!(!g.protocol.contains(VhostUserProtocolFeatures::MTU));
    assert!(g.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD));
    assert!(g.protocol.contains(VhostUserProtocolFeatures::RARP));
    assert_ne!(g.offered & LOG_ALL, 0, "VHOST_F_LOG_ALL offered");
    assert_eq!(
        g.acked & LOG_ALL,
        0,
        "LOG_ALL is acked only while migrating"
    );
    assert_eq!(g.queue_num, 4, "GET_QUEUE_NUM counts virtqueues");
    tx_roundtrip(&mut g, &host, 1);
}

#[test]
fn cloud_hypervisor_negotiation_with_memory_slots_and_config() {
    let s = Setup::new(
        &zcnet(),
        &[
            "--queue-pairs",
            "2",
            "--mac",
            "52:54:00:aa:bb:cc",
            "--mtu",
            "9000",
        ],
    );
    let opts = GuestOpts {
        pairs: 2,
        wanted: GuestOpts::default().wanted | IN_ORDER | MTU,
        protocol: VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::LOG_SHMFD,
        ..GuestOpts::default()
    };
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::negotiate(&s.daemon.socket, &opts);
    assert_eq!(
        g.protocol, opts.protocol,
        "all five protocol features accepted"
    );
    assert_eq!(
        g.acked & IN_ORDER,
        0,
        "IN_ORDER refused even when offered by the frontend"
    );
    assert_ne!(g.acked & MTU, 0);
    assert!(
        g.queue_num >= 4,
        "cloud-hypervisor fails if GET_QUEUE_NUM < requested"
    );

    let (_, cfg) = g
        .frontend
        .get_config(0, 12, VhostUserConfigFlags::empty(), &[0u8; 12])
        .expect("GET_CONFIG");
    assert_eq!(&cfg[0..6], &[0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc], "mac");
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    assert_eq!(
        u16::from_le_bytes([cfg[8], cfg[9]]),
        2,
        "max_virtqueue_pairs"
    );
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 9000, "mtu");
    // A read past the config space gets the protocol's error (a zero-size
    // reply); the vhost crate's frontend blocks waiting for the payload it
    // asked for, so that case is covered by config_space's unit test.

    assert!(g.frontend.get_max_mem_slots().expect("GET_MAX_MEM_SLOTS") >= 8);
    for r in g.regions() {
        g.frontend.add_mem_region(&r).expect("ADD_MEM_REG");
    }
    for q in 0..4 {
        g.start_ring(q, 256);
    }
    g.sync();
    tx_roundtrip(&mut g, &host, 2);
}

/// QEMU 7.2+ sends SET_VRING_ENABLE before SET_FEATURES (the vhost
/// crate's frontend refuses to, so these are raw messages). zcnet acks
/// them and replays them after SET_FEATURES; the handler accepts them then
/// and the connection stays up.
#[test]
fn qemu_order_set_vring_enable_before_set_features_keeps_the_connection() {
    let s = Setup::new(&zcnet(), &[]);
    let mut raw = s.daemon.connect_raw();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const SET_VRING_ENABLE: u32 = 18;
    const V1: u32 = 1;
    const NEED_REPLY: u32 = V1 | 0x8;

    let offered = raw_call(&mut raw, GET_FEATURES, V1, &[]);
    assert_ne!(offered & PROTOCOL_FEATURES, 0);
    let proto = raw_call(&mut raw, GET_PROTOCOL_FEATURES, V1, &[]);
    let wanted =
        proto & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK).bits();
    raw_send(&mut raw, SET_PROTOCOL_FEATURES, V1, &wanted.to_ne_bytes());
    for ring in 0..2u32 {
        let mut body = ring.to_ne_bytes().to_vec();
        body.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(
            raw_call(&mut raw, SET_VRING_ENABLE, NEED_REPLY, &body),
            0,
            "early SET_VRING_ENABLE {ring} refused"
        );
    }
    let acked = offered & (GuestOpts::default().wanted);
    assert_eq!(
        raw_call(&mut raw, SET_FEATURES, NEED_REPLY, &acked.to_ne_bytes()),
        0,
        "SET_FEATURES refused"
    );
    // The replayed enables were accepted: the connection still answers,
    // and no stray reply came before this one.
    assert_eq!(raw_call(&mut raw, GET_FEATURES, V1, &[]), offered);
    assert!(
        !s.daemon.log_text().contains("frontend connection ended"),
        "{}",
        s.daemon.log_text()
    );
}

fn raw_send(sock: &mut std::os::unix::net::UnixStream, code: u32, flags: u32, body: &[u8]) {
    let mut msg = Vec::new();
    for word in [code, flags, body.len() as u32] {
        msg.extend_from_slice(&word.to_ne_bytes());
    }
    msg.extend_from_slice(body);
    sock.write_all(&msg).expect("send a request");
}

/// Sends a request and reads its reply, which must carry one u64.
fn raw_call(sock: &mut std::os::unix::net::UnixStream, code: u32, flags: u32, body: &[u8]) -> u64 {
    raw_send(sock, code, flags, body);
    let mut reply = [0u8; 20];
    sock.read_exact(&mut reply)
        .unwrap_or_else(|e| panic!("no reply to request {code}: {e}"));
    let word = |i: usize| u32::from_ne_bytes(reply[i..i + 4].try_into().unwrap());
    assert_eq!(word(0), code, "reply to another request");
    assert_ne!(word(4) & 0x4, 0, "not a reply");
    assert_eq!(word(8), 8, "not a u64 reply");
    u64::from_ne_bytes(reply[12..20].try_into().unwrap())
}

#[test]
fn bad_messages_get_an_error_and_the_daemon_keeps_listening() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);

    // A queue larger than the device allows: an error reply. zcnet refuses
    // it itself, so the connection stays up (vhost-user-backend would have
    // ended it) and the same frontend goes on to move a frame.
    let mut g = FakeGuest::negotiate(&s.daemon.socket, &GuestOpts::default());
    g.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    assert!(
        g.frontend.set_vring_num(0, 4096).is_err(),
        "oversized queue accepted"
    );
    bring_up(&mut g);
    tx_roundtrip(&mut g, &host, 3);
    assert_refused_once(&s.daemon, "ring 0 size 4096");
    drop(g);
    s.daemon
        .wait_log("frontend disconnected; waiting for the next connection");

    // An unknown request code: the connection is closed, not hung.
    let mut raw = s.daemon.connect_raw();
    let mut msg = Vec::new();
    msg.extend_from_slice(&9999u32.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    raw.write_all(&msg).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(raw.read(&mut buf).expect("connection closed, not hung"), 0);

    // And the next frontend is served.
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 4);
}

/// Field case: a frontend configured for 100-entry rings. A split ring's
/// size must be a power of two; vhost-user-backend would keep its old size
/// and zcnet would then run a 256-entry ring over the guest's 100-entry
/// one.
#[test]
fn a_ring_size_that_is_not_a_power_of_two_is_refused_and_the_daemon_keeps_serving() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);

    // With REPLY_ACK: an error reply, and the same frontend goes on.
    let mut g = FakeGuest::negotiate(&s.daemon.socket, &GuestOpts::default());
    g.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    assert!(
        g.frontend.set_vring_num(0, 100).is_err(),
        "a 100-entry split ring accepted"
    );
    bring_up(&mut g);
    tx_roundtrip(&mut g, &host, 30);
    assert_refused_once(&s.daemon, "ring 0 size 100");
    assert!(
        s.daemon
            .log_text()
            .contains("a power of two from 1 to 1024 (zcnet runs with --queue-size 1024)"),
        "the log does not say what to fix:\n{}",
        s.daemon.log_text()
    );
    drop(g);

    // Without REPLY_ACK the refusal cannot be answered, so zcnet closes
    // the connection rather than let the frontend run a ring of a size
    // zcnet does not use...
    let opts = GuestOpts {
        protocol: VhostUserProtocolFeatures::MQ,
        ..GuestOpts::default()
    };
    let g = FakeGuest::negotiate(&s.daemon.socket, &opts);
    g.frontend
        .set_vring_num(0, 100)
        .expect("sent; no ack is awaited without REPLY_ACK");
    assert!(
        g.frontend.get_features().is_err(),
        "the connection is still up after a refusal the frontend cannot hear"
    );
    s.daemon.wait_log("could not learn of the refusal");
    drop(g);

    // ...and the next frontend is served.
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 31);
}

/// Memory and both rings of pair 0, 256 entries, after negotiation.
fn bring_up(g: &mut FakeGuest) {
    g.set_mem_table();
    for q in 0..2 {
        g.start_ring(q, 256);
    }
    g.sync();
}

/// The daemon logged the refusal of `what` exactly once.
fn assert_refused_once(daemon: &Daemon, what: &str) {
    let log = daemon.log_text();
    assert_eq!(
        log.matches(what).count(),
        1,
        "the refusal of {what} is not logged once:\n{log}"
    );
    assert!(
        log.contains(&format!("refused SET_VRING_NUM from the frontend: {what}")),
        "{log}"
    );
}

#[test]
fn a_reconnecting_frontend_finds_the_daemon_serving() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 10);
    drop(g);
    s.daemon
        .wait_log("frontend disconnected; waiting for the next connection");

    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 11);
    // RX works on the new connection too.
    let raw = PacketSock::open(&s.ns, TAP, false);
    let bufs = g.post_rx(0, 40, 2048);
    let f = frames::test_frame(80, 12, GUEST_MAC, HOST_MAC);
    raw.send(&f);
    let used = g.wait_rx_used(0, 1);
    let addr = bufs.iter().find(|b| b.0 == used[0].id).unwrap().1;
    assert_eq!(&g.read(addr + HDR_LEN as u64, f.len()), &f);

    let m = Daemon::scrape(&s.ns);
    assert_eq!(
        Daemon::metric(&m, "zcnet_tx_frames_total", 0),
        2,
        "counters survive reconnects"
    );
    assert_eq!(
        Daemon::global_metric(&m, "zcnet_frontend_connections_total"),
        2
    );
}

#[test]
fn get_vring_base_stops_the_queue() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let raw = PacketSock::open(&s.ns, TAP, false);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    for tag in 20..25 {
        tx_roundtrip(&mut g, &host, tag);
    }
    let base = g.frontend.get_vring_base(1).expect("GET_VRING_BASE");
    assert_eq!(base, 5, "next avail index of the TX queue");
    s.daemon
        .wait_log("queue 1 stopped by frontend (GET_VRING_BASE)");

    // The stopped TX queue is not processed any more, while RX, on the
    // same worker, still is.
    let f = frames::test_frame(300, 99, HOST_MAC, GUEST_MAC);
    g.queue_tx(0, &frames::plain_hdr(), &f, 1);
    g.tx(0).kick();
    g.post_rx(0, 40, 2048);
    raw.send(&frames::test_frame(90, 98, GUEST_MAC, HOST_MAC));
    g.wait_rx_used(0, 1);
    assert_eq!(
        g.tx(0).used_idx(),
        5,
        "the device wrote the used ring of a stopped queue"
    );
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut s = Setup::new(&zcnet(), &[]);
    let _g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    let status = s.daemon.signal_and_wait(Signal::SIGTERM);
    assert!(status.success(), "exit status {status}");
    assert!(!s.daemon.socket.exists(), "socket file left behind");
    assert!(
        s.daemon.log_text().contains("received SIGTERM"),
        "{}",
        s.daemon.log_text()
    );
}

fn run_zcnet(ns: &NetNs, args: &[&str]) -> (i32, String) {
    let out = ns
        .command(env!("CARGO_BIN_EXE_zcnet"))
        .args(args)
        .output()
        .expect("run zcnet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_command_lines_exit_non_zero_and_say_what_to_fix() {
    let ns = NetNs::new();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let sock = sock.to_str().unwrap();
    for (args, needle) in [
        (vec!["--socket-path", sock], "--tap"),
        (
            vec!["--socket-path", sock, "--tap", "t0", "--queue-pairs", "0"],
            "--queue-pairs 0: use a number from 1 to 32",
        ),
        (
            vec!["--socket-path", sock, "--tap", "t0", "--queue-size", "100"],
            "power of two",
        ),
        (
            vec![
                "--socket-path",
                sock,
                "--tap",
                "t0",
                "--mac",
                "zz:00:00:00:00:00",
            ],
            "six hex bytes",
        ),
        (vec!["--socket-path", sock, "--tap", "bad/name"], "--tap"),
        (
            vec!["--socket-path", "/nonexistent-dir/s", "--tap", "t0"],
            "does not exist",
        ),
        (
            vec!["--socket-path", sock, "--tap", "t0", "--metrics", "nowhere"],
            "--metrics",
        ),
    ] {
        let (code, err) = run_zcnet(&ns, &args);
        assert_ne!(code, 0, "{args:?} exited 0");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} does not mention {needle:?}"
        );
    }
    // A tap that exists without multi_queue and vnet_hdr.
    ns.ip(&["tuntap", "add", "dev", "plain0", "mode", "tap"]);
    let (code, err) = run_zcnet(&ns, &["--socket-path", sock, "--tap", "plain0"]);
    assert_ne!(code, 0);
    assert!(err.contains("multi_queue vnet_hdr"), "{err}");
}
