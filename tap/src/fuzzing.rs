//! Entry points for zcnet's fuzz targets (`backend/fuzz/`) and for the
//! tests that replay their committed corpus on stable
//! (`backend/tests/fuzz_corpus.rs`). Not an interface for anything else:
//! it exists so the parsers below can stay private to this crate.
//!
//! Each function takes the fuzzer's bytes, decodes them with
//! [`arbitrary::Unstructured`] using fixed-size fields only (integers are
//! little endian; a field past the end of the input reads as zeros), so a
//! seed can be written by hand; the layout is in each function's doc. It
//! drives one parser and panics only when an invariant of that parser
//! breaks, which the fuzzer reports as a crash.

use std::io::{self, Read};

use arbitrary::Unstructured;

use crate::stream::records::{Next, RecordBuf, PREFIX_LEN};
use crate::vnet_hdr::{
    VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4,
    MAX_FRAME_LEN,
};
use crate::vxlan::header::{VXLAN_FLAG_I, VXLAN_HEADER_LEN};
use crate::vxlan::layout::MAX_HEADERS_LEN;
use crate::vxlan::segment::UDP_MAX_SEGMENTS;
use crate::vxlan::{decapsulate, TsoLimits, TsoPlan, Underlay, Vni};
use crate::Offloads;

fn u8_(u: &mut Unstructured) -> u8 {
    u.arbitrary().unwrap_or(0)
}

fn u16_(u: &mut Unstructured) -> u16 {
    u.arbitrary().unwrap_or(0)
}

fn u32_(u: &mut Unstructured) -> u32 {
    u.arbitrary().unwrap_or(0)
}

fn array<const N: usize>(u: &mut Unstructured) -> [u8; N] {
    let mut a = [0u8; N];
    // Zero-fills what the input lacks.
    let _ = u.fill_buffer(&mut a);
    a
}

/// The TX virtio-net header check (`vnet_hdr.rs`).
///
/// Layout: the guest's 10 header bytes; `u32` frame length (taken modulo
/// twice the largest frame, so lengths past the limit are tried too);
/// `u8` of negotiated offloads (bit 0 CSUM, 1 TSO4, 2 TSO6, 3 TSO ECN,
/// 4 UFO, 5 USO4, 6 USO6).
///
/// Checks: parsing and writing round-trip; an accepted header is one the
/// tap takes (only NEEDS_CSUM, a checksum inside the frame, a negotiated
/// GSO type with a non-zero size, `hdr_len` inside the frame and covering
/// the checksum), and checking it again returns it unchanged.
pub fn vnet_hdr(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let raw: [u8; VnetHdr::FIELDS_LEN] = array(&mut u);
    let frame_len = u32_(&mut u) as usize % (2 * MAX_FRAME_LEN + 1);
    let bits = u8_(&mut u);
    let tx = Offloads {
        csum: bits & 1 != 0,
        tso4: bits & 2 != 0,
        tso6: bits & 4 != 0,
        tso_ecn: bits & 8 != 0,
        ufo: bits & 16 != 0,
        uso4: bits & 32 != 0,
        uso6: bits & 64 != 0,
    };
    let h = VnetHdr::parse(&raw);
    assert_eq!(h.to_bytes()[..VnetHdr::FIELDS_LEN], raw, "round trip");
    let Ok(out) = h.validate(frame_len, &tx) else {
        return;
    };
    assert_eq!(out.flags & !F_NEEDS_CSUM, 0, "{out:?}");
    let csum_end = if out.needs_csum() {
        assert!(tx.csum, "NEEDS_CSUM without CSUM: {out:?}");
        let end = usize::from(out.csum_start) + usize::from(out.csum_offset) + 2;
        assert!(end <= frame_len, "checksum outside the frame: {out:?}");
        end
    } else {
        assert_eq!((out.csum_start, out.csum_offset), (0, 0), "{out:?}");
        0
    };
    if out.gso() == GSO_NONE {
        assert_eq!(
            (out.gso_type, out.gso_size, out.hdr_len),
            (0, 0, 0),
            "{out:?}"
        );
    } else {
        let allowed = match out.gso() {
            GSO_TCPV4 => tx.tso4,
            GSO_TCPV6 => tx.tso6,
            GSO_UDP => tx.ufo,
            GSO_UDP_L4 => tx.uso4 && tx.uso6,
            _ => false,
        };
        assert!(allowed, "GSO type not negotiated: {out:?}");
        assert!(out.gso_type & GSO_ECN == 0 || tx.tso_ecn, "{out:?}");
        assert_ne!(out.gso_size, 0, "{out:?}");
        assert!(usize::from(out.hdr_len) <= frame_len, "{out:?}");
        assert!(usize::from(out.hdr_len) >= csum_end, "{out:?}");
    }
    assert_eq!(out.validate(frame_len, &tx), Ok(out), "not a fixed point");
}

