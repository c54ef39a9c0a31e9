//! Real guests (QEMU, TCG) on zcnet's VXLAN attachment: one against the
//! kernel's own `vxlan` device in another namespace, and two guests on two
//! zcnets (two namespaces as two hosts) talking over VXLAN. Each pings and
//! runs iperf3 both ways, with TSO on in the guests.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use guest_tests::results::{guest_features, iperf};
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::netns::NetNs;
use zcnet_harness::vm::{one_guest_at_a_time, skip_requested, Nic, Vm, VmSpec};
use zcnet_harness::vxlan_lab::{self, Path, VxlanLab};

const BOOT_AND_RUN: Duration = Duration::from_secs(300);
/// A floor of data moved, not a speed: timing never decides a test.
const FLOOR_BYTES: u64 = 10 << 20;

const CSUM: usize = 0;
const GUEST_CSUM: usize = 1;
const MTU: usize = 3;
const GUEST_TSO4: usize = 7;
const HOST_TSO4: usize = 11;
const HOST_TSO6: usize = 12;

/// An iperf3 server in `ns` on `ip`:5201, killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &NetNs, ip: &str) -> Server {
        let child = ns
            .command("iperf3")
            .args(["-s", "-B", ip, "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start iperf3 -s (the image builder installs iperf3)");
        // Killed and reaped on drop, also if it never listens.
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = ns
                .command("ss")
                .args(["-Hltn", "sport = :5201"])
                .output()
                .expect("ss");
            if !out.stdout.is_empty() {
                return server;
            }
            assert!(Instant::now() < deadline, "iperf3 -s never listened");
            std::thread::sleep(Duration::from_millis(20)); // polling a condition, with a deadline
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_guest_on_vxlan_talks_to_an_address_behind_the_kernels_vxlan_device() {
    let _one = one_guest_at_a_time();
    if skip_requested("a_guest_on_vxlan_talks_to_an_address_behind_the_kernels_vxlan_device") {
        return;
    }
    let lab = VxlanLab::new(&ZcnetBin::from_env(), Path::KernelPeers, &[]);
    lab.peers[0].ip(&["addr", "add", "10.77.0.1/24", "dev", "vx0"]);
    let _server = Server::start(&lab.peers[0], "10.77.0.1");
    let tcp_errors = lab.snmp(0, "Tcp", "InCsumErrors");
    let udp_errors = lab.snmp(0, "Udp", "InCsumErrors");

    let mut vm = Vm::boot(&VmSpec {
        name: "zcnet VXLAN",
        cpus: 1,
        mode: "iperf",
        iperf_seconds: 5,
        nic: Nic::VhostUser {
            socket: &lab.daemon.socket,
            queues: 1,
            reconnect: false,
            // What zcnet offers: the underlay's 9000 less VXLAN's 50.
            host_mtu: Some(8950),
        },
        ip: "10.77.0.2/24",
        server: "10.77.0.1",
        mac: VmSpec::MAC,
    });
    let console = vm.wait_done(BOOT_AND_RUN);
    assert!(
        console.contains("ZCNET-PING-OK"),
        "the guest could not ping"
    );
    let f = guest_features(&console);
    for (bit, name, want) in [
        (CSUM, "CSUM", true),
        (HOST_TSO4, "HOST_TSO4", true),
        (HOST_TSO6, "HOST_TSO6", true),
        (MTU, "MTU", true),
        (GUEST_CSUM, "GUEST_CSUM", false),
        (GUEST_TSO4, "GUEST_TSO4", false),
    ] {
        assert_eq!(
            f.get(bit).copied().unwrap_or(false),
            want,
            "the guest driver {} {name}",
            if want { "lacks" } else { "has" }
        );
    }
    let tx = iperf(&console, "tx");
    let rx = iperf(&console, "rx");
    for (dir, r) in [("guest->peer", tx), ("peer->guest", rx)] {
        assert!(
            r.bytes >= FLOOR_BYTES,
            "{dir}: only {} bytes arrived",
            r.bytes
        );
    }
    assert_eq!(
        lab.snmp(0, "Tcp", "InCsumErrors"),
        tcp_errors,
        "the kernel peer found bad TCP checksums in the guest's segments"
    );
    assert_eq!(lab.snmp(0, "Udp", "InCsumErrors"), udp_errors);

    let m = lab.scrape();
    let to = |vtep| vxlan_lab::sum(&m, "zcnet_vxlan_tx_frames_total", &[("vtep", vtep)]);
    let (peer0, peer1) = (to("10.9.0.2:4789"), to("10.9.1.2:4789"));
    assert!(
        peer1 * 100 < peer0,
        "after learning, the guest's traffic should go to the peer's VTEP alone: {peer0} vs {peer1}"
    );
    assert_eq!(Daemon::metric(&m, "zcnet_malformed_chains_total", 0), 0);
    eprintln!(
        "GUEST-RESULT vxlan, a guest on zcnet --vxlan-vni to the kernel's vxlan over a veth \
         (underlay MTU 9000), TCG, 1 vCPU:\n  guest->peer {:.2} Gbit/s ({} retransmits), \
         peer->guest {:.2} Gbit/s; {} inner frames to the peer's VTEP, {} lent sends, \
         {} copied by fallback",
        tx.gbit(),
        tx.retransmits,
        rx.gbit(),
        peer0,
        Daemon::metric(&m, "zcnet_tx_zerocopy_sends_total", 0),
        Daemon::metric(&m, "zcnet_tx_copy_fallbacks_total", 0),
    );
}

#[test]
fn two_guests_on_two_zcnets_talk_over_vxlan() {
    let _one = one_guest_at_a_time();
    if skip_requested("two_guests_on_two_zcnets_talk_over_vxlan") {
        return;
    }
    // Two namespaces as two hosts, joined by a veth with a 1500-byte MTU:
    // the guests get 1450 and send TSO frames of MSS-sized segments.
    let (a_ns, b_ns) = NetNs::veth_pair();
    a_ns.ip(&["link", "set", "va", "mtu", "1500"]);
    b_ns.ip(&["link", "set", "vb", "mtu", "1500"]);
    let bin = ZcnetBin::from_env();
    let args = |local: &'static str, remote: &'static str| {
        [
            "--vxlan-vni",
            "4242",
            "--vxlan-local",
            local,
            "--vxlan-remote",
            remote,
        ]
    };
    let a = Daemon::start_args(&bin, &a_ns, &args("10.9.0.1", "10.9.0.2"));
    let b = Daemon::start_args(&bin, &b_ns, &args("10.9.0.2", "10.9.0.1"));

    let mut server = Vm::boot(&VmSpec {
        name: "B: zcnet VXLAN",
        cpus: 1,
        mode: "server",
        iperf_seconds: 5,
        nic: Nic::VhostUser {
            socket: &b.socket,
            queues: 1,
            reconnect: false,
            host_mtu: Some(1450),
        },
        ip: "10.77.0.3/24",
        server: "10.77.0.2",
        mac: "52:54:00:12:34:57",
    });
    server.wait_marker("ZCNET-SERVER-READY", BOOT_AND_RUN);
    let mut client = Vm::boot(&VmSpec {
        name: "A: zcnet VXLAN",
        cpus: 1,
        mode: "iperf",
        iperf_seconds: 5,
        nic: Nic::VhostUser {
            socket: &a.socket,
            queues: 1,
            reconnect: false,
            host_mtu: Some(1450),
        },
        ip: "10.77.0.2/24",
        server: "10.77.0.3",
        mac: VmSpec::MAC,
    });
    let console = client.wait_done(BOOT_AND_RUN);
    assert!(console.contains("ZCNET-PING-OK"), "A could not ping B");
    let a_to_b = iperf(&console, "tx");
    let b_to_a = iperf(&console, "rx");
    for (dir, r) in [("A->B", a_to_b), ("B->A", b_to_a)] {
        assert!(
            r.bytes >= FLOOR_BYTES,
            "{dir}: only {} bytes arrived",
            r.bytes
        );
    }
    server.send_line("stop");
    server.wait_done(BOOT_AND_RUN);

    let (ma, mb) = (Daemon::scrape(&a_ns), Daemon::scrape(&b_ns));
    for (who, m) in [("A", &ma), ("B", &mb)] {
        let dropped = vxlan_lab::sum(m, "zcnet_vxlan_rx_dropped_total", &[]);
        assert_eq!(
            dropped, 0,
            "zcnet {who} dropped datagrams from its peer:\n{m}"
        );
    }
    eprintln!(
        "GUEST-RESULT vxlan, two guests on two zcnets over VXLAN (veth, underlay MTU 1500), \
         TCG, 1 vCPU each:\n  A->B {:.2} Gbit/s ({} retransmits), B->A {:.2} Gbit/s; \
         A sent {} inner frames, B {}",
        a_to_b.gbit(),
        a_to_b.retransmits,
        b_to_a.gbit(),
        vxlan_lab::sum(&ma, "zcnet_vxlan_tx_frames_total", &[]),
        vxlan_lab::sum(&mb, "zcnet_vxlan_tx_frames_total", &[]),
    );
}
