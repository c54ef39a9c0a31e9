//! A real Linux guest under QEMU (TCG) with `-netdev vhost-user` on the
//! real zcnet binary, running iperf3 against a server in a network
//! namespace. See `harness/` (zcnet-harness) for the harness and `image/`
//! for the guest.

use std::time::Duration;

use guest_tests::results::{guest_features, iperf, marker_value, Iperf};
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::lab::{Lab, TapKind, TAP};
use zcnet_harness::vhost::vhost_user::Frontend;
use zcnet_harness::vhost::VhostBackend;
use zcnet_harness::vm::{one_guest_at_a_time, skip_requested, Nic, Vm, VmSpec};

/// A guest run that moved less than this did not really carry traffic.
/// A floor of data moved, not a speed: timing never decides a test.
const FLOOR_BYTES: u64 = 10 << 20;
const BOOT_AND_RUN: Duration = Duration::from_secs(300);

const CSUM: usize = 0;
const GUEST_CSUM: usize = 1;
const GUEST_TSO4: usize = 7;
const HOST_TSO4: usize = 11;
const HOST_TSO6: usize = 12;
const MRG_RXBUF: usize = 15;
const EVENT_IDX: usize = 29;
const VERSION_1: usize = 32;

fn zcnet_guest(name: &str, daemon: &Daemon, cpus: usize, queues: usize, mode: &str) -> Vm {
    Vm::boot(&VmSpec {
        name,
        cpus,
        mode,
        iperf_seconds: 5,
        nic: Nic::VhostUser {
            socket: &daemon.socket,
            queues,
            reconnect: mode == "reconnect",
            host_mtu: None,
        },
        ip: VmSpec::IP,
        server: VmSpec::SERVER,
        mac: VmSpec::MAC,
    })
}

fn assert_moved(what: &str, r: &Iperf) {
    assert!(
        r.bytes >= FLOOR_BYTES,
        "{what}: only {} bytes arrived (floor {FLOOR_BYTES})",
        r.bytes
    );
}

#[test]
fn single_queue_iperf3_both_ways_with_offloads_and_qemu_tap_comparison() {
    let _one = one_guest_at_a_time();
    if skip_requested("single_queue_iperf3_both_ways") {
        return;
    }
    let lab = Lab::new(TapKind::MultiQueue, &[5201]);
    let daemon = Daemon::start(&ZcnetBin::from_env(), &lab.ns, TAP, &[]);
    let mut vm = zcnet_guest("zcnet 1 queue", &daemon, 1, 1, "iperf");
    let console = vm.wait_done(BOOT_AND_RUN);

    let f = guest_features(&console);
    for (bit, name) in [
        (CSUM, "CSUM"),
        (GUEST_CSUM, "GUEST_CSUM"),
        (HOST_TSO4, "HOST_TSO4"),
        (HOST_TSO6, "HOST_TSO6"),
        (GUEST_TSO4, "GUEST_TSO4"),
        (MRG_RXBUF, "MRG_RXBUF"),
        (EVENT_IDX, "EVENT_IDX"),
        (VERSION_1, "VERSION_1"),
    ] {
        assert!(
            f.get(bit).copied().unwrap_or(false),
            "the guest driver did not get {name}"
        );
    }
    let tx = iperf(&console, "tx");
    let rx = iperf(&console, "rx");
    assert_moved("guest->host", &tx);
    assert_moved("host->guest", &rx);

    // Every payload byte the receiver counted crossed zcnet's queue 0.
    let m = Daemon::scrape(&lab.ns);
    let tx_bytes = Daemon::metric(&m, "zcnet_tx_bytes_total", 0);
    let rx_bytes = Daemon::metric(&m, "zcnet_rx_bytes_total", 0);
    assert!(
        tx_bytes >= tx.bytes,
        "zcnet counted {tx_bytes} TX bytes, iperf3 {}",
        tx.bytes
    );
    assert!(
        rx_bytes >= rx.bytes,
        "zcnet counted {rx_bytes} RX bytes, iperf3 {}",
        rx.bytes
    );
    assert_eq!(Daemon::metric(&m, "zcnet_malformed_chains_total", 0), 0);
    drop(vm);
    drop(daemon);
    drop(lab);

    // The same guest on QEMU's own tap backend, for comparison only.
    let lab = Lab::new(TapKind::SingleQueue, &[5201]);
    let mut vm = Vm::boot(&VmSpec {
        name: "QEMU tap",
        cpus: 1,
        mode: "iperf",
        iperf_seconds: 5,
        nic: Nic::QemuTap {
            ns: &lab.ns,
            tap: TAP,
        },
        ip: VmSpec::IP,
        server: VmSpec::SERVER,
        mac: VmSpec::MAC,
    });
    let console = vm.wait_done(BOOT_AND_RUN);
    let qtx = iperf(&console, "tx");
    let qrx = iperf(&console, "rx");
    eprintln!(
        "GUEST-RESULT 1 queue, iperf3 5 s, TCG 1 vCPU:\n  \
         guest->host: zcnet {:.2} Gbit/s ({} retransmits), QEMU tap {:.2} Gbit/s: ratio {:.2}\n  \
         host->guest: zcnet {:.2} Gbit/s, QEMU tap {:.2} Gbit/s: ratio {:.2}",
        tx.gbit(),
        tx.retransmits,
        qtx.gbit(),
        tx.bits_per_second / qtx.bits_per_second,
        rx.gbit(),
        qrx.gbit(),
        rx.bits_per_second / qrx.bits_per_second,
    );
}

