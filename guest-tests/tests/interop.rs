//! zcnet's UDP attachment against a real QEMU netdev: guest A runs on
//! zcnet (`--udp`), guest B on QEMU's own `-netdev dgram` pointed at zcnet.
//! They ping each other and run iperf3 both ways.

use std::time::Duration;

use guest_tests::results::iperf;
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::netns::NetNs;
use zcnet_harness::vm::{one_guest_at_a_time, skip_requested, Nic, Vm, VmSpec};

const BOOT_AND_RUN: Duration = Duration::from_secs(300);
const FLOOR_BYTES: u64 = 10 << 20;

#[test]
fn zcnet_udp_guest_and_qemu_dgram_guest_talk_both_ways() {
    let _one = one_guest_at_a_time();
    if skip_requested("zcnet_udp_guest_and_qemu_dgram_guest_talk_both_ways") {
        return;
    }
    // Loopback only: the "wire" is two UDP sockets on 127.0.0.1.
    let ns = NetNs::new();
    let daemon = Daemon::start_args(
        &ZcnetBin::from_env(),
        &ns,
        &["--udp", "127.0.0.1:7000,127.0.0.1:7001"],
    );
    let b = Nic::Dgram {
        ns: &ns,
        local: ("127.0.0.1", 7001),
        remote: ("127.0.0.1", 7000),
    };
    talk(&ns, &daemon, b, "zcnet --udp <-> QEMU -netdev dgram");
}

#[test]
fn zcnet_stream_guest_and_qemu_stream_guest_talk_both_ways() {
    let _one = one_guest_at_a_time();
    if skip_requested("zcnet_stream_guest_and_qemu_stream_guest_talk_both_ways") {
        return;
    }
    let ns = NetNs::new();
    let daemon = Daemon::start_args(
        &ZcnetBin::from_env(),
        &ns,
        &["--stream-listen", "127.0.0.1:7100"],
    );
    let b = Nic::Stream {
        ns: &ns,
        addr: ("127.0.0.1", 7100),
        server: false,
    };
    talk(
        &ns,
        &daemon,
        b,
        "zcnet --stream-listen <-> QEMU -netdev stream",
    );
}

#[test]
fn zcnet_stream_connect_guest_and_qemu_stream_server_guest_talk_both_ways() {
    let _one = one_guest_at_a_time();
    if skip_requested("zcnet_stream_connect_guest_and_qemu_stream_server_guest_talk_both_ways") {
        return;
    }
    // zcnet starts first and keeps retrying until QEMU listens.
    let ns = NetNs::new();
    let daemon = Daemon::start_args(
        &ZcnetBin::from_env(),
        &ns,
        &["--stream-connect", "127.0.0.1:7200"],
    );
    let b = Nic::Stream {
        ns: &ns,
        addr: ("127.0.0.1", 7200),
        server: true,
    };
    talk(
        &ns,
        &daemon,
        b,
        "zcnet --stream-connect <-> QEMU -netdev stream,server=on",
    );
}

/// Guest B (QEMU's own netdev `b`) serves iperf3; guest A, on zcnet,
/// pings it and runs iperf3 both ways.
fn talk(ns: &NetNs, daemon: &Daemon, b: Nic, what: &str) {
    let mut b = Vm::boot(&VmSpec {
        name: "B: QEMU netdev",
        cpus: 1,
        mode: "server",
        iperf_seconds: 5,
        nic: b,
        ip: "10.77.0.3/24",
        server: "10.77.0.2",
        mac: "52:54:00:12:34:57",
    });
    b.wait_marker("ZCNET-SERVER-READY", BOOT_AND_RUN);
    let mut a = Vm::boot(&VmSpec {
        name: "A: zcnet",
        cpus: 1,
        mode: "iperf",
        iperf_seconds: 5,
        nic: Nic::VhostUser {
            socket: &daemon.socket,
            queues: 1,
            reconnect: false,
            host_mtu: None,
        },
        ip: "10.77.0.2/24",
        server: "10.77.0.3",
        mac: VmSpec::MAC,
    });
    let console = a.wait_done(BOOT_AND_RUN);
    assert!(console.contains("ZCNET-PING-OK"), "A could not ping B");
    b.wait_marker("ZCNET-PING-OK", BOOT_AND_RUN);
    let a_to_b = iperf(&console, "tx");
    let b_to_a = iperf(&console, "rx");
    for (dir, r) in [("A->B", a_to_b), ("B->A", b_to_a)] {
        assert!(
            r.bytes >= FLOOR_BYTES,
            "{dir}: only {} bytes arrived",
            r.bytes
        );
    }
    b.send_line("stop");
    b.wait_done(BOOT_AND_RUN);

    let m = Daemon::scrape(ns);
    let tx = Daemon::metric(&m, "zcnet_tx_bytes_total", 0);
    let rx = Daemon::metric(&m, "zcnet_rx_bytes_total", 0);
    assert!(
        tx >= a_to_b.bytes,
        "zcnet counted {tx} TX bytes, iperf3 {}",
        a_to_b.bytes
    );
    assert!(
        rx >= b_to_a.bytes,
        "zcnet counted {rx} RX bytes, iperf3 {}",
        b_to_a.bytes
    );
    eprintln!(
        "GUEST-RESULT interop, {what} over loopback, TCG:\n  \
         A->B {:.2} Gbit/s, B->A {:.2} Gbit/s; zcnet lent {} frames ({} reported copied), \
         copied {} by fallback",
        a_to_b.gbit(),
        b_to_a.gbit(),
        Daemon::metric(&m, "zcnet_tx_zerocopy_sends_total", 0),
        Daemon::metric(&m, "zcnet_tx_zerocopy_copied_total", 0),
        Daemon::metric(&m, "zcnet_tx_copy_fallbacks_total", 0),
    );
}
