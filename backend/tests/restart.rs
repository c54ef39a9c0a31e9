//! Issue 12, case 5: zcnet is killed (SIGKILL) and restarted while chains
//! are in flight; the frontend reconnects and hands every ring over again
//! at the base it chose (QEMU: the guest's used index; cloud-hypervisor:
//! the avail index). Every chain comes back exactly once, no frame is sent
//! twice, and RX buffers posted before the crash are used after it, with
//! the in-flight record in the frontend's region (INFLIGHT_SHMFD, as
//! cloud-hypervisor offers) or in zcnet's own ledger (QEMU's net device
//! offers none). And the neighbours: clean stops and disconnects leave
//! nothing to recover, a record of other rings is discarded, one a ring
//! cannot take back is counted lost, bad GET/SET_INFLIGHT_FD are refused.

use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::frames::{self, PacketSock, GUEST_MAC, HOST_MAC, PACKET_HDR_LEN};
use zcnet_harness::guest::{FakeGuest, GuestOpts, RingBase, HDR_LEN};
use zcnet_harness::netns::NetNs;
use zcnet_harness::ring::Used;
use zcnet_harness::stream_lab::{accept, read_record, reset, Role, StreamLab};
use zcnet_harness::udp_lab::{Path, UdpLab};
use zcnet_harness::vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use zcnet_harness::vhost::vhost_user::VhostUserFrontend;
use zcnet_harness::vhost::VhostBackend;

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

/// The field report's ring size.
const RING: u16 = 16;
const WAIT: Duration = Duration::from_secs(20);
const TAP: &str = "zr0";

/// Where zcnet keeps the in-flight record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keeper {
    /// zcnet's ledger file (the frontend offers no INFLIGHT_SHMFD: QEMU).
    Ledger,
    /// The frontend's region (INFLIGHT_SHMFD: cloud-hypervisor).
    Frontend,
}

fn opts(keeper: Keeper) -> GuestOpts {
    let mut protocol = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
    if keeper == Keeper::Frontend {
        protocol |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
    }
    GuestOpts {
        queue_size: RING,
        protocol,
        ..GuestOpts::default()
    }
}

fn connect(socket: &std::path::Path, keeper: Keeper) -> FakeGuest {
    let g = FakeGuest::connect(socket, &opts(keeper));
    assert_eq!(
        g.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        keeper == Keeper::Frontend,
        "INFLIGHT_SHMFD negotiated as asked"
    );
    g
}

fn metric(m: &str, name: &str) -> u64 {
    Daemon::metric(m, name, 0)
}

fn ids(used: &[Used]) -> Vec<u16> {
    used.iter().map(|u| u.id).collect()
}

fn id_set(used: &[Used]) -> HashSet<u16> {
    used.iter().map(|u| u.id).collect()
}

fn frame(len: usize, tag: u32) -> Vec<u8> {
    frames::test_frame(len, tag, HOST_MAC, GUEST_MAC)
}

/// Queues one frame in one descriptor (so heads are 0, 1, 2, ... as in the
/// field report) without kicking.
fn queue(g: &mut FakeGuest, f: &[u8]) -> u16 {
    g.queue_tx(0, &[0u8; HDR_LEN], f, 1)
}

/// The guest sends h0..h5 with these sizes; returns the frames.
fn send_h0_to_h5(g: &mut FakeGuest, sizes: [usize; 6]) -> Vec<Vec<u8>> {
    let sent: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(tag, &len)| frame(len, tag as u32))
        .collect();
    let heads: Vec<u16> = sent.iter().map(|f| queue(g, f)).collect();
    assert_eq!(heads, vec![0, 1, 2, 3, 4, 5]);
    g.tx(0).kick();
    sent
}

/// The field report's state before the crash: h0, h2 and h3 complete
/// (used ring 0, 2, 3), h1, h4 and h5 lent and held.
fn wait_for_the_field_state(g: &mut FakeGuest, ns: &NetNs) {
    let used = g.wait_tx_used(0, 3);
    assert_eq!(
        ids(&used),
        vec![0, 2, 3],
        "h0, h2, h3 complete; h1, h4, h5 lent"
    );
    let m = Daemon::scrape(ns);
    assert_eq!(metric(&m, "zcnet_tx_lent_chains"), 3);
    assert_eq!(g.tx(0).used_idx(), 3);
    assert_eq!(g.tx(0).avail_idx(), 6);
}

