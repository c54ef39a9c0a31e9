//! Test helpers for the VXLAN building blocks (compiled for tests only):
//! frames built the way a guest builds them, checks against independent
//! references (etherparse, and RFC 1071 done the naive way), and the
//! test binary's global allocator (the harness's counting one, read with
//! `zcnet_harness::alloc::allocations`).

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::segment::TsoPlan;
use crate::vnet_hdr::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6};

pub const FIN: u8 = 0x01;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const CWR: u8 = 0x80;

/// RFC 1071's definition, one 16-bit word at a time with the carry folded
/// at each step: deliberately unlike `Csum`.
pub fn naive_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let hi = u32::from(bytes[i]) << 8;
        let lo = if i + 1 < bytes.len() {
            u32::from(bytes[i + 1])
        } else {
            0
        };
        sum += hi | lo;
        if sum > 0xffff {
            sum -= 0xffff;
        }
        i += 2;
    }
    sum as u16
}

/// A TCP frame as a guest hands it to the device for TSO.
#[derive(Clone, Debug)]
pub struct TcpFrame {
    pub v6: bool,
    pub vlan: Option<u16>,
    /// TCP option bytes (a multiple of 4, at most 40).
    pub options: usize,
    pub flags: u8,
    pub seq: u32,
    pub ip_id: u16,
    pub payload: Vec<u8>,
}

impl TcpFrame {
    pub fn new(v6: bool, payload_len: usize) -> TcpFrame {
        TcpFrame {
            v6,
            vlan: None,
            options: 12, // timestamps, as Linux sends
            flags: ACK | PSH,
            seq: 0x1234_5678,
            ip_id: 0x4000,
            payload: pattern(payload_len, 0x5a),
        }
    }

    pub fn l3(&self) -> usize {
        if self.vlan.is_some() {
            18
        } else {
            14
        }
    }

    pub fn l4(&self) -> usize {
        self.l3() + if self.v6 { 40 } else { 20 }
    }

    pub fn hdr_len(&self) -> usize {
        self.l4() + 20 + self.options
    }

    /// The frame's bytes, with the TCP checksum field holding the
    /// pseudo-header's sum (what a guest leaves with NEEDS_CSUM) and
    /// IPv4's header checksum valid.
    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa];
        if let Some(v) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(if self.v6 {
            &[0x86, 0xdd]
        } else {
            &[0x08, 0x00]
        });
        let tcp_len = 20 + self.options + self.payload.len();
        let l3 = f.len();
        if self.v6 {
            f.extend_from_slice(&[0x60, 0x0a, 0xbc, 0xde]); // traffic class, flow label
            f.extend_from_slice(&(tcp_len.min(0xffff) as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&[
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            ]);
            f.extend_from_slice(&[
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0x02,
            ]);
        } else {
            f.extend_from_slice(&[0x45, 0x10]);
            f.extend_from_slice(&((20 + tcp_len).min(0xffff) as u16).to_be_bytes());
            f.extend_from_slice(&self.ip_id.to_be_bytes());
            f.extend_from_slice(&[0x40, 0x00, 64, 6, 0, 0]); // DF, TTL, TCP, checksum
            f.extend_from_slice(&[192, 0, 2, 10, 198, 51, 100, 20]);
            let c = !naive_sum(&f[l3..l3 + 20]);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = f.len();
        f.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]); // ports 40000 -> 443
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&0x0bad_cafeu32.to_be_bytes()); // ack
        f.push(((20 + self.options) / 4) as u8 * 16);
        f.push(self.flags);
        f.extend_from_slice(&[0xff, 0xf0, 0, 0, 0, 0]); // window, checksum, urgent
        for i in 0..self.options {
            f.push(if i % 4 == 0 { 1 } else { (i * 37) as u8 }); // NOP-led junk
        }
        f.extend_from_slice(&self.payload);
        let pseudo = naive_sum(&pseudo_header(&f, l3, self.v6, tcp_len));
        f[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        f
    }

    /// The guest's virtio-net header for this frame with MSS `mss`.
    pub fn vnet(&self, mss: u16) -> VnetHdr {
        let mut gso_type = if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        if self.flags & CWR != 0 {
            gso_type |= GSO_ECN;
        }
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: self.hdr_len() as u16,
            gso_size: mss,
            csum_start: self.l4() as u16,
            csum_offset: 16,
        }
    }
}

/// The TCP pseudo-header (RFC 9293 §3.1 for IPv4, RFC 8200 §8.1 for IPv6)
/// of the packet whose IP header is at `l3` in `f`.
fn pseudo_header(f: &[u8], l3: usize, v6: bool, tcp_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&f[l3 + 8..l3 + 40]);
        p.extend_from_slice(&(tcp_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 6]);
    } else {
        p.extend_from_slice(&f[l3 + 12..l3 + 20]);
        p.extend_from_slice(&[0, 6]);
        p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    }
    p
}

/// `n` bytes that are neither constant nor periodic over short spans.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(0x9e37_79b1).rotate_left(7) >> 24) as u8 ^ seed)
        .collect()
}

