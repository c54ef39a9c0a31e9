//! Live migration of a running guest from one QEMU on one zcnet to another
//! QEMU on another zcnet, over QMP, while a TCP stream of known bytes
//! crosses the move; then the guest reaches the host and runs iperf3 from
//! the destination. The same host-to-guest migration with QEMU's own tap
//! backend runs in the same test, for the downtime comparison in README.
//!
//! The stream is long enough to span the migration by construction: the
//! sender (or, guest to host, the guest) goes on until the migration has
//! completed and another 20 MB have crossed from the destination, and
//! carries at least 100 MB in all. Nothing here depends on timing.

use std::cmp::max;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use guest_tests::results::{iperf, Iperf};
use serde_json::{json, Value};
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::frames::{self, PacketSock, HOST_MAC, PACKET_HDR_LEN};
use zcnet_harness::guest::{FakeGuest, GuestOpts, HDR_LEN};
use zcnet_harness::migration_lab::{
    connect, free_port, receive_stream, send_stream, BridgeLab, Digest, Progress, UdpRelayLab,
    GUEST_ADDR, STREAM_PORT, TAP_A, TAP_B, WIRE_MTU,
};
use zcnet_harness::netns::NetNs;
use zcnet_harness::qmp::Qmp;
use zcnet_harness::vm::{one_guest_at_a_time, skip_requested, Nic, Vm, VmExtra, VmSpec};

const BOOT: Duration = Duration::from_secs(300);
const MIGRATE: Duration = Duration::from_secs(240);
const STREAM: Duration = Duration::from_secs(300);
/// How much a stream carries: before the migration starts, after it
/// completed, and at least in all.
#[derive(Clone, Copy)]
struct Amounts {
    before: u64,
    after: u64,
    total: u64,
}

/// The tap tests' streams: 100 MB or more.
const FULL: Amounts = Amounts {
    before: 20 << 20,
    after: 20 << 20,
    total: 100 << 20,
};
/// iperf3 after the move: a floor of data moved, not a speed.
const FLOOR_BYTES: u64 = 1 << 20;

/// What one migration showed.
struct Moved {
    /// QEMU's `query-migrate` answer on the source when it completed.
    query: Value,
    /// What the host sent or received, and what the guest hashed.
    host: Digest,
    guest: Digest,
    after_tx: Iperf,
    after_rx: Iperf,
}

impl Moved {
    fn ms(&self, key: &str) -> u64 {
        self.query[key]
            .as_u64()
            .unwrap_or_else(|| panic!("query-migrate has no {key}: {}", self.query))
    }

    fn summary(&self) -> String {
        format!(
            "downtime {} ms, total {} ms ({} MB migrated at {:.0} Mbit/s); stream {} MB, \
             sha256 {}…; after the move: iperf3 guest->host {:.2} Gbit/s, host->guest {:.2} Gbit/s",
            self.ms("downtime"),
            self.ms("total-time"),
            self.query["ram"]["transferred"].as_u64().unwrap_or(0) >> 20,
            self.query["ram"]["mbps"].as_f64().unwrap_or(0.0),
            self.host.bytes >> 20,
            &self.host.sha256[..12],
            self.after_tx.gbit(),
            self.after_rx.gbit(),
        )
    }
}

/// The source (running) and destination (`-incoming`) QEMU of one guest,
/// and their QMP connections.
struct Pair {
    a: Vm,
    b: Vm,
    qmp_a: Qmp,
    uri: String,
    _qmp_b: Qmp,
    _dir: tempfile::TempDir,
}

/// Boots the guest in `mode` on `nic_a` and starts the destination QEMU on
/// `nic_b`, waiting for the migration on 127.0.0.1:`port` (of the
/// namespace QEMU runs in).
fn boot_pair(mode: &str, nic_a: Nic, nic_b: Nic, port: u16, append: &str) -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    let (qa, qb): (PathBuf, PathBuf) = (dir.path().join("a.qmp"), dir.path().join("b.qmp"));
    let uri = format!("tcp:127.0.0.1:{port}");
    let spec = |name, nic| VmSpec {
        name,
        cpus: 1,
        mode,
        iperf_seconds: 2,
        nic,
        ip: VmSpec::IP,
        server: VmSpec::SERVER,
        mac: VmSpec::MAC,
    };
    let a = Vm::boot_with(
        &spec("A (source)", nic_a),
        &VmExtra {
            qmp: Some(qa.clone()),
            incoming: None,
            append: append.to_owned(),
        },
    );
    let b = Vm::boot_with(
        &spec("B (destination)", nic_b),
        &VmExtra {
            qmp: Some(qb.clone()),
            incoming: Some(uri.clone()),
            append: append.to_owned(),
        },
    );
    let mut qmp_a = Qmp::connect(&qa, Duration::from_secs(60));
    let qmp_b = Qmp::connect(&qb, Duration::from_secs(60));
    // Enough bandwidth that the guest's own writes never outrun the
    // migration (QEMU's default is 128 MiB/s); downtime-limit stays at
    // QEMU's default, for zcnet and QEMU's tap alike.
    qmp_a.execute(
        "migrate-set-parameters",
        json!({ "max-bandwidth": 1u64 << 30 }),
    );
    Pair {
        a,
        b,
        qmp_a,
        uri,
        _qmp_b: qmp_b,
        _dir: dir,
    }
}