/// After the reconnect: h1, h4 and h5 come back once each, and nothing
/// else; then h6 goes through. Returns h6.
fn lent_chains_come_back_once(g: &mut FakeGuest) -> Vec<u8> {
    let back = g.wait_tx_used(0, 3);
    assert_eq!(back.len(), 3, "a chain was returned twice: {back:?}");
    assert_eq!(id_set(&back), HashSet::from([1, 4, 5]), "{back:?}");
    assert!(
        back.iter().all(|u| u.len == 0),
        "TX chains go back with length 0"
    );
    let h6 = frame(300, 6);
    let head = queue(g, &h6);
    g.tx(0).kick();
    assert_eq!(ids(&g.wait_tx_used(0, 1)), vec![head]);
    assert!(g.tx(0).take_used().is_empty(), "no chain returned twice");
    h6
}

/// What the restarted zcnet counted: it sent only h6, and returned the
/// three lent chains from `keeper`'s record.
fn restarted_zcnet_counted(daemon: &Daemon, ns: &NetNs, keeper: Keeper) {
    let m = Daemon::scrape(ns);
    assert_eq!(
        metric(&m, "zcnet_tx_frames_total"),
        1,
        "the restarted zcnet sent a frame of h0..h5 again"
    );
    assert_eq!(metric(&m, "zcnet_tx_dropped_total"), 0);
    assert_eq!(metric(&m, "zcnet_restart_recovered_chains_total"), 3);
    assert_eq!(metric(&m, "zcnet_restart_lost_chains_total"), 0);
    let log = daemon.log_text();
    let source = match keeper {
        Keeper::Ledger => "resuming from the in-flight ledger",
        Keeper::Frontend => "resuming from the frontend's in-flight region",
    };
    assert!(log.contains(source), "{log}");
    assert!(
        log.contains(
            "3 TX chains were in flight (sent or lent before it): returned to the guest without \
             sending them again; next avail index 6"
        ),
        "{log}"
    );
}

/// With the frontend's region, the ledger cannot be where the record came
/// from: it is removed before the crash (zcnet starts a new one).
fn only_the_frontend_keeps_it(daemon: &Daemon, keeper: Keeper) {
    if keeper == Keeper::Frontend {
        std::fs::remove_file(daemon.ledger()).expect("remove the ledger");
    }
}

/// Holds what leaves zcnet's veth: a token bucket with room for a 9000-byte
/// frame but then not for a 20000-byte one, refilled at 125 bytes/s, and a
/// queue long enough for everything. Copied frames complete at once while
/// they wait; lent ones stay lent.
fn hold(lab: &UdpLab) {
    lab.tc(&[
        "qdisc", "add", "dev", "va", "root", "tbf", "rate", "1kbit", "burst", "21000", "limit",
        "200000",
    ]);
}

/// Replaces the qdisc: what it held is freed, undelivered.
fn release(lab: &UdpLab) {
    lab.tc(&["qdisc", "replace", "dev", "va", "root", "pfifo"]);
}

fn next_tag(rx: &UdpSocket) -> Option<u32> {
    let mut buf = vec![0u8; 70_000];
    let n = rx.recv(&mut buf).expect("a datagram at the peer");
    frames::tag_of(&buf[..n])
}

/// The field case over `--udp`.
fn udp_field_case(keeper: Keeper, base: RingBase) {
    let mut lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "10000"],
    );
    let rx = lab.receiver();
    hold(&lab);
    let mut g = connect(&lab.daemon.socket, keeper);
    // h0 (9000 bytes) is copied and passes the qdisc; h1, h4, h5 are lent
    // and wait in it; h2 and h3 are copied and complete while they wait.
    send_h0_to_h5(&mut g, [9000, 20_000, 300, 300, 20_000, 20_000]);
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 3);
    wait_for_the_field_state(&mut g, &lab.ns);
    assert_eq!(next_tag(&rx), Some(0), "h0 reached the peer");

    only_the_frontend_keeps_it(&lab.daemon, keeper);
    lab.kill_and_restart();
    // From here on whatever zcnet sends reaches the peer at once: a frame
    // sent again would arrive before h6.
    release(&lab);
    g.reconnect(&lab.daemon.socket, base);
    lent_chains_come_back_once(&mut g);
    assert_eq!(
        next_tag(&rx),
        Some(6),
        "the peer got a frame of h0..h5 a second time"
    );
    restarted_zcnet_counted(&lab.daemon, &lab.ns, keeper);
}

