//! The receive side of the stream framing: bytes read from the socket into
//! an attachment-owned buffer, cut into length-prefixed records, and each
//! record's frame delivered into the guest's buffers behind its header
//! (`recv`).
//!
//! Each record is a 4-byte big-endian length and that many bytes (QEMU's
//! `-netdev stream` framing). A TCP stream has no message boundaries, so
//! RX copies once more in user space than the tap does: socket to this
//! buffer, then one whole record into the guest's buffers. (The tap hands
//! `readv` the guest's buffers directly.)

use std::io::{self, Read};
use std::ops::Range;

use log::{debug, warn};

use super::conn::Conn;
use super::{StreamAttachment, MAX_FRAME, WIRE_HDR_LEN};
use crate::frame::RxBuffers;
use crate::vnet_hdr::{HdrError, VnetHdr, MIN_FRAME_LEN};
use crate::Offloads;

/// Length of the record prefix.
pub(crate) const PREFIX_LEN: usize = 4;

pub(crate) struct RecordBuf {
    buf: Box<[u8]>,
    /// `buf[start..end]` holds bytes read and not yet consumed.
    start: usize,
    end: usize,
    /// Free room below which `fill` compacts first: one whole record.
    room: usize,
}

/// What the buffer holds at its front.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// A whole record; its body (after the prefix) is at this range.
    Record(Range<usize>),
    /// Not a whole record yet: read more.
    Partial,
    /// A length no frame can have: the peer is broken.
    Broken(usize),
}

impl RecordBuf {
    /// A buffer for records whose body is at most `max_body` bytes.
    pub(crate) fn new(max_body: usize) -> Self {
        let room = PREFIX_LEN + max_body;
        RecordBuf {
            buf: vec![0u8; 4 * room].into_boxed_slice(),
            start: 0,
            end: 0,
            room,
        }
    }

    /// The record at the front, if whole.
    pub(crate) fn next(&self) -> Next {
        Self::parse(&self.buf[self.start..self.end], self.room - PREFIX_LEN).map_or(
            Next::Partial,
            |r| match r {
                Ok(body) => Next::Record(self.start + body.start..self.start + body.end),
                Err(len) => Next::Broken(len),
            },
        )
    }

    /// The record at the front of `bytes`: its body range, or the length
    /// a broken peer claimed; `None` if not whole.
    fn parse(bytes: &[u8], max_body: usize) -> Option<Result<Range<usize>, usize>> {
        let prefix: [u8; PREFIX_LEN] = bytes.get(..PREFIX_LEN)?.try_into().ok()?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len > max_body {
            return Some(Err(len));
        }
        (bytes.len() >= PREFIX_LEN + len).then_some(Ok(PREFIX_LEN..PREFIX_LEN + len))
    }

    pub(crate) fn body(&self, body: Range<usize>) -> &[u8] {
        &self.buf[body]
    }

