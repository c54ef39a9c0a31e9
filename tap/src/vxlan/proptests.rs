//! Property tests: whatever a guest or a remote sends, the parsers and the
//! segmenter return an answer and never panic; for well-formed frames,
//! segmenting then verifying every segment against the references always
//! checks out.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::csum::{Csum, PayloadSum};
use super::ether::MacAddr;
use super::fdb::{Fdb, FdbConfig, Learning};
use super::flow_hash::{FlowHasher, FlowKey, PortRange};
use super::header::{decapsulate, encode, DropReason, Underlay, Vni};
use super::layout::MAX_HEADERS_LEN;
use super::partial_csum::complete_checksum;
use super::segment::{TsoLimits, TsoPlan, UDP_MAX_SEGMENTS};
use super::testutil::{naive_sum, pattern, verify_plan, TcpFrame};
use crate::vnet_hdr::{VnetHdr, F_NEEDS_CSUM};

fn underlay() -> impl Strategy<Value = Underlay> {
    prop_oneof![Just(Underlay::Ipv4), Just(Underlay::Ipv6)]
}

/// Any header, with the interesting GSO types and flags made likely.
fn any_vnet() -> impl Strategy<Value = VnetHdr> {
    let gso_type = prop_oneof![0u8..=5, Just(0x81u8), Just(0x84u8), any::<u8>()];
    let small = prop_oneof![0u16..200, any::<u16>()];
    (
        any::<u8>(),
        gso_type,
        small.clone(),
        prop_oneof![1u16..2000, any::<u16>()],
        small.clone(),
        small,
    )
        .prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VnetHdr {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
            },
        )
}

/// A well-formed TCP frame as a guest builds it for TSO.
fn tcp_frame(max_payload: usize) -> impl Strategy<Value = TcpFrame> {
    (
        any::<bool>(),
        proptest::option::of(0u16..4096),
        0usize..=10,
        any::<u8>(),
        any::<u32>(),
        any::<u16>(),
        0..=max_payload,
        any::<u8>(),
    )
        .prop_map(
            |(v6, vlan, options, flags, seq, ip_id, len, seed)| TcpFrame {
                v6,
                vlan,
                options: options * 4,
                flags,
                seq,
                ip_id,
                payload: pattern(len, seed),
            },
        )
}

/// A valid frame with some header bytes overwritten: reaches every check.
fn mangled_frame() -> impl Strategy<Value = (TcpFrame, Vec<u8>)> {
    (
        tcp_frame(3000),
        proptest::collection::vec((0usize..MAX_HEADERS_LEN, any::<u8>()), 0..4),
    )
        .prop_map(|(spec, edits)| {
            let mut f = spec.build();
            for (at, b) in edits {
                if let Some(x) = f.get_mut(at) {
                    *x = b;
                }
            }
            (spec, f)
        })
}

fn check_plan_shape(plan: &TsoPlan, frame_len: usize, limits: TsoLimits) {
    assert!(!plan.is_empty());
    let first = plan.segment(0).unwrap();
    let stride = first.header.len();
    let mut next = first.payload.0;
    for s in plan.iter() {
        assert_eq!(s.header.len(), stride);
        assert_eq!(s.payload.0, next, "payloads are contiguous");
        next += s.payload.1;
        assert!(s.header.len() + s.payload.1 <= plan.gso_size());
        assert!(plan.gso_size() <= limits.max_datagram());
    }
    assert_eq!(next, frame_len, "payloads end at the frame's end");
    let mut covered = 0;
    for b in plan.batches() {
        assert_eq!(b.start, covered);
        assert!(!b.is_empty() && b.len() <= UDP_MAX_SEGMENTS);
        covered = b.end;
    }
    assert_eq!(covered, plan.len());
}

