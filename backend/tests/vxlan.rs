//! The VXLAN attachment against the kernel's own `vxlan` device: zcnet in
//! one network namespace, two kernel VTEPs in two others (over veths), or
//! an `ifb` egress where lent pages leave uncopied. The fake guest drives
//! the real daemon over its vhost-user socket. Needs root.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use zcnet_harness::daemon::ZcnetBin;
use zcnet_harness::frames::{self, PacketSock, GUEST_MAC};
use zcnet_harness::guest::{FakeGuest, GuestOpts, HDR_LEN, MTU};
use zcnet_harness::ring::Used;
use zcnet_harness::vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use zcnet_harness::vhost::vhost_user::VhostUserFrontend;
use zcnet_harness::vxlan_lab::{self, Path, VxlanLab, OVERLAY, PEERS, STRANGER, VNI};

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

const WAIT: Duration = Duration::from_secs(20);
const PEER0: &str = "10.9.0.2:4789";
const PEER1: &str = "10.9.1.2:4789";

fn connect(lab: &VxlanLab, pairs: usize) -> FakeGuest {
    let opts = GuestOpts {
        pairs,
        queue_size: 256,
        wanted: GuestOpts::default().wanted | MTU,
        ..GuestOpts::default()
    };
    FakeGuest::connect(&lab.daemon.socket, &opts)
}

/// Queues `frame` behind `hdr` on pair `pair`'s TX ring, in descriptors of
/// at most 4 KiB, and kicks.
fn send(g: &mut FakeGuest, pair: usize, hdr: &[u8; HDR_LEN], frame: &[u8]) -> u16 {
    let head = g.queue_tx(pair, hdr, frame, 1 + (HDR_LEN + frame.len()) / 4096);
    g.tx(pair).kick();
    head
}

fn plain() -> [u8; HDR_LEN] {
    [0; HDR_LEN]
}

/// The next frame on `cap` that satisfies `want`, or a panic.
fn capture(cap: &PacketSock, what: &str, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    cap.recv_matching(WAIT, want)
        .unwrap_or_else(|| panic!("{what}: never seen"))
}

fn tagged(tag: u32) -> impl Fn(&[u8]) -> bool {
    move |f| frames::tag_of(f) == Some(tag)
}

/// The bytes the guest got in the used buffer `u`, among `posted`.
fn rx_bytes(g: &FakeGuest, posted: &[(u16, u64)], u: &Used) -> Vec<u8> {
    let addr = posted
        .iter()
        .find(|(h, _)| *h == u.id)
        .expect("a posted buffer")
        .1;
    g.read(addr, u.len as usize)
}

#[test]
fn frames_of_60_and_1514_bytes_cross_both_ways_byte_for_byte() {
    let lab = VxlanLab::new(&zcnet(), Path::KernelPeers, &[]);
    let caps = [lab.vx0(0), lab.vx0(1)];
    let mut g = connect(&lab, 1);
    let posted = g.post_rx(0, 8, 2048);

    // Guest to host: flooded (broadcast) to both kernel VTEPs, which hand
    // exactly the guest's frame to their vxlan device.
    for (tag, len) in [(1u32, 60usize), (2, 1514)] {
        let f = frames::test_frame(len, tag, [0xff; 6], GUEST_MAC);
        send(&mut g, 0, &plain(), &f);
        for (i, cap) in caps.iter().enumerate() {
            let got = capture(cap, &format!("frame {tag} at peer {i}"), tagged(tag));
            assert_eq!(got, f, "frame {tag} altered on its way to peer {i}");
        }
    }
    let used = g.wait_tx_used(0, 2);
    assert!(used.iter().all(|u| u.len == 0));

    // Host to guest: frames sent into peer 0's vxlan device land whole in
    // the guest's buffers behind a plain header.
    let peer_mac = lab.vx0_mac(0);
    let sent: Vec<Vec<u8>> = [(3u32, 60usize), (4, 1514)]
        .iter()
        .map(|&(tag, len)| frames::test_frame(len, tag, GUEST_MAC, peer_mac))
        .collect();
    for f in &sent {
        caps[0].send(f);
    }
    let used = g.wait_rx_used(0, 2);
    for (u, f) in used.iter().zip(&sent) {
        let got = rx_bytes(&g, &posted, u);
        let mut hdr = [0u8; HDR_LEN];
        hdr[10] = 1; // num_buffers
        assert_eq!(&got[..HDR_LEN], &hdr, "a plain virtio-net header");
        assert_eq!(&got[HDR_LEN..], &f[..], "frame altered on its way in");
    }

    let m = lab.scrape();
    let tx = |vtep| vxlan_lab::sum(&m, "zcnet_vxlan_tx_frames_total", &[("vtep", vtep)]);
    assert_eq!((tx(PEER0), tx(PEER1)), (2, 2));
    assert_eq!(
        vxlan_lab::sum(&m, "zcnet_vxlan_rx_bytes_total", &[("vtep", PEER0)]),
        60 + 1514
    );
    assert_eq!(vxlan_lab::sum(&m, "zcnet_rx_frames_total", &[]), 2);
}