/// Feeds `bytes` in reads of the sizes in `steps` (cycled), then reports
/// `WouldBlock`.
struct Trickle<'a> {
    bytes: &'a [u8],
    steps: &'a [u8],
    next: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.bytes.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let step = self.steps.get(self.next % self.steps.len().max(1));
        self.next += 1;
        // A step of 0 reads as much as fits.
        let want = match step {
            Some(&s) if s > 0 => usize::from(s),
            _ => usize::MAX,
        };
        let n = want.min(out.len()).min(self.bytes.len());
        out[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// The stream attachment's record parser (`stream/records.rs`).
///
/// Layout: `u16` largest body (modulo 4096); 8 read sizes (`u8` each, 0:
/// as much as fits, cycled); the rest is the byte stream from the peer.
///
/// Checks against a reference parser: the records come out whole and in
/// order, exactly those the stream holds before its first broken length
/// or its partial tail, whatever the read sizes; a broken length is one
/// above the limit; trimming at the end of the stream leaves nothing.
pub fn records(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let max_body = usize::from(u16_(&mut u) % 4096);
    let steps: [u8; 8] = array(&mut u);
    let stream = u.take_rest();

    // The reference: whole records up to the first broken length.
    let mut want = Vec::new();
    let mut at = 0;
    let mut want_broken = None;
    while let Some(prefix) = stream.get(at..at + PREFIX_LEN) {
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > max_body {
            want_broken = Some(len);
            break;
        }
        let Some(body) = stream.get(at + PREFIX_LEN..at + PREFIX_LEN + len) else {
            break;
        };
        want.push(body);
        at += PREFIX_LEN + len;
    }

    let mut rb = RecordBuf::new(max_body);
    let mut src = Trickle {
        bytes: stream,
        steps: &steps,
        next: 0,
    };
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut broken = None;
    loop {
        match rb.next() {
            Next::Record(body) => {
                assert!(body.len() <= max_body, "body of {} bytes", body.len());
                got.push(rb.body(body.clone()).to_vec());
                rb.consume(body);
            }
            Next::Partial => match rb.fill(&mut src) {
                Ok(0) => panic!("no room to read a {max_body}-byte record"),
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            },
            Next::Broken(len) => {
                assert!(
                    len > max_body,
                    "length {len} within {max_body} called broken"
                );
                broken = Some(len);
                break;
            }
        }
    }
    assert_eq!(got.len(), want.len(), "record count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert_eq!(broken, want_broken);
    // The peer is gone: what is left is not a whole record.
    rb.trim_partial();
    assert_eq!(rb.next(), Next::Partial, "bytes left after the trim");
}

/// VXLAN decapsulation (`vxlan/header.rs`) and the TSO planner
/// (`vxlan/segment.rs`).
///
/// Layout: `u32` VNI (24 bits used); `u32` datagram length (modulo
/// 70000); 8 bytes of VXLAN header; then the TSO input: the guest's 10
/// virtio-net header bytes; `u8` underlay (bit 0: IPv6); `u16` underlay
/// MTU; `u8` prefix length (modulo 17); `u32` frame length (modulo 70000);
/// the rest is the frame's first bytes (missing bytes are zeros).
///
/// Checks: decapsulation accepts exactly RFC 7348 headers of our VNI with
/// room for an Ethernet header and then returns the inner frame's range;
/// an accepted plan's segments are contiguous, end at the frame's end, fit
/// the underlay and the `UDP_SEGMENT` size, and its batches cover every
/// segment once with at most `UDP_MAX_SEGMENTS` each.
pub fn vxlan(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let vni = Vni::new(u32_(&mut u) & Vni::MAX).expect("24 bits");
    let datagram_len = u32_(&mut u) as usize % 70_000;
    let head: [u8; VXLAN_HEADER_LEN] = array(&mut u);
    let whole = head[0] == VXLAN_FLAG_I
        && head[1..4] == [0, 0, 0]
        && head[7] == 0
        && u32::from_be_bytes([0, head[4], head[5], head[6]]) == vni.get()
        && datagram_len >= VXLAN_HEADER_LEN + 14;
    match decapsulate(&head, datagram_len, vni) {
        Ok(inner) => {
            assert!(whole, "accepted {head:?} ({datagram_len} bytes)");
            assert_eq!(inner, VXLAN_HEADER_LEN..datagram_len);
        }
        Err(_) => assert!(!whole, "refused {head:?} ({datagram_len} bytes)"),
    }
    // Only the first 8 bytes matter, and a shorter head is too short.
    assert_eq!(
        decapsulate(&head[..7], datagram_len, vni).ok(),
        None,
        "a 7-byte head"
    );

    let vnet = VnetHdr::parse(&array(&mut u));
    let underlay = if u8_(&mut u) & 1 == 0 {
        Underlay::Ipv4
    } else {
        Underlay::Ipv6
    };
    let limits = TsoLimits {
        underlay,
        underlay_mtu: usize::from(u16_(&mut u)),
    };
    let prefix_len = usize::from(u8_(&mut u) % 17);
    let frame_len = u32_(&mut u) as usize % 70_000;
    let frame = u.take_rest();
    let mut headers = frame[..frame.len().min(MAX_HEADERS_LEN)].to_vec();
    headers.resize(MAX_HEADERS_LEN.min(frame_len), 0);
    let prefix = vec![0xa5u8; prefix_len];
    let mut plan = TsoPlan::new();
    if plan
        .plan(&vnet, &headers, frame_len, frame, &prefix, limits)
        .is_err()
    {
        assert!(plan.is_empty(), "a refused plan keeps segments");
        return;
    }
    assert!(!plan.is_empty());
    let stride = plan.segment(0).expect("one segment").header.len();
    let mut next = plan.segment(0).expect("one segment").payload.0;
    assert!(next <= frame_len);
    for s in plan.iter() {
        assert_eq!(s.header.len(), stride);
        assert_eq!(&s.header[..prefix_len], &prefix[..]);
        assert_eq!(s.payload.0, next, "payloads are contiguous");
        next += s.payload.1;
        assert!(s.header.len() + s.payload.1 <= plan.gso_size());
    }
    assert!(plan.gso_size() <= limits.max_datagram());
    assert_eq!(next, frame_len, "payloads end at the frame's end");
    let mut covered = 0;
    for b in plan.batches() {
        assert_eq!(b.start, covered);
        assert!(!b.is_empty() && b.len() <= UDP_MAX_SEGMENTS, "{b:?}");
        covered = b.end;
    }
    assert_eq!(covered, plan.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry points take any input, the empty one included.
    #[test]
    fn empty_and_short_inputs_are_fine() {
        for data in [&[][..], &[1], &[0xff; 3], &[7; 40]] {
            vnet_hdr(data);
            records(data);
            vxlan(data);
        }
    }
}
