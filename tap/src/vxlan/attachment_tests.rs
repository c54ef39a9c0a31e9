//! The VXLAN attachment against the real kernel over loopback (no root):
//! remote VTEPs are plain UDP sockets on 127.0.0.2 and 127.0.0.3, the
//! guest's frames live in this process's memory. The tests in
//! `backend/tests/vxlan.rs` do the same against the kernel's `vxlan`
//! device in network namespaces.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use zcnet_harness::alloc::allocations;

use super::attachment::{open, Vxlan, VxlanAttachment, VxlanConfig};
use super::ether::MacAddr;
use super::header::{encode, Vni};
use super::layout::MAX_HEADERS_LEN;
use super::segment::{TsoLimits, TsoPlan};
use super::stats::DropSample;
use super::testutil::TcpFrame;
use super::Underlay;
use crate::attachment::{Attachment, Completion, SendMode, Sent};
use crate::frame::{RxBuffers, TxFrame};
use crate::vnet_hdr::{VnetHdr, F_NEEDS_CSUM};

const VNI: u32 = 4242;
const GUEST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const PEER_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const HDR: usize = 12;

fn vni() -> Vni {
    Vni::new(VNI).unwrap()
}

/// A remote VTEP: a UDP socket on its own loopback address.
fn vtep(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind a remote VTEP");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

struct Lab {
    vx: Vxlan,
    a: UdpSocket,
    b: UdpSocket,
    local: SocketAddr,
}

fn lab(pairs: usize, zerocopy: bool) -> Lab {
    let (a, b) = (vtep("127.0.0.2"), vtep("127.0.0.3"));
    let vx = open(&VxlanConfig {
        vni: vni(),
        local: "127.0.0.1:0".parse().unwrap(),
        remotes: vec![a.local_addr().unwrap(), b.local_addr().unwrap()],
        statics: Vec::new(),
        ageing: Duration::from_secs(300),
        queue_pairs: pairs,
        zerocopy,
        lend_tso: true,
    })
    .expect("open the VXLAN attachment");
    let local = vx.local();
    Lab { vx, a, b, local }
}

fn empty_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// Sends `frame` (split into pieces of `piece` bytes, as a guest's
/// descriptors would split it) behind `hdr`.
fn send(
    att: &mut VxlanAttachment,
    hdr: VnetHdr,
    frame: &[u8],
    piece: usize,
    mode: SendMode,
) -> io::Result<Sent> {
    let mut iov = vec![empty_iov()];
    iov.extend(frame.chunks(piece).map(|c| libc::iovec {
        iov_base: c.as_ptr().cast_mut().cast(),
        iov_len: c.len(),
    }));
    // SAFETY: the iovecs describe `frame`, alive and unchanged for the
    // call (and, when lent, until the test reaps its notifications or
    // leaves it alone: the kernel holds page references either way).
    let mut f = unsafe { TxFrame::new(hdr, &mut iov) };
    att.send(&mut f, mode)
}

/// Waits (bounded) until the attachment's epoll set says something, then
/// receives into `buf`; the guest's header and frame.
fn recv(att: &mut VxlanAttachment, buf: &mut [u8]) -> io::Result<usize> {
    let mut pfd = libc::pollfd {
        fd: att.fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on our stack; the fd is the attachment's.
    unsafe { libc::poll(&mut pfd, 1, 5000) };
    let len = buf.len();
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    }];
    // SAFETY: `buf` is ours and not otherwise borrowed while `bufs` lives.
    let mut bufs = unsafe { RxBuffers::new(&mut iov, len) };
    att.recv(&mut bufs)
}

/// A datagram as a remote VTEP sends it: the VXLAN header, then `inner`.
fn datagram(header: [u8; 8], inner: &[u8]) -> Vec<u8> {
    let mut d = header.to_vec();
    d.extend_from_slice(inner);
    d
}

fn eth(dst: [u8; 6], src: [u8; 6], len: usize, tag: u8) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((14..len).map(|i| (i as u8).wrapping_mul(31) ^ tag));
    f
}

fn recv_from(s: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = s.recv(&mut buf).expect("a datagram at the remote VTEP");
    buf.truncate(n);
    buf
}

fn drops(v: &[DropSample], reason: &str) -> u64 {
    v.iter()
        .filter(|d| d.reason == reason)
        .map(|d| d.count)
        .sum()
}