#[test]
fn udp_qemu_base_with_the_ledger() {
    udp_field_case(Keeper::Ledger, RingBase::Used);
}

#[test]
fn udp_cloud_hypervisor_base_with_the_ledger() {
    udp_field_case(Keeper::Ledger, RingBase::Avail);
}

#[test]
fn udp_qemu_base_with_the_frontends_region() {
    udp_field_case(Keeper::Frontend, RingBase::Used);
}

#[test]
fn udp_cloud_hypervisor_base_with_the_frontends_region() {
    udp_field_case(Keeper::Frontend, RingBase::Avail);
}

/// The field case over `--stream-connect`: the peer's nftables drop keeps
/// TCP from releasing the lent pages.
fn stream_field_case(keeper: Keeper, base: RingBase) {
    let (mut lab, listener) = StreamLab::new(
        &zcnet(),
        Role::Connect,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "1000"],
    );
    let listener = listener.expect("zcnet connects to the test's listener");
    let mut g = connect(&lab.daemon.socket, keeper);
    let old_peer = accept(&listener);
    lab.drop_peer_ingress();
    send_h0_to_h5(&mut g, [300, 20_000, 300, 300, 20_000, 20_000]);
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 3);
    wait_for_the_field_state(&mut g, &lab.ns);

    only_the_frontend_keeps_it(&lab.daemon, keeper);
    lab.kill_and_restart();
    // The old connection died with zcnet.
    reset(old_peer);
    lab.accept_peer_ingress();
    let mut peer = accept(&listener);
    g.reconnect(&lab.daemon.socket, base);
    lab.daemon.wait_log("TCP stream: connected to");
    let h6 = lent_chains_come_back_once(&mut g);
    assert_eq!(
        read_record(&mut peer),
        h6,
        "the restarted zcnet sent a frame of h0..h5 before h6"
    );
    restarted_zcnet_counted(&lab.daemon, &lab.ns, keeper);
}

#[test]
fn stream_qemu_base_with_the_ledger() {
    stream_field_case(Keeper::Ledger, RingBase::Used);
}

#[test]
fn stream_cloud_hypervisor_base_with_the_ledger() {
    stream_field_case(Keeper::Ledger, RingBase::Avail);
}

#[test]
fn stream_qemu_base_with_the_frontends_region() {
    stream_field_case(Keeper::Frontend, RingBase::Used);
}

#[test]
fn stream_cloud_hypervisor_base_with_the_frontends_region() {
    stream_field_case(Keeper::Frontend, RingBase::Avail);
}

/// zcnet on a persistent tap, as an operator makes one, so the tap and the
/// frames queued in it outlive a killed zcnet.
struct TapLab {
    daemon: Daemon,
    ns: NetNs,
}

impl TapLab {
    fn new() -> TapLab {
        let ns = NetNs::new();
        ns.ip(&[
            "tuntap",
            "add",
            "dev",
            TAP,
            "mode",
            "tap",
            "multi_queue",
            "vnet_hdr",
        ]);
        ns.ip(&["link", "set", TAP, "up"]);
        let daemon = Daemon::start(&zcnet(), &ns, TAP, &[]);
        TapLab { daemon, ns }
    }

    fn kill(&mut self) {
        self.daemon.kill();
    }

    fn restart(&mut self) {
        self.daemon.restart_args(&self.ns, &["--tap", TAP]);
    }
}

/// What a crash in the middle of work leaves in the frontend's region:
/// head `head` of queue `queue` popped (in flight, `counter`-th), as
/// zcnet's pop stores it before it does anything with the chain. The
/// offsets are the spec's `QueueRegionSplit`; zcnet's queue regions are
/// each rounded up to 64 bytes (backend/src/inflight/record.rs).
fn crashed_holding(g: &FakeGuest, queue: u64, head: u16, counter: u64) {
    let region = g.inflight_region().expect("the frontend's region");
    let stride = (16 + 16 * u64::from(RING)).next_multiple_of(64);
    let at = queue * stride + 16 + 16 * u64::from(head);
    region.write_all_at(&[1], at).unwrap();
    region.write_all_at(&counter.to_le_bytes(), at + 8).unwrap();
}