impl Pair {
    /// Migrates the running guest from A to B; returns `query-migrate`.
    fn migrate(&mut self) -> Value {
        self.qmp_a
            .execute("migrate", json!({ "uri": self.uri.clone() }));
        let m = self.qmp_a.wait_migration(MIGRATE);
        assert_eq!(
            m["status"], "completed",
            "the migration did not complete: {m}"
        );
        m
    }

    /// The guest's `ZCNET-BYTES` and `ZCNET-SHA256`, on B's console.
    fn guest_digest(&self) -> Digest {
        let value = |marker: &str| {
            let line = self.b.wait_marker(marker, STREAM);
            line[line.find(marker).unwrap() + marker.len()..]
                .trim()
                .to_owned()
        };
        let bytes = value("ZCNET-BYTES ");
        Digest {
            bytes: bytes
                .parse()
                .unwrap_or_else(|e| panic!("ZCNET-BYTES {bytes:?}: {e}")),
            sha256: value("ZCNET-SHA256 "),
        }
    }

    /// Waits for the guest to finish on B and returns its iperf3 runs.
    fn after(&mut self) -> (Iperf, Iperf) {
        let console = self.b.wait_done(BOOT);
        assert!(
            console.contains("ZCNET-PING2-OK"),
            "the guest could not reach the host from the destination"
        );
        let (tx, rx) = (iperf(&console, "after-tx"), iperf(&console, "after-rx"));
        for (what, r) in [("guest->host", &tx), ("host->guest", &rx)] {
            assert!(
                r.bytes >= FLOOR_BYTES,
                "iperf3 {what} after the move: only {} bytes",
                r.bytes
            );
        }
        (tx, rx)
    }
}

/// The host streams into the guest (`migrate-rx`) from `host_ns` while A
/// migrates to B.
fn host_to_guest(host_ns: &NetNs, nic_a: Nic, nic_b: Nic, port: u16) -> (Moved, Pair) {
    let amounts = FULL;
    let mut p = boot_pair("migrate-rx", nic_a, nic_b, port, "");
    p.a.wait_marker("ZCNET-MIGRATE-READY", BOOT);
    let guest: SocketAddr = format!("{GUEST_ADDR}:{STREAM_PORT}").parse().unwrap();
    let progress = Progress::new();
    let sender = send_stream(
        connect(host_ns, guest, Duration::from_secs(60)),
        progress.clone(),
    );
    progress.wait_for(
        amounts.before,
        STREAM,
        "host->guest stream before the migration",
    );
    let query = p.migrate();
    let at = progress.bytes.load(Ordering::Relaxed);
    progress
        .stop_at
        .store(max(amounts.total, at + amounts.after), Ordering::Relaxed);
    let host = sender.join().expect("the sender");
    let guest = p.guest_digest();
    let (after_tx, after_rx) = p.after();
    (
        Moved {
            query,
            host,
            guest,
            after_tx,
            after_rx,
        },
        p,
    )
}