    /// Drops the record whose body is `body` (from [`next`](Self::next)).
    pub(crate) fn consume(&mut self, body: Range<usize>) {
        debug_assert_eq!(body.start, self.start + PREFIX_LEN);
        self.start = body.end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `src` into the free room (compacting first when
    /// less than a whole record fits). Returns what `read` returned.
    pub(crate) fn fill(&mut self, mut src: impl Read) -> io::Result<usize> {
        if self.buf.len() - self.end < self.room {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Drops the bytes behind the last whole record (a connection ended
    /// in the middle of one, or sent a broken length): the whole records
    /// before them still go to the guest.
    pub(crate) fn trim_partial(&mut self) {
        let max_body = self.room - PREFIX_LEN;
        let mut at = self.start;
        while let Some(Ok(body)) = Self::parse(&self.buf[at..self.end], max_body) {
            at += body.end;
        }
        self.end = at;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

impl StreamAttachment {
    /// [`Attachment::recv`](crate::Attachment::recv) for the stream.
    pub(super) fn recv_frame(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        loop {
            match self.rx.next() {
                Next::Record(body) => {
                    let bytes = self.rx.body(body.clone());
                    let (hdr, frame) = bytes.split_at(if self.peer_hdr { WIRE_HDR_LEN } else { 0 });
                    let n = if frame.len() < MIN_FRAME_LEN {
                        debug!(
                            "TCP stream: dropped a {}-byte frame from the peer",
                            frame.len()
                        );
                        None
                    } else {
                        match guest_header(hdr, frame.len(), &self.offloads) {
                            Ok(h) => Some(deliver(self.hdr_len, &h, frame, bufs)),
                            Err(e) => {
                                debug!("TCP stream: dropped a frame the guest cannot take: {e}");
                                None
                            }
                        }
                    };
                    self.rx.consume(body);
                    if let Some(n) = n {
                        return Ok(n);
                    }
                    continue;
                }
                Next::Broken(len) => {
                    warn!(
                        "TCP stream: the peer sent a {len}-byte record, longer than any frame \
                         ({} bytes at most); dropping the connection",
                        self.max_body()
                    );
                    self.rx.trim_partial();
                    self.lose("broken framing");
                    continue;
                }
                Next::Partial => {}
            }
            if !self.link.is_up() {
                self.service(false);
            }
            let Conn::Up { sock, .. } = &self.link.conn else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            match self.rx.fill(sock) {
                Ok(0) => self.lose("the peer closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.lose(e),
            }
        }
    }

    fn max_body(&self) -> usize {
        MAX_FRAME + if self.peer_hdr { WIRE_HDR_LEN } else { 0 }
    }
}

/// The header the guest gets for a record: the peer's (`--vnet-hdr-peer`),
/// checked against the frame and what this guest accepted (a device must
/// not hand over anything else) and normalised; or all zeros.
fn guest_header(wire: &[u8], frame_len: usize, accepted: &Offloads) -> Result<VnetHdr, HdrError> {
    let Some(fields) = wire.first_chunk::<{ VnetHdr::FIELDS_LEN }>() else {
        return Ok(VnetHdr::default());
    };
    VnetHdr::parse(fields).validate(frame_len, accepted)
}

/// Copies one record's frame into the guest's buffers, behind `hdr` (of
/// `hdr_len` bytes; `num_buffers` is the RX path's to fill in). Returns
/// the length the guest sees; when that exceeds the buffers, nothing is
/// written (the RX path drops the frame and counts it).
fn deliver(hdr_len: usize, hdr: &VnetHdr, frame: &[u8], bufs: &mut RxBuffers<'_>) -> usize {
    let n = hdr_len + frame.len();
    if n <= bufs.capacity() {
        bufs.write_at(0, &hdr.to_bytes()[..hdr_len]);
        bufs.write_at(hdr_len, frame);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &[u8]) -> Vec<u8> {
        let mut r = (body.len() as u32).to_be_bytes().to_vec();
        r.extend_from_slice(body);
        r
    }

    /// Feeds `bytes` to `fill` in pieces of at most `step`.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.bytes.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.step.min(out.len()).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn records_are_cut_whole_whatever_the_read_sizes() {
        let bodies: Vec<Vec<u8>> = (0..50u32)
            .map(|i| {
                (0..(i * 997) % 3000 + 60)
                    .map(|b| b as u8 ^ i as u8)
                    .collect()
            })
            .collect();
        let wire: Vec<u8> = bodies.iter().flat_map(|b| record(b)).collect();
        for step in [1, 3, 4, 1000, 70_000] {
            let mut rb = RecordBuf::new(4000);
            let mut src = Trickle { bytes: &wire, step };
            let mut got = Vec::new();
            loop {
                match rb.next() {
                    Next::Record(body) => {
                        got.push(rb.body(body.clone()).to_vec());
                        rb.consume(body);
                    }
                    Next::Partial => {
                        if rb.fill(&mut src).is_err() {
                            break;
                        }
                    }
                    Next::Broken(len) => panic!("broken length {len}"),
                }
            }
            assert_eq!(got, bodies, "read in steps of {step}");
        }
    }

    #[test]
    fn an_oversized_length_is_broken_and_trimmed_away() {
        let mut rb = RecordBuf::new(100);
        let mut wire = record(&[7; 100]);
        wire.extend_from_slice(&101u32.to_be_bytes());
        wire.extend_from_slice(&[1, 2, 3]);
        rb.fill(Trickle {
            bytes: &wire,
            step: 1000,
        })
        .unwrap();
        let Next::Record(body) = rb.next() else {
            panic!("a whole first record")
        };
        assert_eq!(rb.body(body.clone()), &[7; 100]);
        rb.consume(body);
        assert_eq!(rb.next(), Next::Broken(101));
        rb.trim_partial();
        assert_eq!(rb.next(), Next::Partial);
    }

    #[test]
    fn trimming_keeps_whole_records_and_drops_a_partial_tail() {
        let mut rb = RecordBuf::new(100);
        let mut wire = record(b"first frame");
        wire.extend_from_slice(&record(b"second"));
        wire.extend_from_slice(&record(b"cut short")[..7]);
        rb.fill(Trickle {
            bytes: &wire,
            step: 1000,
        })
        .unwrap();
        rb.trim_partial();
        for want in [&b"first frame"[..], b"second"] {
            let Next::Record(body) = rb.next() else {
                panic!("whole records survive the trim")
            };
            assert_eq!(rb.body(body.clone()), want);
            rb.consume(body);
        }
        assert_eq!(rb.next(), Next::Partial);
        // A new connection's records follow on cleanly.
        rb.fill(Trickle {
            bytes: &record(b"next peer"),
            step: 1000,
        })
        .unwrap();
        let Next::Record(body) = rb.next() else {
            panic!("the new record")
        };
        assert_eq!(rb.body(body), b"next peer");
    }
}