#[test]
fn arp_floods_to_both_vteps_and_after_learning_unicast_goes_to_one() {
    let lab = VxlanLab::new(&zcnet(), Path::KernelPeers, &[]);
    let caps = [lab.vx0(0), lab.vx0(1)];
    let mut g = connect(&lab, 1);
    let posted = g.post_rx(0, 16, 2048);

    // The guest asks who has peer 0's overlay address.
    let guest_ip = [192, 168, 42, 100];
    let target: [u8; 4] = OVERLAY[0].parse::<std::net::Ipv4Addr>().unwrap().octets();
    let arp = arp_request(GUEST_MAC, guest_ip, target);
    send(&mut g, 0, &plain(), &arp);
    let is_arp = |f: &[u8]| f.len() >= 14 && f[12..14] == [0x08, 0x06];
    for (i, cap) in caps.iter().enumerate() {
        assert_eq!(
            capture(cap, &format!("ARP at peer {i}"), is_arp),
            arp,
            "peer {i}"
        );
    }
    // Peer 0's kernel answers; zcnet learns its MAC from the reply.
    let used = g.wait_rx_used(0, 1);
    let reply = rx_bytes(&g, &posted, &used[0]);
    let reply = &reply[HDR_LEN..];
    assert_eq!(&reply[12..14], &[0x08, 0x06], "an ARP reply");
    assert_eq!(&reply[20..22], &[0, 2], "op: reply");
    let peer_mac = lab.vx0_mac(0);
    assert_eq!(&reply[6..12], &peer_mac, "from peer 0's vxlan device");
    lab.wait_metric("zcnet_vxlan_fdb_learned_entries", &[], 1);

    // A unicast frame to peer 0 now goes to VTEP 10.9.0.2 only; a
    // broadcast after it still goes to both.
    let unicast = frames::test_frame(200, 10, peer_mac, GUEST_MAC);
    send(&mut g, 0, &plain(), &unicast);
    let marker = frames::test_frame(60, 11, [0xff; 6], GUEST_MAC);
    send(&mut g, 0, &plain(), &marker);
    assert_eq!(capture(&caps[0], "unicast", tagged(10)), unicast);
    assert_eq!(capture(&caps[0], "marker at peer 0", tagged(11)), marker);
    let first_at_1 = capture(&caps[1], "marker at peer 1", |f| {
        frames::tag_of(f).is_some()
    });
    assert_eq!(
        frames::tag_of(&first_at_1),
        Some(11),
        "peer 1 got the unicast frame meant for peer 0"
    );
    let m = lab.scrape();
    let tx = |vtep| vxlan_lab::sum(&m, "zcnet_vxlan_tx_frames_total", &[("vtep", vtep)]);
    assert_eq!(
        (tx(PEER0), tx(PEER1)),
        (3, 2),
        "ARP + unicast + marker, ARP + marker"
    );
}

/// An ARP request from `mac`/`ip` for `target` (60 bytes, padded).
fn arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

/// A datagram as a VTEP sends it: the VXLAN header, then `inner`.
fn datagram(vni: u32, flags: u8, reserved: u8, inner: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut d = vec![flags, 0, 0, 0, v[1], v[2], v[3], reserved];
    d.extend_from_slice(inner);
    d
}

