//! Tests of TSO planning ([`super::segment`]) and of checksum offload for
//! whole frames ([`super::partial_csum`]), against the references in
//! [`super::testutil`].

use zcnet_harness::alloc::allocations;

use super::header::{encode, Underlay, Vni};
use super::layout::{IpVersion, LayoutError, MAX_HEADERS_LEN};
use super::partial_csum::{complete_checksum, CsumError};
use super::segment::{SegmentError, TsoLimits, TsoPlan, MAX_FRAME_SEGMENTS, UDP_MAX_SEGMENTS};
use super::testutil::{naive_sum, pattern, verify_plan, TcpFrame, ACK, CWR, FIN, PSH};
use crate::vnet_hdr::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV6, GSO_UDP_L4};

const JUMBO_V4: TsoLimits = TsoLimits {
    underlay: Underlay::Ipv4,
    underlay_mtu: 9000,
};

fn vxlan_prefix() -> [u8; 8] {
    encode(Vni::new(4242).unwrap())
}

/// Plans `spec` with MSS `mss` and checks the result against the
/// references; returns the plan.
fn plan_and_verify(spec: &TcpFrame, mss: u16, limits: TsoLimits) -> TsoPlan {
    let frame = spec.build();
    let prefix = vxlan_prefix();
    let mut plan = TsoPlan::new();
    let head = &frame[..MAX_HEADERS_LEN.min(frame.len())];
    plan.plan(
        &spec.vnet(mss),
        head,
        frame.len(),
        &frame[..],
        &prefix,
        limits,
    )
    .unwrap();
    verify_plan(&plan, spec, &frame, &prefix, usize::from(mss));
    plan
}

#[test]
fn a_64k_ipv4_frame_with_mss_1448() {
    let mut spec = TcpFrame::new(false, 65536 - 14 - 20 - 32);
    spec.flags = ACK | PSH | FIN;
    // MSS 1448 with timestamps makes 1514-byte inner frames: an underlay
    // MTU of exactly 1550 carries them.
    let limits = TsoLimits {
        underlay: Underlay::Ipv4,
        underlay_mtu: 1550,
    };
    let plan = plan_and_verify(&spec, 1448, limits);
    assert_eq!(plan.len(), 46);
    assert_eq!(plan.gso_size(), 8 + 66 + 1448);
    let last = plan.segment(45).unwrap();
    assert_eq!(last.payload, (66 + 45 * 1448, 65470 - 45 * 1448));
    assert!(plan.segment(46).is_none());
}

#[test]
fn a_64k_ipv6_frame_with_mss_1448() {
    let mut spec = TcpFrame::new(true, 65536 - 14 - 40 - 32);
    spec.flags = ACK | PSH | FIN | CWR;
    let limits = TsoLimits {
        underlay: Underlay::Ipv6,
        underlay_mtu: 14 + 40 + 32 + 1448 + 70 - 14,
    };
    let plan = plan_and_verify(&spec, 1448, limits);
    assert_eq!(plan.len(), 46);
}

#[test]
fn odd_mss_odd_payload_and_a_vlan_tag() {
    for v6 in [false, true] {
        let mut spec = TcpFrame::new(v6, 65001);
        spec.vlan = Some(100);
        spec.options = 0;
        spec.flags = ACK | FIN;
        let plan = plan_and_verify(&spec, 1001, JUMBO_V4);
        assert_eq!(plan.len(), 65);
        // Payload offsets alternate between even and odd.
        assert_eq!(plan.segment(1).unwrap().payload.0 % 2, 1);
    }
}

#[test]
fn sequence_numbers_and_ipv4_ids_wrap() {
    let mut spec = TcpFrame::new(false, 10_000);
    spec.seq = u32::MAX - 3000;
    spec.ip_id = u16::MAX - 2;
    spec.options = 40;
    plan_and_verify(&spec, 1000, JUMBO_V4);
}