/// The next guest frame out of the tap that carries a test tag.
fn next_tx_tag(host: &PacketSock) -> u32 {
    let f = host
        .recv_matching(WAIT, |f| frames::tag_of(&f[PACKET_HDR_LEN..]).is_some())
        .expect("a frame out of the tap");
    frames::tag_of(&f[PACKET_HDR_LEN..]).unwrap()
}

fn tx_roundtrip(g: &mut FakeGuest, host: &PacketSock, tag: u32) {
    let head = queue(g, &frame(300, tag));
    g.tx(0).kick();
    assert_eq!(ids(&g.wait_tx_used(0, 1)), vec![head]);
    assert_eq!(next_tx_tag(host), tag);
}

/// Tap: everything completes at once, but a chain popped and written to
/// the tap just before the kill, before its used-ring update, must come
/// back without being written again, and a chain published but never
/// popped must go out.
fn tap_chain_written_right_before_the_kill(base: RingBase) {
    let mut lab = TapLab::new();
    let host = PacketSock::open(&lab.ns, TAP, true);
    let mut g = connect(&lab.daemon.socket, Keeper::Frontend);
    for tag in 0..2 {
        tx_roundtrip(&mut g, &host, tag);
    }
    let t2 = queue(&mut g, &frame(300, 2));
    let t3 = queue(&mut g, &frame(300, 3));
    lab.kill();
    // zcnet died right after writing t2 to the tap (the host side already
    // has it in this story; the test does not send it).
    crashed_holding(&g, 1, t2, 1000);
    lab.restart();
    g.reconnect(&lab.daemon.socket, base);
    let used = g.wait_tx_used(0, 2);
    assert_eq!(ids(&used), vec![t2, t3], "t2 returned, then t3 sent");
    assert_eq!(next_tx_tag(&host), 3, "t2 was written to the tap again");
    let m = Daemon::scrape(&lab.ns);
    assert_eq!(metric(&m, "zcnet_tx_frames_total"), 1);
    assert_eq!(metric(&m, "zcnet_restart_recovered_chains_total"), 1);
    tx_roundtrip(&mut g, &host, 4);
    assert!(g.tx(0).take_used().is_empty(), "no chain returned twice");
}

#[test]
fn tap_tx_chain_written_right_before_the_kill_qemu_base() {
    tap_chain_written_right_before_the_kill(RingBase::Used);
}

#[test]
fn tap_tx_chain_written_right_before_the_kill_cloud_hypervisor_base() {
    tap_chain_written_right_before_the_kill(RingBase::Avail);
}

/// RX buffers posted before the crash: b0..b3 posted with a kick (zcnet
/// pops them to read, uses b0 and b1, and gives b2 and b3 back), b4 and
/// b5 published without a kick (never popped). With the frontend's
/// region, zcnet also died in the middle of a read with b2 and b3 popped
/// (in flight). After the restart, with either base, the next frames land
/// in b2..b5, in order, once each.
fn rx_buffers_posted_before_the_crash(keeper: Keeper, base: RingBase) {
    let mut lab = TapLab::new();
    let raw = PacketSock::open(&lab.ns, TAP, false);
    let mut g = connect(&lab.daemon.socket, keeper);
    let mut posted = g.post_rx(0, 4, 2048);
    let sent: Vec<Vec<u8>> = (0..6)
        .map(|t| frames::test_frame(200, t, GUEST_MAC, HOST_MAC))
        .collect();
    raw.send(&sent[0]);
    raw.send(&sent[1]);
    let first = g.wait_rx_used(0, 2);
    assert_eq!(ids(&first), vec![posted[0].0, posted[1].0]);
    posted.extend(g.publish_rx(0, 2, 2048));
    let bufs: HashMap<u16, u64> = posted.iter().copied().collect();
    let later: Vec<u16> = posted[2..].iter().map(|&(h, _)| h).collect();
    let (b2, b3) = (later[0], later[1]);

    lab.kill();
    let recovered = if keeper == Keeper::Frontend {
        crashed_holding(&g, 0, b2, 500);
        crashed_holding(&g, 0, b3, 501);
        2
    } else {
        0
    };
    lab.restart();
    g.reconnect(&lab.daemon.socket, base);
    for f in &sent[2..] {
        raw.send(f);
    }
    let used = g.wait_rx_used(0, 4);
    assert_eq!(used.len(), 4, "{used:?}");
    assert_eq!(ids(&used), later, "b2..b5, in order");
    for (u, f) in used.iter().zip(&sent[2..]) {
        assert_eq!(u.len as usize, HDR_LEN + f.len());
        let got = g.read(bufs[&u.id] + HDR_LEN as u64, f.len());
        assert_eq!(
            frames::tag_of(&got),
            frames::tag_of(f),
            "frames out of order"
        );
        assert_eq!(&got, f);
    }
    let m = Daemon::scrape(&lab.ns);
    assert_eq!(metric(&m, "zcnet_rx_frames_total"), 4);
    assert_eq!(metric(&m, "zcnet_rx_dropped_total"), 0);
    assert_eq!(
        metric(&m, "zcnet_restart_recovered_chains_total"),
        recovered
    );
    assert!(g.rx(0).take_used().is_empty());
}