proptest! {
    #[test]
    fn decapsulation_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40),
                                  len in prop_oneof![0usize..64, any::<usize>()],
                                  vni in 0u32..=Vni::MAX) {
        let ours = Vni::new(vni).unwrap();
        match decapsulate(&bytes, len, ours) {
            Ok(inner) => {
                prop_assert_eq!(inner, 8..len);
                prop_assert!(len >= 8 + 14);
                prop_assert_eq!(&bytes[..8], &encode(ours)[..]);
            }
            Err(r) => prop_assert!(DropReason::ALL.contains(&r)),
        }
    }

    #[test]
    fn our_own_datagrams_always_decapsulate(vni in 0u32..=Vni::MAX, inner in 14usize..70000) {
        let v = Vni::new(vni).unwrap();
        prop_assert_eq!(decapsulate(&encode(v), 8 + inner, v), Ok(8..8 + inner));
    }

    #[test]
    fn segmenting_arbitrary_input_never_panics(vnet in any_vnet(),
                                               headers in proptest::collection::vec(any::<u8>(), 0..200),
                                               frame_len in prop_oneof![0usize..300, 0usize..70000],
                                               prefix in proptest::collection::vec(any::<u8>(), 0..16),
                                               underlay in underlay(),
                                               mtu in prop_oneof![1200usize..9001, any::<usize>()]) {
        let limits = TsoLimits { underlay, underlay_mtu: mtu };
        let mut plan = TsoPlan::new();
        if plan.plan(&vnet, &headers, frame_len, &headers[..], &prefix, limits).is_ok() {
            check_plan_shape(&plan, frame_len, limits);
        } else {
            prop_assert!(plan.is_empty());
        }
    }

    #[test]
    fn segmenting_mangled_frames_never_panics((spec, frame) in mangled_frame(),
                                              vnet in any_vnet(),
                                              honest in any::<bool>(),
                                              mss in 1u16..3000) {
        let vnet = if honest { spec.vnet(mss) } else { vnet };
        let limits = TsoLimits { underlay: Underlay::Ipv4, underlay_mtu: 9000 };
        let mut plan = TsoPlan::new();
        if plan.plan(&vnet, &frame, frame.len(), &frame[..], &[8; 8], limits).is_ok() {
            check_plan_shape(&plan, frame.len(), limits);
        }
    }

    #[test]
    fn valid_frames_segment_and_verify(spec in tcp_frame(20000),
                                       mss in 64u16..=9000,
                                       underlay in underlay(),
                                       vxlan in any::<bool>()) {
        let frame = spec.build();
        let prefix = if vxlan { encode(Vni::new(7).unwrap()).to_vec() } else { Vec::new() };
        let limits = TsoLimits { underlay, underlay_mtu: 65535 };
        let mut plan = TsoPlan::new();
        plan.plan(&spec.vnet(mss), &frame[..MAX_HEADERS_LEN.min(frame.len())], frame.len(),
                  &frame[..], &prefix, limits).unwrap();
        verify_plan(&plan, &spec, &frame, &prefix, usize::from(mss));
        check_plan_shape(&plan, frame.len(), limits);
    }

    #[test]
    fn completing_a_checksum_never_panics(vnet in any_vnet(),
                                          head in proptest::collection::vec(any::<u8>(), 0..300),
                                          frame_len in 0usize..70000,
                                          prefix in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut out = Vec::new();
        if let Ok(n) = complete_checksum(&vnet, &head, frame_len, &head[..], &prefix, &mut out) {
            prop_assert_eq!(out.len(), prefix.len() + n);
            prop_assert!(n <= frame_len);
        }
    }

    #[test]
    fn completed_checksums_match_the_naive_sum(frame in proptest::collection::vec(any::<u8>(), 2..3000),
                                               start in any::<prop::sample::Index>(),
                                               offset in any::<prop::sample::Index>()) {
        let len = frame.len();
        let start = start.index(len - 1);
        let offset = offset.index(len - 1 - start);
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: start as u16,
            csum_offset: offset as u16,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        let n = complete_checksum(&vnet, &frame, len, &frame[..], &[], &mut out).unwrap();
        prop_assert_eq!(n, start + offset + 2);
        let stored = u16::from_be_bytes([out[start + offset], out[start + offset + 1]]);
        let want = match !naive_sum(&frame[start..]) { 0 => 0xffff, v => v };
        prop_assert_eq!(stored, want);
        prop_assert_eq!(&out[..start + offset], &frame[..start + offset]);
    }

    #[test]
    fn sums_from_pieces_equal_the_naive_sum(data in proptest::collection::vec(any::<u8>(), 0..2000),
                                            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
        cuts.push(0);
        cuts.push(data.len());
        cuts.sort_unstable();
        let mut c = Csum::new();
        for (k, w) in cuts.windows(2).enumerate() {
            let (a, b) = (w[0], w[1]);
            if k % 2 == 0 {
                c.add(&data[a..b]);
            } else {
                c.add_partial(data.sum(a, b - a), b - a);
            }
        }
        let want = naive_sum(&data);
        // 0 and 0xffff are the same ones'-complement number.
        prop_assert!(c.fold() == want || (c.fold() | want) == 0xffff && (c.fold() & want) == 0);
    }

    #[test]
    fn flow_hashing_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..120), seed in any::<u64>()) {
        let h = FlowHasher::new(seed, PortRange::DYNAMIC);
        let p = h.source_port(&frame);
        prop_assert!(p >= 49152);
        prop_assert_eq!(h.source_port(&frame), p);
        let _ = FlowKey::of(&frame);
    }

    #[test]
    fn the_fdb_stays_within_its_cap(ops in proptest::collection::vec((any::<u8>(), any::<u8>(), 0u64..1000, any::<bool>()), 0..300),
                                    cap in 0usize..20) {
        let t0 = Instant::now();
        let remotes: Vec<SocketAddr> = (1..=4).map(|i| SocketAddr::new(IpAddr::from([192, 0, 2, i]), 4789)).collect();
        let mut f = Fdb::new(&remotes, FdbConfig { max_learned: cap, learning: Learning::FromAnyVtep, ..FdbConfig::default() });
        let mut now = t0;
        for (m, ip, dt, expire) in ops {
            now += Duration::from_secs(dt);
            f.learn(MacAddr([m & 0xfe, 0, 0, 0, 0, m]), IpAddr::from([192, 0, 2, ip]), now);
            if expire {
                f.expire(now);
            }
            prop_assert!(f.learned() <= cap);
            let _ = f.lookup(MacAddr([m, 1, 2, 3, 4, 5]), now);
        }
    }
}