#[test]
fn cwr_only_on_the_first_segment_fin_psh_only_on_the_last() {
    let mut spec = TcpFrame::new(false, 5000);
    spec.flags = ACK | PSH | FIN | CWR;
    let plan = plan_and_verify(&spec, 1000, JUMBO_V4);
    let l4 = 8 + spec.l4();
    let flags: Vec<u8> = plan.iter().map(|s| s.header[l4 + 13]).collect();
    assert_eq!(flags, [ACK | CWR, ACK, ACK, ACK, ACK | PSH | FIN]);
}

#[test]
fn frames_of_one_segment_and_of_none() {
    // Payload no longer than the MSS: one segment, the whole frame.
    let spec = TcpFrame::new(false, 700);
    let plan = plan_and_verify(&spec, 1448, JUMBO_V4);
    assert_eq!((plan.len(), plan.gso_size()), (1, 8 + 66 + 700));
    assert_eq!(plan.batches(), std::slice::from_ref(&(0..1)));
    // No payload at all: one segment of headers.
    let spec = TcpFrame::new(true, 0);
    let plan = plan_and_verify(&spec, 1448, JUMBO_V4);
    assert_eq!((plan.len(), plan.segment(0).unwrap().payload), (1, (86, 0)));
    // Exactly two full segments.
    let plan = plan_and_verify(&TcpFrame::new(false, 2896), 1448, JUMBO_V4);
    assert_eq!(plan.len(), 2);
}

#[test]
fn batches_fit_the_kernels_limits() {
    let check = |plan: &TsoPlan, underlay: Underlay| {
        for b in plan.batches() {
            assert!(!b.is_empty() && b.len() <= UDP_MAX_SEGMENTS);
            let bytes: usize = b
                .clone()
                .map(|i| {
                    let s = plan.segment(i).unwrap();
                    s.header.len() + s.payload.1
                })
                .sum();
            assert!(
                bytes <= underlay.max_udp_payload(),
                "{bytes} bytes in one send"
            );
            // The kernel cuts at gso_size: all but the batch's last datagram
            // must be exactly that long.
            for i in b.start..b.end - 1 {
                let s = plan.segment(i).unwrap();
                assert_eq!(s.header.len() + s.payload.1, plan.gso_size());
            }
        }
    };
    // A full-size frame outgrows one send once each segment has headers:
    // 46 segments of 1522 bytes is 70012.
    let limits = TsoLimits {
        underlay: Underlay::Ipv4,
        underlay_mtu: 1550,
    };
    let plan = plan_and_verify(&TcpFrame::new(false, 65470), 1448, limits);
    assert_eq!(plan.batches(), [0..43, 43..46]);
    check(&plan, Underlay::Ipv4);
    // A small MSS hits the segment count first.
    let plan = plan_and_verify(&TcpFrame::new(false, 65470), 500, JUMBO_V4);
    assert_eq!(plan.batches(), [0..64, 64..128, 128..131]);
    check(&plan, Underlay::Ipv4);
    // A jumbo MSS: few segments, bytes decide.
    let jumbo6 = TsoLimits {
        underlay: Underlay::Ipv6,
        underlay_mtu: 9000,
    };
    let plan = plan_and_verify(&TcpFrame::new(true, 65430), 8800, jumbo6);
    check(&plan, Underlay::Ipv6);
    assert_eq!(plan.batches().len(), 2);
}

