//! The Internet checksum (RFC 1071): the ones'-complement sum of 16-bit
//! big-endian words, complemented.
//!
//! Two properties let a checksum be built from pieces (RFC 1071 §2):
//! sums add (with end-around carry) in any order, and a piece that starts
//! at an odd position contributes its own sum byte-swapped. [`Csum`] keeps
//! track of that position, so bytes may arrive in chunks of any length,
//! and sums computed elsewhere (over guest memory, by a [`PayloadSum`]) can
//! be added in with [`Csum::add_partial`].

/// The ones'-complement sum of part of a frame whose bytes zcnet does not
/// hold: the payload, which stays in guest memory.
///
/// The attachment implements it over the guest's descriptors (reading with
/// volatile reads: the guest may be writing); tests use `[u8]`.
pub trait PayloadSum {
    /// The RFC 1071 sum of the `len` bytes at `offset` in the frame, paired
    /// from `offset` itself: the byte at `offset` is the high-order byte of
    /// the first 16-bit word whatever the parity of `offset`, and an odd
    /// last byte is padded with a zero low-order byte.
    ///
    /// Any `u32` whose end-around-carry fold to 16 bits is that sum will
    /// do (folded or not, as long as no carry was dropped). The callers in
    /// this module ask only for ranges inside the frame length they were
    /// given.
    fn sum(&self, offset: usize, len: usize) -> u32;
}

/// The bytes of the frame itself. Bytes past the end of the slice count as
/// zero (never a panic).
impl PayloadSum for [u8] {
    fn sum(&self, offset: usize, len: usize) -> u32 {
        let start = offset.min(self.len());
        let end = offset.saturating_add(len).min(self.len());
        let mut c = Csum::new();
        c.add(&self[start..end]);
        u32::from(c.fold())
    }
}

/// An RFC 1071 sum being accumulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Csum {
    /// Unfolded sum. Adding at most 2^32 words of 32 bits cannot overflow
    /// it: 16 GiB per checksum.
    acc: u64,
    /// An odd number of bytes has been added: the next byte is the
    /// low-order byte of a word.
    odd: bool,
}

impl Csum {
    pub const fn new() -> Csum {
        Csum { acc: 0, odd: false }
    }

    /// Adds `bytes`, continuing the byte pairing where the previous call
    /// left it.
    pub fn add(&mut self, mut bytes: &[u8]) {
        if self.odd {
            let Some((&first, rest)) = bytes.split_first() else {
                return;
            };
            self.acc += u64::from(first);
            self.odd = false;
            bytes = rest;
        }
        // 32-bit words fold to the same 16-bit sum, since 2^16 = 1 mod 2^16 - 1.
        let mut words = bytes.chunks_exact(4);
        for w in &mut words {
            self.acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        }
        match *words.remainder() {
            [] => {}
            [a] => {
                self.acc += u64::from(a) << 8;
                self.odd = true;
            }
            [a, b] => self.acc += u64::from(u16::from_be_bytes([a, b])),
            [a, b, c] => {
                self.acc += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8);
                self.odd = true;
            }
            _ => unreachable!("chunks_exact(4) leaves at most 3 bytes"),
        }
    }

    /// Adds the sum `partial` of `len` bytes that were paired from their
    /// own start (a [`PayloadSum::sum`]), as if those bytes came next.
    pub fn add_partial(&mut self, partial: u32, len: usize) {
        let folded = fold(u64::from(partial));
        // Bytes paired from an even start but placed at an odd position
        // contribute their sum byte-swapped (RFC 1071 §2(B)).
        self.acc += u64::from(if self.odd {
            folded.swap_bytes()
        } else {
            folded
        });
        self.odd ^= len % 2 == 1;
    }

    /// The ones'-complement sum so far, folded to 16 bits.
    pub fn fold(&self) -> u16 {
        fold(self.acc)
    }

    /// The checksum: the complement of [`fold`](Self::fold).
    pub fn finish(&self) -> u16 {
        !self.fold()
    }
}

/// End-around-carry fold of `acc` to 16 bits.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's own naive definition: 16-bit words, one at a time.
    fn naive(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let mut c = Csum::new();
        c.add(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(c.fold(), 0xddf2);
        assert_eq!(c.finish(), !0xddf2);
    }

    #[test]
    fn chunking_does_not_change_the_sum() {
        let data = bytes(1001, 7);
        let want = naive(&data);
        for chunk in [1, 2, 3, 5, 7, 64, 1000] {
            let mut c = Csum::new();
            for piece in data.chunks(chunk) {
                c.add(piece);
            }
            assert_eq!(c.fold(), want, "chunks of {chunk}");
        }
    }

    #[test]
    fn partial_sums_at_odd_and_even_positions() {
        let data = bytes(777, 3);
        let want = naive(&data);
        for split in [0, 1, 2, 3, 100, 101, 776, 777] {
            for end in [split, split + 1, (split + 50).min(777), 777] {
                if end > 777 || end < split {
                    continue;
                }
                let mut c = Csum::new();
                c.add(&data[..split]);
                c.add_partial(data.sum(split, end - split), end - split);
                c.add(&data[end..]);
                assert_eq!(c.fold(), want, "split {split}..{end}");
            }
        }
    }

    #[test]
    fn slice_sums_pair_from_the_offset_and_never_panic() {
        let data = bytes(64, 1);
        assert_eq!(data.sum(3, 10), u32::from(naive(&data[3..13])));
        assert_eq!(data.sum(60, 100), u32::from(naive(&data[60..])));
        assert_eq!(data.sum(100, 10), 0);
        assert_eq!(data.sum(usize::MAX, usize::MAX), 0);
    }

    #[test]
    fn a_long_run_of_ones_folds() {
        let data = vec![0xff; 65536];
        let mut c = Csum::new();
        c.add(&data);
        assert_eq!(c.fold(), 0xffff);
        assert_eq!(c.finish(), 0);
    }
}