/// The guest streams to a listener in `host_ns` (`migrate-tx`) while A
/// migrates to B.
fn guest_to_host(
    host_ns: &NetNs,
    nic_a: Nic,
    nic_b: Nic,
    port: u16,
    append: &str,
    amounts: Amounts,
) -> (Moved, Pair) {
    let addr: SocketAddr = format!("{}:{STREAM_PORT}", VmSpec::SERVER).parse().unwrap();
    let listener = host_ns.enter(move || TcpListener::bind(addr).expect("listen for the stream"));
    let progress = Progress::new();
    let receiver = receive_stream(listener, progress.clone());
    let mut p = boot_pair("migrate-tx", nic_a, nic_b, port, append);
    p.a.wait_marker("ZCNET-MIGRATE-SENDING", BOOT);
    progress.wait_for(
        amounts.before,
        STREAM,
        "guest->host stream before the migration",
    );
    let query = p.migrate();
    let at = progress.bytes.load(Ordering::Relaxed);
    progress.wait_for(
        max(amounts.total, at + amounts.after),
        STREAM,
        "guest->host stream after the migration",
    );
    // The guest, now on B, stops sending at this line.
    p.b.send_line("stop");
    let host = receiver.join().expect("the receiver");
    let guest = p.guest_digest();
    let (after_tx, after_rx) = p.after();
    (
        Moved {
            query,
            host,
            guest,
            after_tx,
            after_rx,
        },
        p,
    )
}

fn assert_stream_intact(m: &Moved, what: &str, amounts: Amounts) {
    assert!(
        m.host.bytes >= amounts.total,
        "{what}: only {} bytes",
        m.host.bytes
    );
    assert_eq!(
        m.guest, m.host,
        "{what}: the guest's count and SHA-256 differ from the host's: bytes were lost, \
         duplicated or corrupted across the migration"
    );
}

/// Both zcnets of a bridge lab, with metrics on their own ports.
fn zcnets(ns: &NetNs, a_args: &[&str], b_args: &[&str]) -> (Daemon, Daemon) {
    let bin = ZcnetBin::from_env();
    (
        Daemon::start_with_metrics_port(&bin, ns, a_args, 9500),
        Daemon::start_with_metrics_port(&bin, ns, b_args, 9501),
    )
}

fn vhost_user(socket: &std::path::Path) -> Nic<'_> {
    Nic::VhostUser {
        socket,
        queues: 1,
        reconnect: false,
        host_mtu: None,
    }
}

/// zcnet A, its guest gone, serves the next frontend: a fake guest moves
/// a frame each way through tap A.
fn assert_serves_a_new_frontend(daemon: &Daemon, ns: &NetNs) {
    daemon.wait_log("frontend disconnected; waiting for the next connection");
    let tap = PacketSock::open(ns, TAP_A, true);
    let mut g = FakeGuest::connect(&daemon.socket, &GuestOpts::default());
    let src = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];
    let out = frames::test_frame(400, 0x6d16, HOST_MAC, src);
    g.queue_tx(0, &frames::plain_hdr(), &out, 1);
    g.tx(0).kick();
    g.wait_tx_used(0, 1);
    let seen = tap
        .recv_matching(Duration::from_secs(20), |f| {
            frames::tag_of(&f[PACKET_HDR_LEN..]) == Some(0x6d16)
        })
        .expect("the new frontend's frame never reached tap A");
    assert_eq!(&seen[PACKET_HDR_LEN..], &out[..]);
    let posted = g.post_rx(0, 4, 2048);
    let back = frames::test_frame(300, 0x6d17, src, HOST_MAC);
    let mut wire = vec![0u8; PACKET_HDR_LEN];
    wire.extend_from_slice(&back);
    tap.send(&wire);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let used = g.wait_rx_used(0, 1);
        let hit = used.iter().any(|u| {
            let addr = posted.iter().find(|(h, _)| *h == u.id).unwrap().1;
            g.read(addr, u.len as usize).get(HDR_LEN..) == Some(&back[..])
        });
        if hit {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the frame for the new frontend never arrived"
        );
    }
}

fn frames_both_ways(d: &Daemon, ns: &NetNs) -> (u64, u64) {
    let m = d.scrape_own(ns);
    (
        Daemon::metric(&m, "zcnet_tx_frames_total", 0),
        Daemon::metric(&m, "zcnet_rx_frames_total", 0),
    )
}