#[test]
fn an_mss_the_underlay_cannot_carry_is_refused() {
    let spec = TcpFrame::new(false, 65470);
    let frame = spec.build();
    let mut plan = TsoPlan::new();
    let limits = TsoLimits {
        underlay: Underlay::Ipv4,
        underlay_mtu: 1549,
    };
    let r = plan.plan(
        &spec.vnet(1448),
        &frame,
        frame.len(),
        &frame[..],
        &vxlan_prefix(),
        limits,
    );
    assert_eq!(
        r,
        Err(SegmentError::SegmentTooBig {
            datagram: 8 + 66 + 1448,
            mss: 1448,
            max: 1549 - 28,
        })
    );
    assert!(plan.is_empty() && plan.batches().is_empty());
    // The guest MTU that the underlay gives (1500 - 50) makes MSS 1398
    // with timestamps, which fits.
    let limits = TsoLimits {
        underlay: Underlay::Ipv4,
        underlay_mtu: 1500,
    };
    let mss = Underlay::Ipv4.inner_mtu(1500).unwrap() - 20 - 32;
    assert_eq!(mss, 1398);
    plan.plan(
        &spec.vnet(mss as u16),
        &frame,
        frame.len(),
        &frame[..],
        &vxlan_prefix(),
        limits,
    )
    .unwrap();
    // A VLAN tag takes 4 of those bytes.
    let mut tagged = spec.clone();
    tagged.vlan = Some(5);
    let frame = tagged.build();
    assert!(matches!(
        plan.plan(
            &tagged.vnet(mss as u16),
            &frame,
            frame.len(),
            &frame[..],
            &vxlan_prefix(),
            limits
        ),
        Err(SegmentError::SegmentTooBig { .. })
    ));
}

#[test]
fn header_lies_are_refused() {
    let spec = TcpFrame::new(false, 3000);
    let frame = spec.build();
    let good = spec.vnet(1000);
    let plan = |vnet: VnetHdr, headers: &[u8], frame_len: usize| {
        TsoPlan::new().plan(&vnet, headers, frame_len, &frame[..], &[], JUMBO_V4)
    };
    let len = frame.len();
    assert_eq!(plan(good, &frame, len), Ok(()));

    let none = VnetHdr {
        gso_type: 0,
        ..good
    };
    assert_eq!(plan(none, &frame, len), Err(SegmentError::NotTso(0)));
    let uso = VnetHdr {
        gso_type: GSO_UDP_L4,
        ..good
    };
    assert_eq!(plan(uso, &frame, len), Err(SegmentError::NotTso(5)));
    let zero = VnetHdr {
        gso_size: 0,
        ..good
    };
    assert_eq!(plan(zero, &frame, len), Err(SegmentError::ZeroGsoSize));
    let long = VnetHdr {
        hdr_len: len as u16 + 1,
        ..good
    };
    assert!(matches!(
        plan(long, &frame, len),
        Err(SegmentError::HdrLenBeyondFrame { .. })
    ));
    // hdr_len is only a hint: smaller than the headers is fine (Linux
    // guests send their linear length, which may be larger, too).
    assert_eq!(plan(VnetHdr { hdr_len: 0, ..good }, &frame, len), Ok(()));

    let v6 = VnetHdr {
        gso_type: GSO_TCPV6,
        ..good
    };
    assert_eq!(
        plan(v6, &frame, len),
        Err(SegmentError::Layout(LayoutError::VersionMismatch {
            expected: IpVersion::V6,
            found: "IPv4",
        }))
    );
    let wrong_csum = VnetHdr {
        csum_offset: 6,
        ..good
    };
    assert!(matches!(
        plan(wrong_csum, &frame, len),
        Err(SegmentError::CsumNotTcp { .. })
    ));
    let wrong_start = VnetHdr {
        csum_start: 14,
        ..good
    };
    assert!(matches!(
        plan(wrong_start, &frame, len),
        Err(SegmentError::CsumNotTcp { .. })
    ));
    // Without NEEDS_CSUM the offsets are not looked at; checksums are
    // computed all the same.
    let no_csum = VnetHdr {
        flags: 0,
        csum_start: 0,
        csum_offset: 0,
        ..good
    };
    assert_eq!(plan(no_csum, &frame, len), Ok(()));

    // Headers given short, or a frame too short for its headers.
    assert_eq!(
        plan(good, &frame[..60], len),
        Err(SegmentError::Layout(LayoutError::Truncated {
            need: 66,
            have: 60
        }))
    );
    assert_eq!(
        plan(VnetHdr { hdr_len: 0, ..good }, &frame, 50),
        Err(SegmentError::Layout(LayoutError::BeyondFrame {
            hdr_len: 54,
            frame_len: 50
        }))
    );

    let mut f = frame.clone();
    f[14] = 0x46; // IPv4 options
    assert_eq!(
        plan(good, &f, len),
        Err(SegmentError::Layout(LayoutError::Ipv4HeaderLen { ihl: 6 }))
    );
    let mut f = frame.clone();
    f[14 + 6] = 0x20; // MF
    assert_eq!(
        plan(good, &f, len),
        Err(SegmentError::Layout(LayoutError::Ipv4Fragment))
    );
    let mut f = frame.clone();
    f[14 + 9] = 17;
    assert_eq!(
        plan(good, &f, len),
        Err(SegmentError::Layout(LayoutError::NotTcp { protocol: 17 }))
    );
    let mut f = frame.clone();
    f[34 + 12] = 0x40; // TCP data offset 4
    assert_eq!(
        plan(good, &f, len),
        Err(SegmentError::Layout(LayoutError::TcpHeaderLen {
            data_offset: 4
        }))
    );
    let mut f = frame.clone();
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(
        plan(good, &f, len),
        Err(SegmentError::Layout(LayoutError::Ethertype(0x0806)))
    );
    let mut f = frame.clone();
    f[14] = 0x65; // IPv6 in the version nibble behind an IPv4 EtherType
    assert!(matches!(
        plan(good, &f, len),
        Err(SegmentError::Layout(LayoutError::VersionMismatch { .. }))
    ));

    let mut v6spec = TcpFrame::new(true, 3000);
    let v6frame = v6spec.build();
    let mut f = v6frame.clone();
    f[14 + 6] = 0; // hop-by-hop options
    let r = TsoPlan::new().plan(&v6spec.vnet(1000), &f, f.len(), &f[..], &[], JUMBO_V4);
    assert_eq!(
        r,
        Err(SegmentError::Layout(LayoutError::Ipv6ExtensionHeaders {
            next_header: 0
        }))
    );
    v6spec.vlan = Some(1);
    let f = v6spec.build();
    let r = TsoPlan::new().plan(&v6spec.vnet(1000), &f[..17], f.len(), &f[..], &[], JUMBO_V4);
    assert_eq!(
        r,
        Err(SegmentError::Layout(LayoutError::Truncated {
            need: 18,
            have: 17
        }))
    );
}