#[test]
fn bad_underlay_input_is_dropped_by_reason_and_good_frames_still_flow() {
    let lab = VxlanLab::new(&zcnet(), Path::KernelPeers, &[]);
    // The kernel itself sends the wrong VNI: a second vxlan device on
    // peer 0 with VNI 43, towards zcnet.
    lab.peers[0].ip(&[
        "link", "add", "vx1", "type", "vxlan", "id", "43", "local", PEERS[0], "remote", "10.9.0.1",
        "dstport", "4789",
    ]);
    lab.peers[0].ip(&["link", "set", "vx1", "up"]);
    let vx1 = PacketSock::open(&lab.peers[0], "vx1", false);
    let caps = [lab.vx0(0)];
    let mut g = connect(&lab, 1);
    let posted = g.post_rx(0, 8, 2048);
    let peer_mac = lab.vx0_mac(0);

    vx1.send(&frames::test_frame(60, 20, GUEST_MAC, peer_mac));
    let vtep = lab.udp(0, PEERS[0]);
    let stranger = lab.udp(0, STRANGER);
    let zc = "10.9.0.1:4789";
    let inner = frames::test_frame(60, 21, GUEST_MAC, [0x02, 0, 0, 0, 0, 0x77]);
    let multicast_src = frames::test_frame(60, 22, GUEST_MAC, [0x01, 0, 0x5e, 0, 0, 1]);
    let oversized = frames::test_frame(9100, 23, GUEST_MAC, [0x02, 0, 0, 0, 0, 0x77]);
    for d in [
        vec![0x08, 0, 0],                       // too_short
        datagram(VNI, 0x00, 0, &inner),         // no_vni_flag
        datagram(VNI, 0x08, 1, &inner),         // reserved_bits
        datagram(VNI, 0x08, 0, &inner[..13]),   // inner_too_short
        datagram(VNI, 0x08, 0, &multicast_src), // invalid_source
        datagram(VNI, 0x08, 0, &oversized),     // too_long
    ] {
        vtep.send_to(&d, zc).unwrap();
    }
    // A stranger floods: not one of them reaches the guest or the FDB.
    for t in 0..50u32 {
        let f = frames::test_frame(60, 100 + t, [0xff; 6], [0x02, 0, 0, 0, 1, t as u8]);
        stranger.send_to(&datagram(VNI, 0x08, 0, &f), zc).unwrap();
    }
    // And then a good frame, through the kernel: the first and only one
    // the guest gets.
    let good = frames::test_frame(1000, 30, GUEST_MAC, peer_mac);
    caps[0].send(&good);
    let used = g.wait_rx_used(0, 1);
    assert_eq!(&rx_bytes(&g, &posted, &used[0])[HDR_LEN..], &good[..]);

    let m = lab.scrape();
    let drops = |vtep: &str, reason: &str| {
        vxlan_lab::sum(
            &m,
            "zcnet_vxlan_rx_dropped_total",
            &[("vtep", vtep), ("reason", reason)],
        )
    };
    for reason in [
        "too_short",
        "no_vni_flag",
        "wrong_vni",
        "reserved_bits",
        "inner_too_short",
        "invalid_source",
        "too_long",
    ] {
        assert_eq!(drops(PEER0, reason), 1, "{reason}:\n{m}");
    }
    assert_eq!(drops("unknown", "unknown_vtep"), 50);
    assert_eq!(vxlan_lab::sum(&m, "zcnet_vxlan_rx_frames_total", &[]), 1);
    assert_eq!(
        vxlan_lab::sum(&m, "zcnet_vxlan_fdb_added_total", &[]),
        1,
        "learned only from the good frame"
    );
    // Nothing more arrived in the guest.
    assert!(g.rx(0).take_used().is_empty());
}

/// Whether `f` is an IPv4/TCP frame from port `sport`.
fn tcp_from(f: &[u8], sport: u16) -> bool {
    f.len() >= 54 && f[12..14] == [0x08, 0x00] && f[23] == 6 && f[34..36] == sport.to_be_bytes()
}

