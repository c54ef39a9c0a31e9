//! TSO for the VXLAN attachment: a guest's TCP frame of up to 64 KiB is cut
//! into MSS-sized inner segments, each with its own copy of the headers,
//! as the kernel's `tcp_gso_segment` and `inet_gso_segment`/
//! `ipv6_gso_segment` would (`net/ipv4/tcp_offload.c`,
//! `net/ipv4/af_inet.c`, `net/ipv6/ip6_offload.c`).
//!
//! zcnet does not copy the payload. It plans the segments: for segment `i`
//! it writes the headers into a reusable buffer in its own memory (an
//! optional prefix, the VXLAN header, then the inner Ethernet, IP and TCP
//! headers) and says which range of the frame is that segment's payload.
//! The attachment then sends header, payload, header, payload... in one
//! `sendmsg` with `UDP_SEGMENT` = [`TsoPlan::gso_size`], the payload
//! iovecs pointing into guest memory; the kernel cuts the datagrams at
//! exactly the segment boundaries, since every segment but the last has
//! the same length.
//!
//! Per segment `i` of `n` (first payload byte at `hdr_len + i * mss`):
//! - IPv4: total length, identification `id + i` (wrapping), header
//!   checksum; IPv6: payload length.
//! - TCP: sequence number `seq + i * mss` (wrapping); FIN and PSH only on
//!   the last segment, CWR only on the first (`tcp_gso_segment`); the
//!   checksum over the pseudo-header, the TCP header and that segment's
//!   payload, the payload's part read by the caller's [`PayloadSum`].
//!
//! # Limits
//! - Each datagram (prefix + inner segment) must fit one underlay packet:
//!   the kernel refuses `UDP_SEGMENT` sends whose `gso_size` plus IP and UDP
//!   headers exceed the route's MTU (`udp_send_skb`: "hlen +
//!   cork->gso_size > cork->fragsize"), so an MSS too large for the
//!   underlay is refused here ([`SegmentError::SegmentTooBig`]).
//! - One `sendmsg` carries at most [`UDP_MAX_SEGMENTS`] datagrams and at
//!   most [`Underlay::max_udp_payload`] bytes. A 64 KiB frame with MSS 1448
//!   grows past 64 KiB once every segment has its own headers, so a plan
//!   groups its segments into [`batches`](TsoPlan::batches), one `sendmsg`
//!   each: usually two for a full-size frame.
//! - A frame is cut into at most [`MAX_FRAME_SEGMENTS`] segments, which
//!   bounds the work and memory a guest's tiny `gso_size` can cause.
//!
//! # The guest can change the payload under us
//! The payload's checksum is computed from guest memory, and the kernel
//! later reads the same memory to send it. A guest that rewrites its
//! buffer in between sends segments whose TCP checksum is wrong; the
//! receiver drops them. That harms only the guest's own flow (the same
//! race Firecracker documents for zero-copy TX), and the headers, which
//! zcnet checked, come from zcnet's copy.

use std::ops::Range;

use thiserror::Error;

use super::csum::{Csum, PayloadSum};
use super::header::{Underlay, UDP_HEADER_LEN};
use super::layout::{IpVersion, LayoutError, TcpLayout, IPPROTO_TCP, IPV4_HEADER_LEN};
use crate::vnet_hdr::{VnetHdr, GSO_TCPV4, GSO_TCPV6};

/// The most datagrams one `UDP_SEGMENT` send may carry: the kernel's
/// `UDP_MAX_SEGMENTS` (`include/linux/udp.h`), `1 << 6` since `UDP_SEGMENT`
/// appeared (Linux 4.18). Newer kernels accept 128 (this project's 6.18
/// machines do: measured); 64 works on all of them.
pub const UDP_MAX_SEGMENTS: usize = 64;
/// The most segments one frame is cut into. 64 KiB at the smallest MSS a
/// Linux TCP sends (`TCP_MIN_MSS`, 88 bytes) makes 745.
pub const MAX_FRAME_SEGMENTS: usize = 1024;

/// Offset of the checksum in the TCP header.
const TCP_CHECK: usize = 16;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The network the segments cross.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsoLimits {
    pub underlay: Underlay,
    /// The MTU of the route to the remote VTEP, in bytes (outer IP header
    /// included, as `ip link` shows it).
    pub underlay_mtu: usize,
}

impl TsoLimits {
    /// The largest UDP payload of one datagram (prefix and inner segment):
    /// it must fit one underlay packet and one `sendmsg`.
    pub const fn max_datagram(&self) -> usize {
        let fits_mtu = self
            .underlay_mtu
            .saturating_sub(self.underlay.ip_header_len() + UDP_HEADER_LEN);
        let per_call = self.underlay.max_udp_payload();
        if fits_mtu < per_call {
            fits_mtu
        } else {
            per_call
        }
    }
}