#[test]
fn a_tiny_mss_is_refused_before_any_work() {
    let spec = TcpFrame::new(false, 65470);
    let frame = spec.build();
    let r = TsoPlan::new().plan(
        &spec.vnet(1),
        &frame,
        frame.len(),
        &frame[..],
        &[],
        JUMBO_V4,
    );
    assert_eq!(
        r,
        Err(SegmentError::TooManySegments {
            segments: 65470,
            mss: 1,
            max: MAX_FRAME_SEGMENTS,
        })
    );
    // 64 bytes is the smallest MSS a full frame may use.
    let r = TsoPlan::new().plan(
        &spec.vnet(64),
        &frame,
        frame.len(),
        &frame[..],
        &[],
        JUMBO_V4,
    );
    assert_eq!(r, Ok(()));
}

#[test]
fn planning_allocates_nothing_after_warm_up() {
    let prefix = vxlan_prefix();
    let big = TcpFrame::new(false, 65470);
    let big_frame = big.build();
    let mut spec6 = TcpFrame::new(true, 40_000);
    spec6.vlan = Some(3);
    let frame6 = spec6.build();
    // Each frame whole in one slice (headers and payload), behind the prefix.
    let plan_whole = |plan: &mut TsoPlan, vnet: &VnetHdr, frame: &[u8]| {
        plan.plan(vnet, frame, frame.len(), frame, &prefix, JUMBO_V4)
    };
    let mut plan = TsoPlan::new();
    // Warm-up: the largest frame grows the buffers.
    plan_whole(&mut plan, &big.vnet(500), &big_frame).unwrap();
    let n = allocations(|| {
        for _ in 0..3 {
            plan_whole(&mut plan, &big.vnet(1448), &big_frame).unwrap();
            plan_whole(&mut plan, &spec6.vnet(1000), &frame6).unwrap();
            let _ = plan_whole(&mut plan, &big.vnet(0), &big_frame);
        }
    });
    assert_eq!(n, 0);
    // Sized up front, even the first frame allocates nothing.
    let mut plan = TsoPlan::with_capacity(MAX_FRAME_SEGMENTS, 8 + MAX_HEADERS_LEN);
    let n = allocations(|| plan_whole(&mut plan, &big.vnet(64), &big_frame).unwrap());
    assert_eq!(n, 0);
}