#[test]
fn floods_reach_every_remote_and_a_learned_mac_only_its_own() {
    let mut l = lab(1, false);
    let att = &mut l.vx.pairs[0];
    let bcast = eth([0xff; 6], GUEST, 60, 1);
    assert_eq!(
        send(att, VnetHdr::default(), &bcast, 64, SendMode::Copy).unwrap(),
        Sent::Copied
    );
    for r in [&l.a, &l.b] {
        assert_eq!(
            recv_from(r),
            datagram(encode(vni()), &bcast),
            "flooded whole"
        );
    }

    // Remote A speaks for PEER_A: zcnet learns it.
    let reply = eth(GUEST, PEER_A, 1514, 2);
    l.a.send_to(&datagram(encode(vni()), &reply), l.local)
        .unwrap();
    let mut buf = vec![0xeeu8; 9100];
    let n = recv(att, &mut buf).unwrap();
    assert_eq!(n, HDR + reply.len());
    assert_eq!(&buf[..HDR], &[0; HDR], "a plain virtio-net header");
    assert_eq!(&buf[HDR..n], &reply[..], "inner frame byte for byte");

    let unicast = eth(PEER_A, GUEST, 1514, 3);
    send(att, VnetHdr::default(), &unicast, 4096, SendMode::Copy).unwrap();
    let marker = eth([0xff; 6], GUEST, 60, 4);
    send(att, VnetHdr::default(), &marker, 4096, SendMode::Copy).unwrap();
    assert_eq!(recv_from(&l.a), datagram(encode(vni()), &unicast));
    assert_eq!(recv_from(&l.a), datagram(encode(vni()), &marker));
    assert_eq!(
        recv_from(&l.b),
        datagram(encode(vni()), &marker),
        "remote B got the unicast frame meant for A"
    );

    let s = l.vx.metrics.snapshot();
    let p = &s.stats.pairs[0];
    assert_eq!((p.vteps[0].tx_frames, p.vteps[1].tx_frames), (3, 2));
    assert_eq!((p.vteps[0].rx_frames, p.vteps[0].rx_bytes), (1, 1514));
    assert_eq!((s.fdb.learned, s.fdb.added), (1, 1));
}

#[test]
fn bad_datagrams_are_dropped_by_reason_and_the_next_good_one_is_returned() {
    let mut l = lab(1, false);
    let stranger = vtep("127.0.0.9");
    let good = eth(GUEST, PEER_A, 100, 7);
    let mut wrong_flags = encode(vni());
    wrong_flags[0] = 0;
    let mut reserved = encode(vni());
    reserved[7] = 1;
    let bad: [(&UdpSocket, Vec<u8>); 8] = [
        (&l.a, vec![0x08, 0, 0]),
        (&l.a, datagram(wrong_flags, &good)),
        (&l.a, datagram(encode(Vni::new(VNI + 1).unwrap()), &good)),
        (&l.a, datagram(reserved, &good)),
        (&l.a, datagram(encode(vni()), &good[..13])),
        (&stranger, datagram(encode(vni()), &good)),
        (
            &l.b,
            datagram(encode(vni()), &eth(GUEST, [0x01, 0, 0x5e, 0, 0, 1], 60, 0)),
        ),
        (&l.b, datagram(encode(vni()), &eth(GUEST, PEER_A, 9100, 0))),
    ];
    for (from, d) in &bad {
        from.send_to(d, l.local).unwrap();
    }
    l.a.send_to(&datagram(encode(vni()), &good), l.local)
        .unwrap();
    let mut buf = vec![0u8; 12_000];
    let n = recv(&mut l.vx.pairs[0], &mut buf).unwrap();
    assert_eq!(
        &buf[HDR..n],
        &good[..],
        "the good datagram after the bad ones"
    );

    let s = l.vx.metrics.snapshot();
    let rx = &s.stats.pairs[0].rx_dropped;
    for reason in [
        "too_short",
        "no_vni_flag",
        "wrong_vni",
        "reserved_bits",
        "inner_too_short",
        "unknown_vtep",
        "invalid_source",
        "too_long",
    ] {
        assert_eq!(drops(rx, reason), 1, "{reason}: {rx:?}");
    }
    let unknown = rx
        .iter()
        .find(|d| d.reason == "unknown_vtep" && d.count == 1)
        .unwrap();
    assert_eq!(unknown.vtep, "unknown");
    assert_eq!(s.stats.pairs[0].vteps[0].rx_frames, 1);
    assert_eq!(s.fdb.added, 1, "nothing learned from the bad ones");
}