#[test]
fn a_64k_tso_frame_reaches_the_kernel_as_mss_segments_with_correct_checksums() {
    for zerocopy in ["off", "on"] {
        let lab = VxlanLab::new(
            &zcnet(),
            Path::KernelPeers,
            &["--zerocopy", zerocopy, "--zerocopy-min-bytes", "1000"],
        );
        // The kernel's GRO would merge the segments again before the
        // capture sees them.
        lab.peers[0].ip(&["link", "set", "vx0", "gro_max_size", "0"]);
        let cap = lab.vx0(0);
        let mut g = connect(&lab, 1);
        // Learn peer 0's MAC, so the frame is unicast to it alone.
        let peer_mac = lab.vx0_mac(0);
        let posted = g.post_rx(0, 8, 2048);
        cap.send(&frames::test_frame(60, 1, GUEST_MAC, peer_mac));
        g.wait_rx_used(0, 1);
        let _ = posted;

        let csum_errors = lab.snmp(0, "Tcp", "InCsumErrors");
        let in_segs = lab.snmp(0, "Tcp", "InSegs");
        let (mss, payload) = (1448usize, 65_000usize);
        let dst: [u8; 4] = OVERLAY[0].parse::<std::net::Ipv4Addr>().unwrap().octets();
        let (gso, frame) = frames::tcp4_frame_between(
            payload,
            mss as u16,
            40_000,
            peer_mac,
            GUEST_MAC,
            [192, 168, 42, 100],
            dst,
        );
        let head = send(&mut g, 0, &frames::v1_hdr(&gso.hdr), &frame);
        let segments = payload.div_ceil(mss);
        let mut data = Vec::new();
        for i in 0..segments {
            let s = capture(&cap, &format!("segment {i} ({zerocopy})"), |f| {
                tcp_from(f, 40_000)
            });
            let len = mss.min(payload - i * mss);
            assert_eq!(s.len(), 54 + len, "segment {i}: MSS-sized");
            let ip = &s[14..34];
            assert_eq!(
                frames::checksum(ip, 0),
                0,
                "segment {i}: IPv4 header checksum"
            );
            assert_eq!(
                usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                40 + len,
                "segment {i}: IPv4 length"
            );
            let mut pseudo = ip[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&((20 + len) as u16).to_be_bytes());
            pseudo.extend_from_slice(&s[34..]);
            assert_eq!(frames::checksum(&pseudo, 0), 0, "segment {i}: TCP checksum");
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 1 + (i * mss) as u32, "segment {i}: sequence number");
            data.extend_from_slice(&s[54..]);
        }
        assert_eq!(data, frame[54..], "the payload, whole and in order");
        let used = g.wait_tx_used(0, 1);
        assert_eq!(used[0].id, head);
        assert_eq!(
            lab.snmp(0, "Tcp", "InCsumErrors"),
            csum_errors,
            "the kernel peer found bad TCP checksums"
        );
        assert!(lab.snmp(0, "Tcp", "InSegs") > in_segs);
        let m = lab.scrape();
        assert_eq!(
            vxlan_lab::sum(&m, "zcnet_vxlan_tx_frames_total", &[("vtep", PEER0)]),
            segments as u64
        );
        assert_eq!(
            vxlan_lab::sum(&m, "zcnet_vxlan_tx_frames_total", &[("vtep", PEER1)]),
            0
        );
        if zerocopy == "on" {
            assert_eq!(
                zcnet_harness::daemon::Daemon::metric(&m, "zcnet_tx_zerocopy_sends_total", 0),
                1,
                "the TSO frame was lent"
            );
        }
    }
}

fn queue_metric(m: &str, name: &str) -> u64 {
    zcnet_harness::daemon::Daemon::metric(m, name, 0)
}