#[test]
fn multiqueue_two_pairs_both_carry_traffic() {
    let _one = one_guest_at_a_time();
    if skip_requested("multiqueue_two_pairs_both_carry_traffic") {
        return;
    }
    let lab = Lab::new(TapKind::MultiQueue, &[5201, 5202]);
    let daemon = Daemon::start(&ZcnetBin::from_env(), &lab.ns, TAP, &["--queue-pairs", "2"]);
    let mut vm = zcnet_guest("zcnet 2 queues", &daemon, 2, 2, "mq");
    let console = vm.wait_done(BOOT_AND_RUN);

    assert_eq!(
        marker_value(&console, "ZCNET-QUEUES").as_deref(),
        Some("2"),
        "the guest driver did not enable two queue pairs"
    );
    let a = iperf(&console, "mq0");
    let b = iperf(&console, "mq1");
    assert_moved("client on vCPU 0", &a);
    assert_moved("client on vCPU 1", &b);

    let m = Daemon::scrape(&lab.ns);
    for q in 0..2 {
        let tx = Daemon::metric(&m, "zcnet_tx_frames_total", q);
        let rx = Daemon::metric(&m, "zcnet_rx_frames_total", q);
        eprintln!("GUEST-RESULT 2 queues: queue pair {q}: {tx} TX frames, {rx} RX frames");
        assert!(
            tx >= 1000,
            "queue pair {q} carried only {tx} TX frames: the guest's second queue is idle"
        );
    }
    eprintln!(
        "GUEST-RESULT 2 queues, 2 vCPUs, two iperf3 -P 2 clients: {:.2} + {:.2} Gbit/s guest->host",
        a.gbit(),
        b.gbit()
    );
}

#[test]
fn zcnet_killed_and_restarted_while_the_guest_runs() {
    let _one = one_guest_at_a_time();
    if skip_requested("zcnet_killed_and_restarted_while_the_guest_runs") {
        return;
    }
    let lab = Lab::new(TapKind::MultiQueue, &[5201]);
    let mut daemon = Daemon::start(&ZcnetBin::from_env(), &lab.ns, TAP, &[]);
    let mut vm = zcnet_guest("zcnet reconnect", &daemon, 1, 1, "reconnect");
    vm.wait_marker("ZCNET-PHASE1-OK", BOOT_AND_RUN);

    daemon.kill_and_restart(&lab.ns, TAP, &[]);
    // QEMU (reconnect-ms) comes back by itself and sets the device up again.
    daemon.wait_log("frontend connected");
    vm.send_line("go");
    let console = vm.wait_done(BOOT_AND_RUN);
    assert!(
        console.contains("ZCNET-PING2-OK"),
        "the guest could not ping the host after zcnet restarted"
    );
    let after = iperf(&console, "after");
    assert_moved("iperf3 after the restart", &after);
    eprintln!(
        "GUEST-RESULT after SIGKILL and restart: ping ok, iperf3 2 s guest->host {:.2} Gbit/s",
        after.gbit()
    );
}

#[test]
fn guest_power_off_stops_the_rings_and_zcnet_waits_for_the_next_vm() {
    let _one = one_guest_at_a_time();
    if skip_requested("guest_power_off_stops_the_rings") {
        return;
    }
    let lab = Lab::new(TapKind::MultiQueue, &[]);
    let daemon = Daemon::start(&ZcnetBin::from_env(), &lab.ns, TAP, &[]);
    let mut vm = zcnet_guest("zcnet shutdown", &daemon, 1, 1, "shutdown");
    let console = vm.wait_done(BOOT_AND_RUN);
    assert!(
        console.contains("ZCNET-PING-OK"),
        "the guest never reached the host"
    );

    daemon.wait_log("frontend disconnected; waiting for the next connection");
    let log = daemon.log_text();
    for q in 0..2 {
        let stopped = format!("queue {q} stopped by frontend (GET_VRING_BASE)");
        assert!(log.contains(&stopped), "zcnet never logged {stopped:?}");
    }
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    assert!(
        complaints.is_empty(),
        "a clean power-off made zcnet complain:\n{}",
        complaints.join("\n")
    );

    // The next VM's frontend is served.
    let next = Frontend::connect(&daemon.socket, 2).expect("connect as the next VM");
    let features = next.get_features().expect("GET_FEATURES from the next VM");
    assert_ne!(features & (1 << VERSION_1), 0);
}