/// Checks a plan of `original` (built from `spec`) against the
/// references: every segment reassembled whole must parse (etherparse),
/// carry checksums that etherparse computes alike and that sum to zero
/// the naive way, have the right lengths, IPv4 id, sequence number and
/// flags, keep every other header byte, and the payloads must concatenate
/// back to the original payload. Returns the number of segments.
pub fn verify_plan(
    plan: &TsoPlan,
    spec: &TcpFrame,
    original: &[u8],
    prefix: &[u8],
    mss: usize,
) -> usize {
    let n = plan.len();
    assert!(n >= 1);
    assert_eq!(n, spec.payload.len().div_ceil(mss).max(1));
    let (l3, l4, hdr_len) = (spec.l3(), spec.l4(), spec.hdr_len());
    let mut payload = Vec::new();
    for (i, seg) in plan.iter().enumerate() {
        assert_eq!(&seg.header[..prefix.len()], prefix, "segment {i}: prefix");
        let (off, len) = seg.payload;
        assert_eq!(off, hdr_len + i * mss, "segment {i}: payload offset");
        let mut whole = seg.header[prefix.len()..].to_vec();
        assert_eq!(whole.len(), hdr_len);
        whole.extend_from_slice(&original[off..off + len]);
        payload.extend_from_slice(&original[off..off + len]);

        // Independent reference 1: etherparse's parser and checksums.
        let p =
            SlicedPacket::from_ethernet(&whole).unwrap_or_else(|e| panic!("segment {i}: {e:?}"));
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!("segment {i}: no TCP");
        };
        match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                assert!(!spec.v6);
                assert_eq!(
                    usize::from(h.total_len()),
                    whole.len() - l3,
                    "segment {i}: IPv4 length"
                );
                assert_eq!(
                    h.identification(),
                    spec.ip_id.wrapping_add(i as u16),
                    "segment {i}: IPv4 id"
                );
                assert_eq!(
                    h.header_checksum(),
                    h.to_header().calc_header_checksum(),
                    "segment {i}"
                );
                assert_eq!(
                    tcp.checksum(),
                    tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap(),
                    "segment {i}: TCP checksum (etherparse)"
                );
                // Independent reference 2: the header sums to zero.
                assert_eq!(
                    naive_sum(&whole[l3..l3 + 20]),
                    0xffff,
                    "segment {i}: IPv4 header sum"
                );
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                assert!(spec.v6);
                assert_eq!(
                    usize::from(h.payload_length()),
                    whole.len() - l3 - 40,
                    "segment {i}"
                );
                assert_eq!(
                    tcp.checksum(),
                    tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap(),
                    "segment {i}: TCP checksum (etherparse)"
                );
            }
            other => panic!("segment {i}: {other:?}"),
        }
        assert_eq!(tcp.payload(), &original[off..off + len]);
        let tcp_len = whole.len() - l4;
        let mut flat = pseudo_header(&whole, l3, spec.v6, tcp_len);
        flat.extend_from_slice(&whole[l4..]);
        assert_eq!(
            naive_sum(&flat),
            0xffff,
            "segment {i}: TCP segment sum (naive)"
        );

        let seq = spec.seq.wrapping_add((i * mss) as u32);
        assert_eq!(tcp.sequence_number(), seq, "segment {i}: sequence");
        let last = i + 1 == n;
        assert_eq!(tcp.fin(), last && spec.flags & FIN != 0, "segment {i}: FIN");
        assert_eq!(tcp.psh(), last && spec.flags & PSH != 0, "segment {i}: PSH");
        assert_eq!(
            tcp.cwr(),
            i == 0 && spec.flags & CWR != 0,
            "segment {i}: CWR"
        );

        // Every byte the segmenter does not own is the original's.
        let mut mask = vec![true; hdr_len];
        let mut own =
            |at: usize, len: usize| mask[at..at + len].iter_mut().for_each(|m| *m = false);
        if spec.v6 {
            own(l3 + 4, 2);
        } else {
            own(l3 + 2, 4); // total length, id
            own(l3 + 10, 2);
        }
        own(l4 + 4, 4);
        own(l4 + 13, 1);
        own(l4 + 16, 2);
        for (j, keep) in mask.iter().enumerate() {
            if *keep {
                assert_eq!(
                    whole[j], original[j],
                    "segment {i}: header byte {j} changed"
                );
            }
        }
        let flags_kept = FIN | PSH | CWR;
        assert_eq!(
            whole[l4 + 13] & !flags_kept,
            original[l4 + 13] & !flags_kept
        );
    }
    assert_eq!(
        payload, spec.payload,
        "payloads concatenate back to the original"
    );
    let covered: Vec<usize> = plan.batches().iter().flat_map(|b| b.clone()).collect();
    assert_eq!(
        covered,
        (0..n).collect::<Vec<_>>(),
        "batches cover every segment once, in order"
    );
    n
}

#[global_allocator]
static GLOBAL: zcnet_harness::alloc::CountingAlloc = zcnet_harness::alloc::CountingAlloc;