#[test]
fn rx_buffers_posted_before_the_crash_qemu_base_with_the_ledger() {
    rx_buffers_posted_before_the_crash(Keeper::Ledger, RingBase::Used);
}

#[test]
fn rx_buffers_posted_before_the_crash_cloud_hypervisor_base_with_the_ledger() {
    rx_buffers_posted_before_the_crash(Keeper::Ledger, RingBase::Avail);
}

#[test]
fn rx_buffers_in_flight_at_the_crash_qemu_base_with_the_frontends_region() {
    rx_buffers_posted_before_the_crash(Keeper::Frontend, RingBase::Used);
}

#[test]
fn rx_buffers_in_flight_at_the_crash_cloud_hypervisor_base_with_the_frontends_region() {
    rx_buffers_posted_before_the_crash(Keeper::Frontend, RingBase::Avail);
}

fn rx_roundtrip(g: &mut FakeGuest, raw: &PacketSock, tag: u32) {
    let bufs = g.post_rx(0, 1, 2048);
    let f = frames::test_frame(90, tag, GUEST_MAC, HOST_MAC);
    raw.send(&f);
    assert_eq!(ids(&g.wait_rx_used(0, 1)), vec![bufs[0].0]);
    assert_eq!(g.read(bufs[0].1 + HDR_LEN as u64, f.len()), f);
}

/// The restarted (or reconnected) zcnet recovered and lost nothing, and
/// did not say it resumed anything.
fn nothing_recovered(daemon: &Daemon, ns: &NetNs) {
    let m = Daemon::scrape(ns);
    assert_eq!(metric(&m, "zcnet_restart_recovered_chains_total"), 0);
    assert_eq!(metric(&m, "zcnet_restart_lost_chains_total"), 0);
    let log = daemon.log_text();
    assert!(!log.contains("resuming from"), "{log}");
}

/// QEMU stops a device with GET_VRING_BASE on every ring. The lent chains
/// still held when the drain time runs out are abandoned (never returned,
/// and never written after the reply). A later zcnet, after a kill and a
/// restart, must not take the record for a crash: the frontend knows
/// where the rings stopped, and nothing is returned or sent again.
#[test]
fn a_clean_stop_with_abandoned_chains_leaves_nothing_to_recover() {
    let mut lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &[
            "--zerocopy",
            "on",
            "--zerocopy-min-bytes",
            "10000",
            "--zerocopy-drain-ms",
            "100",
        ],
    );
    let rx = lab.receiver();
    hold(&lab);
    let mut g = connect(&lab.daemon.socket, Keeper::Ledger);
    send_h0_to_h5(&mut g, [9000, 20_000, 300, 300, 20_000, 20_000]);
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 3);
    wait_for_the_field_state(&mut g, &lab.ns);
    assert_eq!(next_tag(&rx), Some(0));
    assert_eq!(g.frontend.get_vring_base(0).expect("GET_VRING_BASE"), 0);
    assert_eq!(g.frontend.get_vring_base(1).expect("GET_VRING_BASE"), 6);
    lab.daemon.wait_log("with 3 TX chains still lent");

    lab.kill_and_restart();
    release(&lab);
    g.reconnect(&lab.daemon.socket, RingBase::Avail);
    let h6 = queue(&mut g, &frame(300, 6));
    g.tx(0).kick();
    assert_eq!(ids(&g.wait_tx_used(0, 1)), vec![h6], "h6 only");
    assert_eq!(next_tag(&rx), Some(6));
    nothing_recovered(&lab.daemon, &lab.ns);
}