#[test]
fn a_tso_frame_leaves_as_the_planned_segments_with_correct_checksums() {
    for v6 in [false, true] {
        let mut l = lab(1, false);
        let spec = TcpFrame::new(v6, 65_000 - 14 - 32 - if v6 { 40 } else { 20 });
        let frame = spec.build();
        let mss = 1448u16;
        let sent = send(
            &mut l.vx.pairs[0],
            spec.vnet(mss),
            &frame,
            4096,
            SendMode::Copy,
        )
        .unwrap();
        assert_eq!(sent, Sent::Copied);
        // The plan zcnet should have followed, computed here.
        let mut plan = TsoPlan::new();
        plan.plan(
            &spec.vnet(mss),
            &frame[..MAX_HEADERS_LEN],
            frame.len(),
            &frame[..],
            &encode(vni()),
            TsoLimits {
                underlay: Underlay::Ipv4,
                underlay_mtu: 65536,
            },
        )
        .unwrap();
        assert_eq!(plan.batches().len(), 2, "a 64 KiB frame takes two sends");
        for r in [&l.a, &l.b] {
            for (i, seg) in plan.iter().enumerate() {
                let d = recv_from(r);
                let (off, len) = seg.payload;
                assert_eq!(d.len(), seg.header.len() + len, "segment {i} length");
                assert_eq!(&d[..seg.header.len()], seg.header, "segment {i} headers");
                assert_eq!(&d[seg.header.len()..], &frame[off..off + len]);
                let inner = &d[8..];
                let p = SlicedPacket::from_ethernet(inner).unwrap();
                let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                    panic!("segment {i}: not TCP")
                };
                let want = match &p.net {
                    Some(NetSlice::Ipv4(ip)) => tcp
                        .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                        .unwrap(),
                    Some(NetSlice::Ipv6(ip)) => tcp
                        .calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                        .unwrap(),
                    _ => panic!("segment {i}: not IP"),
                };
                assert_eq!(tcp.checksum(), want, "segment {i}: TCP checksum");
                assert!(tcp.payload().len() <= usize::from(mss));
            }
        }
        let s = l.vx.metrics.snapshot();
        assert_eq!(s.stats.pairs[0].vteps[0].tx_frames, plan.len() as u64);
    }
}

#[test]
fn a_needs_csum_frame_gets_its_checksum_and_guest_memory_stays_as_it_was() {
    let mut l = lab(1, false);
    let spec = TcpFrame::new(false, 1000);
    let frame = spec.build();
    let before = frame.clone();
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: spec.l4() as u16,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    send(&mut l.vx.pairs[0], hdr, &frame, 20, SendMode::Copy).unwrap();
    let d = recv_from(&l.a);
    assert_eq!(frame, before, "guest memory written");
    let p = SlicedPacket::from_ethernet(&d[8..]).unwrap();
    let (Some(TransportSlice::Tcp(tcp)), Some(NetSlice::Ipv4(ip))) = (&p.transport, &p.net) else {
        panic!("not TCP/IPv4")
    };
    assert_eq!(
        tcp.checksum(),
        tcp.calc_checksum_ipv4(ip.header().source(), ip.header().destination())
            .unwrap()
    );
    let l4 = spec.l4();
    assert_eq!(
        &d[8..8 + l4 + 16],
        &frame[..l4 + 16],
        "bytes before the checksum"
    );
    assert_eq!(&d[8 + l4 + 18..], &frame[l4 + 18..], "bytes after it");
}

/// Reaps until the completions cover `ids` ids, waiting (bounded) for the
/// kernel's notifications.
fn reap_ids(att: &mut VxlanAttachment, ids: u64) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        att.reap(&mut out).unwrap();
        let covered: u64 = out
            .iter()
            .map(|c| u64::from(c.last.wrapping_sub(c.first)) + 1)
            .sum();
        if covered >= ids {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "only {covered} of {ids} ids notified: {out:?}"
        );
        att.wait_notifications(Duration::from_millis(100));
    }
}