/// Why a TSO frame cannot be segmented. The frame is the guest's fault in
/// every case: count it and return its chain.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("GSO type {0:#04x} is not TCPv4 or TCPv6")]
    NotTso(u8),
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
    #[error("hdr_len {hdr_len} lies beyond the {frame_len}-byte frame")]
    HdrLenBeyondFrame { hdr_len: u16, frame_len: usize },
    #[error("unusable TSO frame headers")]
    Layout(#[from] LayoutError),
    #[error("NEEDS_CSUM at {csum_start}+{csum_offset} is not the TCP checksum at {tcp_offset}+16")]
    CsumNotTcp {
        csum_start: u16,
        csum_offset: u16,
        tcp_offset: usize,
    },
    #[error("MSS {mss} cuts the frame into {segments} segments, more than {max}")]
    TooManySegments {
        segments: usize,
        mss: u16,
        max: usize,
    },
    #[error("a datagram of {datagram} bytes (MSS {mss}) does not fit the underlay's {max}")]
    SegmentTooBig {
        datagram: usize,
        mss: u16,
        max: usize,
    },
}

/// One planned segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// The prefix and the segment's inner headers: send from here.
    pub header: &'a [u8],
    /// The segment's payload: this range of the guest's frame.
    pub payload: (usize, usize),
}

/// The segments of one TSO frame, in buffers reused from frame to frame:
/// once they have grown to a frame's size, planning another frame that
/// size allocates nothing.
#[derive(Debug, Default)]
pub struct TsoPlan {
    /// Segment `i`'s header at `i * stride..(i + 1) * stride`.
    headers: Vec<u8>,
    /// Segment `i`'s payload as (offset in the frame, length).
    payloads: Vec<(usize, usize)>,
    batches: Vec<Range<usize>>,
    stride: usize,
    gso_size: usize,
}

impl TsoPlan {
    /// An empty plan; its buffers grow with the first frames.
    pub fn new() -> TsoPlan {
        TsoPlan::default()
    }

    /// A plan whose buffers already hold `segments` segments of `stride`
    /// header bytes each (prefix included), so that no frame within that
    /// allocates. `with_capacity(MAX_FRAME_SEGMENTS, 8 + MAX_HEADERS_LEN)`
    /// covers every frame a VXLAN plan accepts, in about 130 KiB.
    pub fn with_capacity(segments: usize, stride: usize) -> TsoPlan {
        TsoPlan {
            headers: Vec::with_capacity(segments * stride),
            payloads: Vec::with_capacity(segments),
            batches: Vec::with_capacity(segments.div_ceil(UDP_MAX_SEGMENTS) + 1),
            stride: 0,
            gso_size: 0,
        }
    }

    /// Plans the segments of a TSO frame of `frame_len` bytes.
    ///
    /// - `vnet`: the guest's header; `gso_type` TCPV4 or TCPV6 (with or
    ///   without the ECN bit: CWR is handled the same either way),
    ///   `gso_size` the MSS, `csum_start`/`csum_offset` the TCP checksum
    ///   when NEEDS_CSUM is set.
    /// - `headers`: a copy of the frame's first bytes, at least the whole
    ///   headers ([`MAX_HEADERS_LEN`](super::layout::MAX_HEADERS_LEN) bytes,
    ///   or the whole frame if shorter, always suffice).
    /// - `frame`: sums of the frame's payload (bytes past the headers).
    /// - `prefix`: bytes put before each segment's headers: the VXLAN
    ///   header (may be empty).
    ///
    /// On error the plan is empty.
    pub fn plan<P: PayloadSum + ?Sized>(
        &mut self,
        vnet: &VnetHdr,
        headers: &[u8],
        frame_len: usize,
        frame: &P,
        prefix: &[u8],
        limits: TsoLimits,
    ) -> Result<(), SegmentError> {
        self.clear();
        let ip = match vnet.gso() {
            GSO_TCPV4 => IpVersion::V4,
            GSO_TCPV6 => IpVersion::V6,
            _ => return Err(SegmentError::NotTso(vnet.gso_type)),
        };
        if vnet.gso_size == 0 {
            return Err(SegmentError::ZeroGsoSize);
        }
        if usize::from(vnet.hdr_len) > frame_len {
            return Err(SegmentError::HdrLenBeyondFrame {
                hdr_len: vnet.hdr_len,
                frame_len,
            });
        }
        let layout = TcpLayout::parse(headers, frame_len, ip)?;
        if vnet.needs_csum()
            && (usize::from(vnet.csum_start) != layout.l4
                || usize::from(vnet.csum_offset) != TCP_CHECK)
        {
            return Err(SegmentError::CsumNotTcp {
                csum_start: vnet.csum_start,
                csum_offset: vnet.csum_offset,
                tcp_offset: layout.l4,
            });
        }
        let mss = usize::from(vnet.gso_size);
        let hdr_len = layout.hdr_len;
        let payload_len = frame_len - hdr_len;
        let segments = payload_len.div_ceil(mss).max(1);
        if segments > MAX_FRAME_SEGMENTS {
            return Err(SegmentError::TooManySegments {
                segments,
                mss: vnet.gso_size,
                max: MAX_FRAME_SEGMENTS,
            });
        }
        let stride = prefix.len() + hdr_len;
        let largest = stride + payload_len.min(mss);
        if largest > limits.max_datagram() {
            return Err(SegmentError::SegmentTooBig {
                datagram: largest,
                mss: vnet.gso_size,
                max: limits.max_datagram(),
            });
        }

        self.stride = stride;
        self.gso_size = largest;
        self.headers.resize(segments * stride, 0);
        let template = &headers[..hdr_len];
        for (i, buf) in self.headers.chunks_exact_mut(stride).enumerate() {
            let offset = hdr_len + i * mss;
            let len = mss.min(frame_len - offset);
            buf[..prefix.len()].copy_from_slice(prefix);
            let h = &mut buf[prefix.len()..];
            h.copy_from_slice(template);
            write_segment(h, &layout, i, segments, mss, len, frame.sum(offset, len));
            self.payloads.push((offset, len));
        }
        self.batch(limits.underlay.max_udp_payload());
        Ok(())
    }