/// A UDP/IPv4 frame as a guest sends it with NEEDS_CSUM: the checksum
/// field holds the pseudo-header's sum.
fn udp4_frame(payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x13, 0x88, 0x00, 0x35]);
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let mut pseudo = f[26..34].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&naive_sum(&pseudo).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn csum_vnet(csum_start: u16, csum_offset: u16) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start,
        csum_offset,
        ..VnetHdr::default()
    }
}

/// Sends `out` then `frame[n..]`, as the attachment would.
fn reassemble(out: &[u8], prefix_len: usize, frame: &[u8], n: usize) -> Vec<u8> {
    let mut whole = out[prefix_len..].to_vec();
    whole.extend_from_slice(&frame[n..]);
    whole
}

#[test]
fn whole_frames_get_their_checksum_in_a_copied_prefix() {
    let prefix = vxlan_prefix();
    let mut out = Vec::new();

    // TCP over IPv4 and IPv6, odd payload lengths, with and without a tag.
    for v6 in [false, true] {
        for len in [0, 1, 999, 1400] {
            let mut spec = TcpFrame::new(v6, len);
            spec.vlan = (len % 2 == 1).then_some(7);
            let frame = spec.build();
            let vnet = VnetHdr {
                gso_type: 0,
                ..spec.vnet(0)
            };
            let head = &frame[..MAX_HEADERS_LEN.min(frame.len())];
            let n =
                complete_checksum(&vnet, head, frame.len(), &frame[..], &prefix, &mut out).unwrap();
            assert_eq!(n, spec.l4() + 18);
            assert_eq!(&out[..8], prefix);
            let whole = reassemble(&out, 8, &frame, n);
            let p = etherparse::SlicedPacket::from_ethernet(&whole).unwrap();
            let Some(etherparse::TransportSlice::Tcp(tcp)) = &p.transport else {
                panic!("no TCP");
            };
            let want = match &p.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => tcp
                    .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                    .unwrap(),
                Some(etherparse::NetSlice::Ipv6(ip)) => tcp
                    .calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                    .unwrap(),
                _ => panic!("not IP"),
            };
            assert_eq!(tcp.checksum(), want, "v6 {v6}, {len} bytes");
            // Nothing but the checksum field differs from the guest's frame.
            let field = spec.l4() + 16;
            assert_eq!(whole[..field], frame[..field]);
            assert_eq!(whole[field + 2..], frame[field + 2..]);
        }
    }

    // UDP over IPv4.
    let frame = udp4_frame(&pattern(333, 9));
    let n = complete_checksum(
        &csum_vnet(34, 6),
        &frame,
        frame.len(),
        &frame[..],
        &[],
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 42);
    let whole = reassemble(&out, 0, &frame, n);
    let p = etherparse::SlicedPacket::from_ethernet(&whole).unwrap();
    let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(udp))) =
        (&p.net, &p.transport)
    else {
        panic!("not UDP/IPv4");
    };
    let want = udp
        .to_header()
        .calc_checksum_ipv4_raw(
            ip.header().source(),
            ip.header().destination(),
            udp.payload(),
        )
        .unwrap();
    assert_eq!(udp.checksum(), want);
}