#[test]
fn lent_sends_take_consecutive_ids_and_come_back_through_reap() {
    let mut l = lab(1, true);
    let att = &mut l.vx.pairs[0];
    assert!(att.can_lend());
    let spec = TcpFrame::new(false, 60_000);
    let frame = spec.build();
    // Flooded to two remotes; a lent send pins at most 17 pages, so each
    // remote takes several sends, all with consecutive ids.
    let Sent::Lent { first_id, last_id } =
        send(att, spec.vnet(1448), &frame, 4096, SendMode::Lend).unwrap()
    else {
        panic!("a TSO frame was not lent")
    };
    assert_eq!(first_id, 0);
    let k = last_id + 1;
    assert!(
        k >= 2 * 4,
        "{k} sends for two remotes: 60000 bytes need at least 4 each"
    );
    let plain = eth([0xff; 6], GUEST, 20_000, 9);
    assert_eq!(
        send(att, VnetHdr::default(), &plain, 4096, SendMode::Lend).unwrap(),
        Sent::Lent {
            first_id: k,
            last_id: k + 1
        }
    );
    let mut csum = TcpFrame::new(false, 20_000).build();
    csum[0..6].copy_from_slice(&[0xff; 6]);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    assert_eq!(
        send(att, hdr, &csum, 4096, SendMode::Lend).unwrap(),
        Sent::Lent {
            first_id: k + 2,
            last_id: k + 3
        }
    );
    assert_eq!(att.plan_holds.held(), 1, "the TSO headers are held");
    assert_eq!(att.prefixes.held(), 1, "the checksummed prefix is held");
    let done = reap_ids(att, u64::from(k) + 4);
    let mut ids: Vec<u32> = done.iter().flat_map(|c| c.first..=c.last).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..k + 4).collect::<Vec<_>>(), "each id exactly once");
    assert!(done.iter().all(|c| c.copied), "loopback delivery copies");
    assert_eq!((att.plan_holds.held(), att.prefixes.held()), (0, 0));
    assert_eq!(att.outstanding(), 0);
    let s = l.vx.metrics.snapshot();
    assert_eq!(s.stats.pairs[0].lent_pages_now, 0);
    assert!(s.stats.pairs[0].vteps[0].lent_pages >= 15 + 5 + 5);
    for r in [&l.a, &l.b] {
        let segments = 60_000usize.div_ceil(1448);
        for _ in 0..segments {
            recv_from(r);
        }
        assert_eq!(recv_from(r), datagram(encode(vni()), &plain));
        assert_eq!(recv_from(r).len(), 8 + csum.len());
    }
}

#[test]
fn frames_that_do_not_fit_and_lying_offload_headers_are_counted_drops() {
    let mut l = lab(1, false);
    let att = &mut l.vx.pairs[0];
    // Loopback's IP MTU is 65535 (the largest IPv4 packet): 65499 bytes
    // fit inside VXLAN, 65500 do not.
    let big = eth([0xff; 6], GUEST, 65_500, 0);
    let e = send(att, VnetHdr::default(), &big, 4096, SendMode::Copy).unwrap_err();
    assert!(e.to_string().contains("never fragmented"), "{e}");
    send(
        att,
        VnetHdr::default(),
        &big[..65_499],
        4096,
        SendMode::Copy,
    )
    .unwrap();
    let spec = TcpFrame::new(false, 5000);
    let mut lie = spec.vnet(1000);
    lie.csum_offset = 6; // not the TCP checksum
    send(att, lie, &spec.build(), 4096, SendMode::Copy).unwrap_err();
    let s = l.vx.metrics.snapshot();
    let tx = &s.stats.pairs[0].tx_dropped;
    assert_eq!(drops(tx, "too_big"), 1);
    assert_eq!(drops(tx, "bad_offload"), 1);
    assert_eq!(recv_from(&l.a).len(), 8 + 65_499);
}