/// A frontend that stops its rings and disconnects, then connects again:
/// nothing to recover, and the device works.
#[test]
fn a_clean_disconnect_and_reconnect_leaves_nothing_to_recover() {
    let lab = TapLab::new();
    let host = PacketSock::open(&lab.ns, TAP, true);
    let raw = PacketSock::open(&lab.ns, TAP, false);
    let mut g = connect(&lab.daemon.socket, Keeper::Ledger);
    tx_roundtrip(&mut g, &host, 1);
    rx_roundtrip(&mut g, &raw, 2);
    // Every chain is used, so the bases GET_VRING_BASE answers are the
    // avail indices the frontend starts the rings at again.
    for q in 0..2 {
        let base = g.frontend.get_vring_base(q).expect("GET_VRING_BASE");
        assert_eq!(base, u32::from(g.rings[q].avail_idx()));
    }
    g.reconnect(&lab.daemon.socket, RingBase::Avail);
    lab.daemon
        .wait_log("frontend disconnected; waiting for the next connection");
    tx_roundtrip(&mut g, &host, 3);
    rx_roundtrip(&mut g, &raw, 4);
    nothing_recovered(&lab.daemon, &lab.ns);
    let m = Daemon::scrape(&lab.ns);
    assert_eq!(
        Daemon::global_metric(&m, "zcnet_frontend_connections_total"),
        2
    );
}

/// A frontend that leaves without stopping its rings (zcnet stays up) and
/// comes back gets the chains that were lent when it left: the device that
/// held them is gone, and nothing else would return them.
#[test]
fn a_frontend_that_left_without_stopping_gets_its_lent_chains_back() {
    let lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "10000"],
    );
    let rx = lab.receiver();
    hold(&lab);
    let mut g = connect(&lab.daemon.socket, Keeper::Ledger);
    send_h0_to_h5(&mut g, [9000, 20_000, 300, 300, 20_000, 20_000]);
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 3);
    wait_for_the_field_state(&mut g, &lab.ns);
    assert_eq!(next_tag(&rx), Some(0));
    g.reconnect(&lab.daemon.socket, RingBase::Used);
    // The kernel still holds h1, h4 and h5 (and h2, h3) in the qdisc: no
    // notification returned them; the record did. Freed now, undelivered.
    release(&lab);
    lent_chains_come_back_once(&mut g);
    assert_eq!(next_tag(&rx), Some(6));
    let m = Daemon::scrape(&lab.ns);
    assert_eq!(metric(&m, "zcnet_tx_frames_total"), 7, "h0..h5 once, h6");
    assert_eq!(metric(&m, "zcnet_restart_recovered_chains_total"), 3);
}

/// After a crash the ledger is read by whoever connects. Another guest
/// (another memory file, rings at the same addresses), and then the same
/// guest with its rings laid out elsewhere (a driver reset while zcnet was
/// down), find a record of other rings: discarded with a log line, and
/// the device works from the frontend's base.
#[test]
fn a_ledger_of_other_rings_is_discarded_and_the_device_works() {
    let mut lab = TapLab::new();
    let host = PacketSock::open(&lab.ns, TAP, true);
    let raw = PacketSock::open(&lab.ns, TAP, false);
    let mut first = connect(&lab.daemon.socket, Keeper::Ledger);
    tx_roundtrip(&mut first, &host, 1);
    lab.kill();
    lab.restart();
    drop(first);

    let mut other = connect(&lab.daemon.socket, Keeper::Ledger);
    tx_roundtrip(&mut other, &host, 2);
    rx_roundtrip(&mut other, &raw, 3);
    let log = lab.daemon.log_text();
    assert!(
        log.contains("queue 1: discarding the in-flight ledger")
            && log.contains("'s record of it: it was written for another ring"),
        "{log}"
    );
    assert!(log.contains("memory file"), "{log}");
    nothing_recovered(&lab.daemon, &lab.ns);

    lab.kill();
    lab.restart();
    other.reconnect_with_new_rings(&lab.daemon.socket, true);
    tx_roundtrip(&mut other, &host, 4);
    rx_roundtrip(&mut other, &raw, 5);
    let log = lab.daemon.log_text();
    assert!(
        log.contains("queue 0: discarding") && log.contains("queue 1: discarding"),
        "{log}"
    );
    nothing_recovered(&lab.daemon, &lab.ns);
}