#[test]
fn a_udp_checksum_of_zero_is_sent_as_ffff() {
    // Pick the last two payload bytes so that the checksum comes out 0.
    let mut payload = pattern(100, 3);
    payload[98] = 0;
    payload[99] = 0;
    let frame = udp4_frame(&payload);
    let pseudo_and_rest = {
        let mut v = frame[34..40].to_vec();
        v.extend_from_slice(&frame[40..42]); // the guest's pseudo-header sum
        v.extend_from_slice(&frame[42..]);
        naive_sum(&v)
    };
    // Adding w = !sum makes the total 0xffff, so the checksum is 0.
    let w = !pseudo_and_rest;
    payload[98..100].copy_from_slice(&w.to_be_bytes());
    let frame = udp4_frame(&payload);
    let mut out = Vec::new();
    let n = complete_checksum(
        &csum_vnet(34, 6),
        &frame,
        frame.len(),
        &frame[..],
        &[],
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[40..42], [0xff, 0xff]);
    // And it verifies: the whole UDP segment plus pseudo-header sums to 0xffff.
    let whole = reassemble(&out, 0, &frame, n);
    let mut flat = whole[26..34].to_vec();
    flat.extend_from_slice(&[0, 17]);
    flat.extend_from_slice(&whole[38..40]);
    flat.extend_from_slice(&whole[34..]);
    assert_eq!(naive_sum(&flat), 0xffff);
}

#[test]
fn odd_checksum_offsets_still_add_up() {
    // A guest may put the field anywhere; the sum from csum_start to the
    // end, field included, must still come out as if done in one piece.
    let frame = pattern(501, 77);
    let mut out = Vec::new();
    for (start, offset) in [(15u16, 3u16), (14, 16), (1, 0), (0, 499), (20, 31)] {
        let n = complete_checksum(
            &csum_vnet(start, offset),
            &frame,
            frame.len(),
            &frame[..],
            &[],
            &mut out,
        )
        .unwrap();
        let whole = reassemble(&out, 0, &frame, n);
        let s = usize::from(start);
        let f = s + usize::from(offset);
        let stored = u16::from_be_bytes([whole[f], whole[f + 1]]);
        let want = match !naive_sum(&frame[s..]) {
            0 => 0xffff,
            v => v,
        };
        assert_eq!(stored, want, "start {start} offset {offset}");
    }
}

#[test]
fn checksum_offload_lies_are_refused() {
    let frame = udp4_frame(&pattern(50, 1));
    let mut out = Vec::new();
    let len = frame.len();
    assert_eq!(
        complete_checksum(&csum_vnet(34, 60), &frame, len, &frame[..], &[], &mut out),
        Err(CsumError::OutsideFrame {
            csum_start: 34,
            csum_offset: 60,
            frame_len: len
        })
    );
    assert_eq!(
        complete_checksum(
            &csum_vnet(u16::MAX, u16::MAX),
            &frame,
            len,
            &frame[..],
            &[],
            &mut out
        ),
        Err(CsumError::OutsideFrame {
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            frame_len: len
        })
    );
    assert_eq!(
        complete_checksum(
            &csum_vnet(34, 6),
            &frame[..30],
            len,
            &frame[..],
            &[],
            &mut out
        ),
        Err(CsumError::Truncated { need: 42, have: 30 })
    );
    let gso = VnetHdr {
        gso_type: 1,
        ..csum_vnet(34, 6)
    };
    assert_eq!(
        complete_checksum(&gso, &frame, len, &frame[..], &[], &mut out),
        Err(CsumError::GsoFrame(1))
    );
    // No NEEDS_CSUM: nothing to copy.
    let plain = VnetHdr::default();
    assert_eq!(
        complete_checksum(&plain, &frame, len, &frame[..], &[1, 2], &mut out),
        Ok(0)
    );
    assert_eq!(out, [1, 2]);
}