#[test]
fn lent_chains_leave_through_ifb_uncopied_and_are_never_used_before_the_kernel_lets_go() {
    let lab = VxlanLab::new(
        &zcnet(),
        Path::Ifb,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "1000"],
    );
    // Holds frames on the egress: after the first frame (which spends the
    // bucket), datagrams wait in the qdisc, their pages still lent.
    lab.tc(&[
        "qdisc", "add", "dev", "ifb0", "root", "tbf", "rate", "8kbit", "burst", "21000", "latency",
        "100s",
    ]);
    let mut g = connect(&lab, 1);
    // Broadcast: each frame goes to both remotes, two lent sends.
    let heads: Vec<u16> = (0..5)
        .map(|t| {
            send(
                &mut g,
                0,
                &plain(),
                &frames::test_frame(8000, t, [0xff; 6], GUEST_MAC),
            )
        })
        .collect();
    let m = lab.wait_metric("zcnet_tx_zerocopy_sends_total", &[("queue_pair", "0")], 5);
    assert_eq!(
        vxlan_lab::sum(&m, "zcnet_vxlan_tx_frames_total", &[]),
        10,
        "five frames to two VTEPs"
    );
    lab.wait_metric(
        "zcnet_tx_zerocopy_completed_total",
        &[("queue_pair", "0")],
        2,
    );
    let first = g.wait_tx_used(0, 1);
    assert_eq!(first[0].id, heads[0]);
    let m = lab.scrape();
    assert_eq!(queue_metric(&m, "zcnet_tx_lent_chains"), 4);
    assert!(vxlan_lab::sum(&m, "zcnet_vxlan_tx_lent_pages_held", &[]) >= 4 * 2 * 2);
    assert_eq!(
        g.tx(0).used_idx(),
        1,
        "a chain went to the used ring while the kernel still held its pages"
    );

    // Let the held datagrams go: every chain comes back, once.
    lab.tc(&["qdisc", "replace", "dev", "ifb0", "root", "pfifo"]);
    let rest = g.wait_tx_used(0, 4);
    assert_eq!(
        rest.iter().map(|u| u.id).collect::<HashSet<_>>(),
        heads[1..].iter().copied().collect::<HashSet<_>>()
    );

    // A 64 KiB TSO frame, lent too.
    let (gso, frame) = frames::tcp4_frame(65_000, 1448, 40_000, [0xff; 6], GUEST_MAC);
    let tso = send(&mut g, 0, &frames::v1_hdr(&gso.hdr), &frame);
    assert_eq!(g.wait_tx_used(0, 1)[0].id, tso);

    let m = lab.scrape();
    let sends = queue_metric(&m, "zcnet_tx_zerocopy_sends_total");
    assert_eq!(sends, 6);
    let ids = queue_metric(&m, "zcnet_tx_zerocopy_completed_total");
    assert!(
        ids >= 10 + 2 * 4,
        "five frames of two ids, a TSO frame of several per VTEP"
    );
    assert_eq!(
        queue_metric(&m, "zcnet_tx_zerocopy_copied_total"),
        0,
        "the kernel copied pages that left through ifb"
    );
    assert_eq!(queue_metric(&m, "zcnet_tx_copy_fallbacks_total"), 0);
    assert_eq!(queue_metric(&m, "zcnet_tx_lent_chains"), 0);
    assert_eq!(vxlan_lab::sum(&m, "zcnet_vxlan_tx_lent_pages_held", &[]), 0);
    assert!(
        vxlan_lab::sum(&m, "zcnet_vxlan_tx_lent_pages_total", &[("vtep", PEER1)]) >= 5 * 2 + 16
    );
}

/// An IPv4/UDP frame of flow `sport` -> 4000, from `src` to `dst`.
fn udp4_frame(dst: [u8; 6], src: [u8; 6], sport: u16) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 48, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&[192, 168, 42, 2, 192, 168, 42, 100]);
    let c = frames::checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&[0, 28, 0, 0]); // length, no checksum
    f.extend_from_slice(&[0x5a; 20]);
    f
}

#[test]
fn two_queue_pairs_each_carry_traffic_both_ways() {
    let lab = VxlanLab::new(&zcnet(), Path::KernelPeers, &["--queue-pairs", "2"]);
    let cap = lab.vx0(0);
    let mut g = connect(&lab, 2);
    let posted = [g.post_rx(0, 64, 2048), g.post_rx(1, 64, 2048)];
    let peer_mac = lab.vx0_mac(0);
    // 64 inner flows: the kernel VTEP gives each its own outer source port,
    // and the kernel spreads them over the pairs' receive sockets.
    let sent: Vec<Vec<u8>> = (0..64)
        .map(|i| udp4_frame(GUEST_MAC, peer_mac, 10_000 + i))
        .collect();
    for f in &sent {
        cap.send(f);
    }
    let mut got: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + WAIT;
    while got[0].len() + got[1].len() < sent.len() {
        for p in 0..2 {
            for u in g.rx(p).take_used() {
                got[p].push(rx_bytes(&g, &posted[p], &u)[HDR_LEN..].to_vec());
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {} + {} of 64 frames arrived",
            got[0].len(),
            got[1].len()
        );
        std::thread::sleep(Duration::from_millis(5)); // polling a condition, with a deadline
    }
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "one pair got every flow: {} + {}",
        got[0].len(),
        got[1].len()
    );
    let all: HashSet<&Vec<u8>> = got.iter().flatten().collect();
    assert_eq!(
        all,
        sent.iter().collect::<HashSet<_>>(),
        "every frame once, whole"
    );

    // Each pair's TX reaches the kernel VTEP too.
    for p in 0..2 {
        let f = frames::test_frame(100, 50 + p as u32, peer_mac, GUEST_MAC);
        send(&mut g, p, &plain(), &f);
        assert_eq!(
            capture(&cap, &format!("pair {p}'s frame"), tagged(50 + p as u32)),
            f
        );
    }
    let m = lab.scrape();
    for p in ["0", "1"] {
        assert!(vxlan_lab::sum(&m, "zcnet_vxlan_rx_frames_total", &[("queue_pair", p)]) > 0);
        assert_eq!(
            vxlan_lab::sum(
                &m,
                "zcnet_vxlan_tx_frames_total",
                &[("queue_pair", p), ("vtep", PEER0)]
            ),
            1,
            "pair {p}'s frame went to the learned VTEP only"
        );
    }
}