#[test]
fn a_mac_learned_on_one_pair_steers_the_other_pairs_tx() {
    let mut l = lab(2, false);
    l.a.send_to(
        &datagram(encode(vni()), &eth(GUEST, PEER_A, 60, 0)),
        l.local,
    )
    .unwrap();
    // The kernel picks the pair by the datagram's flow; either may get it.
    let mut pfds = [0, 1].map(|p| libc::pollfd {
        fd: l.vx.pairs[p].fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: two pollfds on our stack; the fds are the attachments'.
    let ready = unsafe { libc::poll(pfds.as_mut_ptr(), 2, 5000) };
    assert!(ready > 0, "no pair received the datagram");
    let mut buf = vec![0u8; 9100];
    let learned_on = (0..2)
        .find(|&p| pfds[p].revents != 0 && recv(&mut l.vx.pairs[p], &mut buf).is_ok())
        .expect("a pair with the datagram");
    let other = 1 - learned_on;
    let unicast = eth(PEER_A, GUEST, 200, 1);
    send(
        &mut l.vx.pairs[other],
        VnetHdr::default(),
        &unicast,
        4096,
        SendMode::Copy,
    )
    .unwrap();
    assert_eq!(recv_from(&l.a), datagram(encode(vni()), &unicast));
    let s = l.vx.metrics.snapshot();
    assert_eq!(s.stats.pairs[other].vteps[1].tx_frames, 0, "flooded to B");
    assert_eq!(s.stats.pairs[other].vteps[0].tx_frames, 1);
}

#[test]
fn a_disabled_pair_leaves_the_receive_group() {
    let mut l = lab(2, false);
    l.vx.pairs[1].set_enabled(false).unwrap();
    // Every flow now lands on pair 0.
    for port in 0..16u8 {
        let s = vtep("127.0.0.2");
        let _ = port;
        s.send_to(
            &datagram(encode(vni()), &eth(GUEST, PEER_A, 60, port)),
            l.local,
        )
        .unwrap();
    }
    let mut buf = vec![0u8; 9100];
    for i in 0..16 {
        let n = recv(&mut l.vx.pairs[0], &mut buf).unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        assert_eq!(n, HDR + 60);
    }
    l.vx.pairs[1].set_enabled(true).unwrap();
    assert!(l.vx.pairs[1].rx.is_some());
}

#[test]
fn an_ipv6_underlay_carries_frames_both_ways() {
    let Ok(a) = UdpSocket::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback: skipped");
        return;
    };
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut vx = open(&VxlanConfig {
        vni: vni(),
        local: "[::1]:0".parse().unwrap(),
        remotes: vec![a.local_addr().unwrap()],
        statics: vec![(MacAddr(PEER_A), a.local_addr().unwrap())],
        ageing: Duration::from_secs(300),
        queue_pairs: 1,
        zerocopy: false,
        lend_tso: true,
    })
    .unwrap();
    assert_eq!(vx.guest_mtu(), vx.underlay_mtu() - 70);
    let f = eth(PEER_A, GUEST, 1514, 5);
    send(
        &mut vx.pairs[0],
        VnetHdr::default(),
        &f,
        4096,
        SendMode::Copy,
    )
    .unwrap();
    assert_eq!(recv_from(&a), datagram(encode(vni()), &f));
    let back = eth(GUEST, PEER_A, 1000, 6);
    a.send_to(&datagram(encode(vni()), &back), vx.local())
        .unwrap();
    let mut buf = vec![0u8; 9100];
    let n = recv(&mut vx.pairs[0], &mut buf).unwrap();
    assert_eq!(&buf[HDR..n], &back[..]);
}

#[test]
fn sending_and_receiving_allocate_nothing_per_frame() {
    let mut l = lab(1, true);
    let spec = TcpFrame::new(false, 60_000);
    let tso = spec.build();
    let plain = eth([0xff; 6], GUEST, 1514, 1);
    let csum_spec = TcpFrame::new(false, 1000);
    let mut csum = csum_spec.build();
    csum[0..6].copy_from_slice(&[0xff; 6]);
    let csum_hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let incoming = datagram(encode(vni()), &eth(GUEST, PEER_A, 1514, 2));
    let mut buf = vec![0u8; 9100];
    let mut out = Vec::with_capacity(4096);
    let att = &mut l.vx.pairs[0];
    let mut round = |att: &mut VxlanAttachment, out: &mut Vec<Completion>| {
        for mode in [SendMode::Copy, SendMode::Lend] {
            send(att, spec.vnet(1448), &tso, 4096, mode).unwrap();
            send(att, VnetHdr::default(), &plain, 4096, mode).unwrap();
            send(att, csum_hdr, &csum, 4096, mode).unwrap();
        }
        l.a.send_to(&incoming, l.local).unwrap();
        recv(att, &mut buf).unwrap();
        att.reap(out).unwrap();
        out.clear();
    };
    // The first rounds grow what grows once (the FDB entry, queues).
    for _ in 0..3 {
        round(att, &mut out);
    }
    // `send` builds its iovec Vec here, in the test: count only zcnet's.
    let mut iov_store = Vec::with_capacity(64);
    let n = allocations(|| {
        for _ in 0..20 {
            for mode in [SendMode::Copy, SendMode::Lend] {
                for (hdr, f) in [
                    (spec.vnet(1448), &tso),
                    (VnetHdr::default(), &plain),
                    (csum_hdr, &csum),
                ] {
                    iov_store.clear();
                    iov_store.push(empty_iov());
                    iov_store.extend(f.chunks(4096).map(|c| libc::iovec {
                        iov_base: c.as_ptr().cast_mut().cast(),
                        iov_len: c.len(),
                    }));
                    // SAFETY: as in `send`.
                    let mut tf = unsafe { TxFrame::new(hdr, &mut iov_store) };
                    att.send(&mut tf, mode).unwrap();
                }
            }
            l.a.send_to(&incoming, l.local).unwrap();
            recv(att, &mut buf).unwrap();
            att.reap(&mut out).unwrap();
            out.clear();
        }
    });
    assert_eq!(n, 0, "allocations per frame");
}

#[test]
fn eagain_before_a_frame_puts_it_back_and_in_the_middle_drops_the_rest() {
    let mut l = lab(1, true);
    let att = &mut l.vx.pairs[0];
    let spec = TcpFrame::new(false, 60_000);
    let frame = spec.build();
    // Nothing sent yet: the frame is not sent at all, its slot goes back.
    att.eagain_after = Some(0);
    let e = send(att, spec.vnet(1448), &frame, 4096, SendMode::Lend).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(att.plan_holds.held(), 0);
    assert_eq!(att.outstanding(), 0);

    // The first send of the frame went out, then the buffers filled: the
    // chain keeps the one id taken; the rest of the frame (and the other
    // remote's copy) is dropped and counted, never retried.
    att.eagain_after = Some(1);
    assert_eq!(
        send(att, spec.vnet(1448), &frame, 4096, SendMode::Lend).unwrap(),
        Sent::Lent {
            first_id: 0,
            last_id: 0
        }
    );
    assert_eq!(
        att.plan_holds.held(),
        1,
        "its headers stay held for that id"
    );
    att.eagain_after = None;
    reap_ids(att, 1);
    assert_eq!(att.plan_holds.held(), 0);
    let s = l.vx.metrics.snapshot();
    let tx = &s.stats.pairs[0].tx_dropped;
    assert_eq!(
        drops(tx, "eagain_mid_frame"),
        2,
        "one per remote cut: {tx:?}"
    );
    // The part that went out is whole segments, cut at a segment boundary.
    let first = recv_from(&l.a);
    assert!(first.len() > 8 + 54 && first.len() <= 8 + 66 + 1448);
}

#[test]
fn the_outer_source_port_follows_the_inner_flow() {
    let mut l = lab(1, false);
    let att = &mut l.vx.pairs[0];
    let flow = |sport: u16| {
        let mut spec = TcpFrame::new(false, 100);
        spec.flags = 0x10;
        let mut f = spec.build();
        f[0..6].copy_from_slice(&PEER_A);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f
    };
    let mut ports = std::collections::HashMap::new();
    let mut buf = [0u8; 2000];
    for round in 0..2 {
        for sport in 1000..1032u16 {
            send(att, VnetHdr::default(), &flow(sport), 4096, SendMode::Copy).unwrap();
            let (_, from) = l.a.recv_from(&mut buf).unwrap();
            let port = *ports.entry(sport).or_insert(from.port());
            assert_eq!(
                port,
                from.port(),
                "flow {sport} changed source port in round {round}"
            );
        }
    }
    let distinct: std::collections::HashSet<u16> = ports.values().copied().collect();
    assert!(
        distinct.len() >= 2,
        "32 flows all left from one source port: {distinct:?}"
    );
    assert!(
        distinct.iter().all(|p| *p != l.local.port()),
        "not from the VXLAN port"
    );
}

#[test]
fn without_lend_tso_a_tso_frame_is_copied_and_whole_frames_are_still_lent() {
    let (a, b) = (vtep("127.0.0.2"), vtep("127.0.0.3"));
    let mut vx = open(&VxlanConfig {
        vni: vni(),
        local: "127.0.0.1:0".parse().unwrap(),
        remotes: vec![a.local_addr().unwrap(), b.local_addr().unwrap()],
        statics: Vec::new(),
        ageing: Duration::from_secs(300),
        queue_pairs: 1,
        zerocopy: true,
        lend_tso: false,
    })
    .unwrap();
    let att = &mut vx.pairs[0];
    let spec = TcpFrame::new(false, 60_000);
    assert_eq!(
        send(att, spec.vnet(1448), &spec.build(), 4096, SendMode::Lend).unwrap(),
        Sent::Copied
    );
    let plain = eth([0xff; 6], GUEST, 20_000, 1);
    assert!(matches!(
        send(att, VnetHdr::default(), &plain, 4096, SendMode::Lend).unwrap(),
        Sent::Lent { .. }
    ));
    assert_eq!(att.plan_holds.held(), 0);
    reap_ids(att, 2);
}