/// One host-to-guest migration through zcnet, with everything checked.
fn zcnet_host_to_guest() -> Moved {
    let lab = BridgeLab::new(true);
    let (za, zb) = zcnets(&lab.ns, &["--tap", TAP_A], &["--tap", TAP_B]);
    let (moved, pair) = host_to_guest(
        &lab.ns,
        vhost_user(&za.socket),
        vhost_user(&zb.socket),
        free_port(),
    );
    assert_stream_intact(&moved, "zcnet, host->guest", FULL);
    let (tx, rx) = frames_both_ways(&zb, &lab.ns);
    assert!(
        tx > 100 && rx > 100,
        "zcnet B carried {tx} TX and {rx} RX frames: the guest does not run through it"
    );
    let log_b = zb.log_text();
    assert!(
        log_b.contains("SEND_RARP: broadcast a RARP announcement for 52:54:00:12:34:56"),
        "QEMU B never asked zcnet B to announce the guest:\n{log_b}"
    );
    assert_eq!(
        lab.port_of(VmSpec::MAC).as_deref(),
        Some(TAP_B),
        "the bridge does not send the guest's frames to tap B"
    );
    let log_a = za.log_text();
    for q in 0..2 {
        let stopped = format!("queue {q} stopped by frontend (GET_VRING_BASE)");
        assert!(log_a.contains(&stopped), "zcnet A never logged {stopped:?}");
    }
    drop(pair); // QEMU A (paused since the switch-over) goes.
    assert_serves_a_new_frontend(&za, &lab.ns);
    moved
}

/// The same migration with QEMU's own tap netdev (QEMU runs in the lab's
/// namespace, so its migration port is there too).
fn qemu_tap_host_to_guest() -> Moved {
    let lab = BridgeLab::new(false);
    let port = lab.ns.enter(free_port);
    let (moved, _pair) = host_to_guest(
        &lab.ns,
        Nic::QemuTap {
            ns: &lab.ns,
            tap: TAP_A,
        },
        Nic::QemuTap {
            ns: &lab.ns,
            tap: TAP_B,
        },
        port,
    );
    assert_stream_intact(&moved, "QEMU tap, host->guest", FULL);
    moved
}

/// The median of `v`, and its range.
fn spread(v: Vec<u64>) -> String {
    let (lo, hi) = (v.iter().min().copied(), v.iter().max().copied());
    format!(
        "median {:.0} ms ({}..{} ms)",
        median(v),
        lo.unwrap_or(0),
        hi.unwrap_or(0)
    )
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    }
}

/// `ZCNET_MIGRATION_RUNS` (default 1) rounds of a zcnet migration and a
/// QEMU tap one, interleaved: downtime is noisy on a busy 2-core machine,
/// so README's figures come from several rounds.
#[test]
fn live_migration_host_to_guest_stream_and_qemu_tap_comparison() {
    let _one = one_guest_at_a_time();
    if skip_requested("live_migration_host_to_guest_stream_and_qemu_tap_comparison") {
        return;
    }
    let runs: usize = std::env::var("ZCNET_MIGRATION_RUNS")
        .ok()
        .map(|r| r.parse().expect("ZCNET_MIGRATION_RUNS: a number"))
        .unwrap_or(1)
        .max(1);
    let started = std::time::Instant::now();
    let (mut zcnet, mut tap) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let z = zcnet_host_to_guest();
        eprintln!(
            "GUEST-RESULT live migration {run}/{runs}, zcnet:    {}",
            z.summary()
        );
        let t = qemu_tap_host_to_guest();
        eprintln!(
            "GUEST-RESULT live migration {run}/{runs}, QEMU tap: {}",
            t.summary()
        );
        zcnet.push(z);
        tap.push(t);
    }
    let ms = |v: &[Moved], key: &str| v.iter().map(|m| m.ms(key)).collect::<Vec<_>>();
    eprintln!(
        "GUEST-RESULT live migration, host->guest TCP stream of 100 MB, TCG 1 vCPU, 512 MiB, \
         {runs} round(s):\n  downtime:   zcnet {}, QEMU tap {}; zcnet / QEMU tap {:.2}\n  \
         total time: zcnet {}, QEMU tap {}; zcnet / QEMU tap {:.2}\n  (test {:.0} s)",
        spread(ms(&zcnet, "downtime")),
        spread(ms(&tap, "downtime")),
        median(ms(&zcnet, "downtime")) / median(ms(&tap, "downtime")).max(1.0),
        spread(ms(&zcnet, "total-time")),
        spread(ms(&tap, "total-time")),
        median(ms(&zcnet, "total-time")) / median(ms(&tap, "total-time")).max(1.0),
        started.elapsed().as_secs_f64(),
    );
}