#[test]
fn the_guest_is_offered_the_underlay_mtu_less_50_and_larger_frames_are_dropped_and_counted() {
    let lab = VxlanLab::new(&zcnet(), Path::KernelPeers, &[]);
    let cap = lab.vx0(0);
    let opts = GuestOpts {
        wanted: GuestOpts::default().wanted | MTU,
        protocol: VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG,
        ..GuestOpts::default()
    };
    let mut g = FakeGuest::connect(&lab.daemon.socket, &opts);
    assert_ne!(g.acked & MTU, 0, "VIRTIO_NET_F_MTU offered");
    let (_, cfg) = g
        .frontend
        .get_config(0, 12, VhostUserConfigFlags::empty(), &[0u8; 12])
        .expect("GET_CONFIG");
    let mtu = u16::from_le_bytes([cfg[10], cfg[11]]);
    assert_eq!(u32::from(mtu), vxlan_lab::UNDERLAY_MTU - 50);

    // The largest frame that fits one underlay packet, and one byte more.
    let fits = frames::test_frame(usize::from(mtu) + 14, 60, [0xff; 6], GUEST_MAC);
    let too_big = frames::test_frame(usize::from(mtu) + 15, 61, [0xff; 6], GUEST_MAC);
    let h1 = send(&mut g, 0, &plain(), &too_big);
    let h2 = send(&mut g, 0, &plain(), &fits);
    assert_eq!(capture(&cap, "the frame that fits", tagged(60)), fits);
    let used = g.wait_tx_used(0, 2);
    assert_eq!(
        used.iter().map(|u| u.id).collect::<HashSet<_>>(),
        [h1, h2].into_iter().collect(),
        "both chains returned"
    );
    let m = lab.scrape();
    assert_eq!(
        vxlan_lab::sum(
            &m,
            "zcnet_vxlan_tx_dropped_total",
            &[("vtep", "none"), ("reason", "too_big")]
        ),
        1
    );
    assert_eq!(queue_metric(&m, "zcnet_tx_dropped_total"), 1);
    assert_eq!(
        vxlan_lab::sum(&m, "zcnet_vxlan_tx_frames_total", &[("vtep", PEER0)]),
        1
    );
}

#[test]
fn mistakes_on_the_command_line_or_in_the_underlay_exit_non_zero_saying_what_to_fix() {
    let bin = zcnet();
    let run = |ns: Option<&zcnet_harness::netns::NetNs>, args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("zc.sock");
        let mut cmd = match ns {
            Some(ns) => ns.command(bin.path()),
            None => std::process::Command::new(bin.path()),
        };
        let out = cmd
            .arg("--socket-path")
            .arg(&sock)
            .args(args)
            .output()
            .expect("run zcnet");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, want) in [
        (
            &["--vxlan-vni", "42", "--vxlan-local", "10.9.0.1"][..],
            "at least one --vxlan-remote",
        ),
        (
            &[
                "--vxlan-vni",
                "99999999",
                "--vxlan-local",
                "10.9.0.1",
                "--vxlan-remote",
                "10.9.0.2",
            ],
            "0 to 16777215",
        ),
        (
            &[
                "--vxlan-vni",
                "42",
                "--vxlan-local",
                "10.9.0.1",
                "--vxlan-remote",
                "2001:db8::2",
            ],
            "one IP version",
        ),
        (
            &[
                "--vxlan-vni",
                "42",
                "--vxlan-local",
                "10.9.0.1",
                "--vxlan-remote",
                "10.9.0.2",
                "--vxlan-fdb",
                "52:54:00:12:34:56",
            ],
            "MAC=IP[:PORT]",
        ),
        (&["--vxlan-local", "10.9.0.1"], "--vxlan-vni"),
    ] {
        let (status, err) = run(None, args);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    }
    // Well-formed, but no route to the remote VTEP in this namespace.
    let ns = zcnet_harness::netns::NetNs::new();
    let (status, err) = run(
        Some(&ns),
        &[
            "--vxlan-vni",
            "42",
            "--vxlan-local",
            "127.0.0.1",
            "--vxlan-remote",
            "10.99.0.2",
        ],
    );
    assert!(!status.success(), "{err}");
    assert!(err.contains("is there a route"), "{err}");
}