    /// Groups the segments into sends of at most [`UDP_MAX_SEGMENTS`]
    /// datagrams and `max_bytes` bytes.
    fn batch(&mut self, max_bytes: usize) {
        let mut start = 0;
        let mut bytes = 0;
        for (i, &(_, len)) in self.payloads.iter().enumerate() {
            let datagram = self.stride + len;
            if i - start == UDP_MAX_SEGMENTS || bytes + datagram > max_bytes {
                self.batches.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += datagram;
        }
        self.batches.push(start..self.payloads.len());
    }

    fn clear(&mut self) {
        self.headers.clear();
        self.payloads.clear();
        self.batches.clear();
        self.stride = 0;
        self.gso_size = 0;
    }

    /// How many segments the frame was cut into (0 after an error).
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// Segment `i`, if there is one.
    pub fn segment(&self, i: usize) -> Option<Segment<'_>> {
        let payload = *self.payloads.get(i)?;
        let header = self.headers.get(i * self.stride..(i + 1) * self.stride)?;
        Some(Segment { header, payload })
    }

    /// The segments in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Segment<'_>> + '_ {
        self.headers
            .chunks_exact(self.stride.max(1))
            .zip(&self.payloads)
            .map(|(header, &payload)| Segment { header, payload })
    }

    /// The segments of each `sendmsg`, as index ranges in order; they
    /// cover every segment once.
    pub fn batches(&self) -> &[Range<usize>] {
        &self.batches
    }

    /// The `UDP_SEGMENT` size: the length of every datagram but the last
    /// (prefix, inner headers and a full MSS of payload; for a frame of one
    /// segment, that segment's length).
    pub fn gso_size(&self) -> usize {
        self.gso_size
    }
}

/// Rewrites the copied headers `h` (inner frame's headers, from the
/// Ethernet header on) for segment `i` of `n`, carrying `len` payload
/// bytes whose sum is `payload_sum`.
fn write_segment(
    h: &mut [u8],
    layout: &TcpLayout,
    i: usize,
    n: usize,
    mss: usize,
    len: usize,
    payload_sum: u32,
) {
    let (l3, l4) = (layout.l3, layout.l4);
    let tcp_len = layout.hdr_len - l4 + len;
    let put16 = |h: &mut [u8], at: usize, v: u16| h[at..at + 2].copy_from_slice(&v.to_be_bytes());
    // Lengths fit 16 bits: the datagram was checked against 64 KiB.
    match layout.ip {
        IpVersion::V4 => {
            put16(h, l3 + 2, (layout.hdr_len - l3 + len) as u16);
            let id = u16::from_be_bytes([h[l3 + 4], h[l3 + 5]]).wrapping_add(i as u16);
            put16(h, l3 + 4, id);
            put16(h, l3 + 10, 0);
            let mut c = Csum::new();
            c.add(&h[l3..l3 + IPV4_HEADER_LEN]);
            put16(h, l3 + 10, c.finish());
        }
        IpVersion::V6 => put16(h, l3 + 4, tcp_len as u16),
    }

    let seq = u32::from_be_bytes([h[l4 + 4], h[l4 + 5], h[l4 + 6], h[l4 + 7]]);
    let seq = seq.wrapping_add((i as u32).wrapping_mul(mss as u32));
    h[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    if i + 1 != n {
        h[l4 + 13] &= !(TCP_FIN | TCP_PSH);
    }
    if i != 0 {
        h[l4 + 13] &= !TCP_CWR;
    }

    put16(h, l4 + TCP_CHECK, 0);
    let mut c = Csum::new();
    match layout.ip {
        IpVersion::V4 => {
            c.add(&h[l3 + 12..l3 + 20]); // source and destination
            c.add(&[0, IPPROTO_TCP]);
            c.add(&(tcp_len as u16).to_be_bytes());
        }
        IpVersion::V6 => {
            c.add(&h[l3 + 8..l3 + 40]); // source and destination
            c.add(&(tcp_len as u32).to_be_bytes());
            c.add(&[0, 0, 0, IPPROTO_TCP]);
        }
    }
    c.add(&h[l4..layout.hdr_len]);
    c.add_partial(payload_sum, len);
    put16(h, l4 + TCP_CHECK, c.finish());
}