/// The driver reset its rings in place while zcnet was down (same
/// addresses, same memory, used index back to 0): the record is this
/// ring's, but the ring no longer shows the chains it had in flight. They
/// cannot be returned: counted and logged, and the device works.
#[test]
fn chains_a_reset_ring_cannot_take_back_are_counted_lost() {
    let mut lab = UdpLab::new(
        &zcnet(),
        Path::Veth,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "10000"],
    );
    let rx = lab.receiver();
    hold(&lab);
    let mut g = connect(&lab.daemon.socket, Keeper::Ledger);
    send_h0_to_h5(&mut g, [9000, 20_000, 300, 300, 20_000, 20_000]);
    lab.wait_metric("zcnet_tx_zerocopy_sends_total", 3);
    wait_for_the_field_state(&mut g, &lab.ns);
    assert_eq!(next_tag(&rx), Some(0));
    lab.kill_and_restart();
    release(&lab);
    g.reconnect_with_new_rings(&lab.daemon.socket, false);
    let f = frame(300, 7);
    let head = queue(&mut g, &f);
    g.tx(0).kick();
    assert_eq!(ids(&g.wait_tx_used(0, 1)), vec![head]);
    assert_eq!(next_tag(&rx), Some(7));
    let m = Daemon::scrape(&lab.ns);
    assert_eq!(metric(&m, "zcnet_restart_lost_chains_total"), 3);
    assert_eq!(metric(&m, "zcnet_restart_recovered_chains_total"), 0);
    let log = lab.daemon.log_text();
    assert!(
        log.contains(
            "the ring's used index is 0 but the record's is 3: the ring was reset or written by \
             someone else while zcnet was down. 3 chains it had in flight cannot be returned"
        ),
        "{log}"
    );
}

/// Bad GET/SET_INFLIGHT_FD from a frontend that asks for replies: each
/// gets an error answer, the connection stays up, and the same frontend
/// then sets the device up with a good region and moves a frame.
#[test]
fn bad_inflight_requests_are_refused_and_the_connection_goes_on() {
    let lab = TapLab::new();
    let host = PacketSock::open(&lab.ns, TAP, true);
    let mut g = FakeGuest::negotiate(&lab.daemon.socket, &opts(Keeper::Frontend));
    g.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    g.set_mem_table();

    // More queues than the device has: no region (size 0, no descriptor).
    let asked = VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues: 64,
        queue_size: RING,
    };
    assert!(g.frontend.get_inflight_fd(&asked).is_err());
    // A file that is not a region zcnet handed out.
    let plain = tempfile::tempfile().unwrap();
    plain.set_len(1 << 20).unwrap();
    let claimed = VhostUserInflight {
        mmap_size: 1 << 16,
        mmap_offset: 0,
        num_queues: 2,
        queue_size: RING,
    };
    use std::os::fd::AsRawFd;
    assert!(g
        .frontend
        .set_inflight_fd(&claimed, plain.as_raw_fd())
        .is_err());
    let log = lab.daemon.log_text();
    assert!(
        log.contains("refused GET_INFLIGHT_FD from the frontend"),
        "{log}"
    );
    assert!(
        log.contains("refused SET_INFLIGHT_FD from the frontend: SET_INFLIGHT_FD:")
            && log.contains("(error reply sent; connection kept)"),
        "{log}"
    );

    g.get_inflight_region();
    g.set_inflight_region();
    for q in 0..2 {
        g.start_ring(q, RING);
    }
    g.sync();
    tx_roundtrip(&mut g, &host, 1);
}