#[test]
fn live_migration_guest_to_host_stream() {
    let _one = one_guest_at_a_time();
    if skip_requested("live_migration_guest_to_host_stream") {
        return;
    }
    let started = std::time::Instant::now();
    let lab = BridgeLab::new(true);
    let (za, zb) = zcnets(&lab.ns, &["--tap", TAP_A], &["--tap", TAP_B]);
    let (moved, _pair) = guest_to_host(
        &lab.ns,
        vhost_user(&za.socket),
        vhost_user(&zb.socket),
        free_port(),
        "",
        FULL,
    );
    assert_stream_intact(&moved, "zcnet, guest->host", FULL);
    let (tx, rx) = frames_both_ways(&zb, &lab.ns);
    assert!(
        tx > 100 && rx > 100,
        "zcnet B carried {tx} TX and {rx} RX frames"
    );
    eprintln!(
        "GUEST-RESULT live migration, guest->host TCP stream, TCG 1 vCPU, 512 MiB: zcnet {} \
         (test {:.0} s)",
        moved.summary(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn live_migration_with_lent_tx_chains_over_udp() {
    let _one = one_guest_at_a_time();
    if skip_requested("live_migration_with_lent_tx_chains_over_udp") {
        return;
    }
    let started = std::time::Instant::now();
    let lab = UdpRelayLab::new();
    // Datagrams wait up to 400 ms in a 10 Mbit/s token bucket, slower than
    // the guest sends: TCP keeps the queue full, a lent frame's pages stay
    // with the kernel while it waits, and the guest, sending up to the
    // switch-over, has chains lent when GET_VRING_BASE comes. Every frame
    // from 1 KiB on is lent. The stream is shorter than the tap tests' to
    // keep the test quick at that rate.
    lab.throttle("10mbit", "400ms");
    let amounts = Amounts {
        before: 2 << 20,
        after: 2 << 20,
        total: 6 << 20,
    };
    let (udp_a, udp_b) = (UdpRelayLab::udp_arg(7000), UdpRelayLab::udp_arg(7002));
    let lend = ["--zerocopy", "on", "--zerocopy-min-bytes", "1024"];
    let a_args = [&["--udp", udp_a.as_str()][..], &lend].concat();
    let b_args = [&["--udp", udp_b.as_str()][..], &lend].concat();
    let (za, zb) = zcnets(&lab.zcnet_ns, &a_args, &b_args);
    let append = format!("zc.mtu={WIRE_MTU}");
    let (moved, _pair) = guest_to_host(
        &lab.wire_ns,
        vhost_user(&za.socket),
        vhost_user(&zb.socket),
        free_port(),
        &append,
        amounts,
    );
    assert_stream_intact(&moved, "zcnet --udp --zerocopy on, guest->host", amounts);

    let log_a = za.log_text();
    let drained = log_a
        .lines()
        .find_map(|l| {
            let rest = l
                .split("queue 1 stopped by frontend (GET_VRING_BASE); ")
                .nth(1)?;
            rest.strip_suffix(" lent TX chains drained")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("zcnet A never drained its TX queue at the stop:\n{log_a}"));
    assert!(
        drained > 0,
        "no TX chain was lent when GET_VRING_BASE came, so this run did not show the drain; \
         zcnet A's metrics:\n{}",
        za.scrape_own(&lab.zcnet_ns)
    );
    assert!(
        !log_a.contains("still lent"),
        "zcnet A abandoned lent chains at the stop:\n{log_a}"
    );
    let m = za.scrape_own(&lab.zcnet_ns);
    assert_eq!(
        Daemon::metric(&m, "zcnet_tx_lent_chains", 0),
        0,
        "nothing lent after the stop"
    );
    let lent_a = Daemon::metric(&m, "zcnet_tx_zerocopy_sends_total", 0);
    let m = zb.scrape_own(&lab.zcnet_ns);
    let lent_b = Daemon::metric(&m, "zcnet_tx_zerocopy_sends_total", 0);
    assert!(
        lent_b > 0,
        "zcnet B lent no frame: the stream did not go on through it"
    );
    let heard = lab.heard.lock().unwrap().clone();
    let ports: Vec<u16> = heard.iter().map(SocketAddr::port).collect();
    assert_eq!(ports, [7000, 7002], "the wire heard A, then B");
    eprintln!(
        "GUEST-RESULT live migration, guest->host TCP stream of {}-byte frames over zcnet --udp \
         --zerocopy on (10 Mbit/s token bucket), TCG 1 vCPU, 512 MiB: zcnet A lent {lent_a} \
         frames; {drained} chains still lent at GET_VRING_BASE were drained before its reply; \
         zcnet B lent {lent_b} frames after the move; {} (test {:.0} s)",
        WIRE_MTU + 14,
        moved.summary(),
        started.elapsed().as_secs_f64()
    );
}