#[test]
fn lent_sends_refused_by_an_nftables_drop_cost_frames_not_chains_and_lending_goes_on() {
    // A netfilter drop on the way out makes sendmsg fail with EPERM after
    // the kernel built the skb, and such a failed MSG_ZEROCOPY call still
    // takes an id (and is notified at once). The frames are dropped and
    // counted; the chains come back at once; and the ids of the lent sends
    // after it must still line up, or their chains would never come back
    // (or come back early).
    let lab = VxlanLab::new(
        &zcnet(),
        Path::KernelPeers,
        &["--zerocopy", "on", "--zerocopy-min-bytes", "1000"],
    );
    let nft = |args: &[&str]| {
        let mut c = lab.ns.command("nft");
        assert!(
            c.args(args).status().expect("nft").success(),
            "nft {args:?}"
        );
    };
    nft(&["add", "table", "inet", "zcnet_test"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "zcnet_test",
        "out",
        "{ type filter hook output priority 0; policy accept; }",
    ]);
    nft(&[
        "add",
        "rule",
        "inet",
        "zcnet_test",
        "out",
        "udp",
        "dport",
        "4789",
        "drop",
    ]);
    let caps = [lab.vx0(0), lab.vx0(1)];
    let mut g = connect(&lab, 1);
    let dropped: HashSet<u16> = (0..8)
        .map(|t| {
            send(
                &mut g,
                0,
                &plain(),
                &frames::test_frame(8000, t, [0xff; 6], GUEST_MAC),
            )
        })
        .collect();
    let used = g.wait_tx_used(0, 8);
    assert_eq!(used.iter().map(|u| u.id).collect::<HashSet<_>>(), dropped);
    let m = lab.scrape();
    assert_eq!(queue_metric(&m, "zcnet_tx_dropped_total"), 8);
    assert_eq!(
        vxlan_lab::sum(
            &m,
            "zcnet_vxlan_tx_dropped_total",
            &[("reason", "send_error")]
        ),
        16,
        "each frame refused for both VTEPs"
    );
    assert_eq!(queue_metric(&m, "zcnet_tx_zerocopy_sends_total"), 0);

    nft(&["delete", "table", "inet", "zcnet_test"]);
    let sent: Vec<Vec<u8>> = (100..108)
        .map(|t| frames::test_frame(8000, t, [0xff; 6], GUEST_MAC))
        .collect();
    let heads: HashSet<u16> = sent.iter().map(|f| send(&mut g, 0, &plain(), f)).collect();
    for (i, cap) in caps.iter().enumerate() {
        for f in &sent {
            let tag = frames::tag_of(f).unwrap();
            assert_eq!(
                &capture(cap, &format!("frame {tag} at peer {i}"), tagged(tag)),
                f
            );
        }
    }
    let used = g.wait_tx_used(0, 8);
    assert_eq!(
        used.iter().map(|u| u.id).collect::<HashSet<_>>(),
        heads,
        "every lent chain after the drops came back once"
    );
    let m = lab.wait_metric(
        "zcnet_tx_zerocopy_completed_total",
        &[("queue_pair", "0")],
        16,
    );
    assert_eq!(queue_metric(&m, "zcnet_tx_zerocopy_sends_total"), 8);
    assert_eq!(queue_metric(&m, "zcnet_tx_lent_chains"), 0);
}
