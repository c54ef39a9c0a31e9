//! Entry points for zcnet's fuzz targets (`backend/fuzz/`) and for the
//! test that replays their committed corpus on stable
//! (`backend/tests/fuzz_corpus.rs`). Not an interface for anything else:
//! it exists so the datapath's modules can stay private.
//!
//! Each function takes the fuzzer's bytes and decodes them with
//! [`arbitrary::Unstructured`] using fixed-size fields only (integers are
//! little endian; a field past the end of the input reads as zeros), so a
//! seed can be written by hand from the layout in each function's doc. It
//! panics only when an invariant breaks, which the fuzzer reports.
//!
//! The parsers of zcnet-tap have their own entry points in
//! `zcnet_tap::fuzzing`.

use arbitrary::Unstructured;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::iovec::{Direction, GuestIoVecs, Mem, MemView};

mod messages;

pub use messages::{vhost_daemon, vhost_messages};

pub(crate) fn u8_(u: &mut Unstructured) -> u8 {
    u.arbitrary().unwrap_or(0)
}

pub(crate) fn u16_(u: &mut Unstructured) -> u16 {
    u.arbitrary().unwrap_or(0)
}

pub(crate) fn u32_(u: &mut Unstructured) -> u32 {
    u.arbitrary().unwrap_or(0)
}

pub(crate) fn u64_(u: &mut Unstructured) -> u64 {
    u.arbitrary().unwrap_or(0)
}

/// Guest memory of up to 4 regions as the input lays them out: per region
/// a `u16` start page and a `u8` length in pages (modulo 16, plus one).
/// A region that overlaps an earlier one is left out. `None` if none is
/// left.
fn guest_memory(u: &mut Unstructured) -> Option<Mem> {
    let count = 1 + usize::from(u8_(u) % 4);
    let mut ranges: Vec<(GuestAddress, usize)> = Vec::new();
    for _ in 0..count {
        let start = u64::from(u16_(u)) * 0x1000;
        let len = (1 + usize::from(u8_(u) % 16)) * 0x1000;
        let overlaps = ranges
            .iter()
            .any(|&(s, l)| start < s.0 + l as u64 && s.0 < start + len as u64);
        if !overlaps {
            ranges.push((GuestAddress(start), len));
        }
    }
    ranges.sort_by_key(|r| r.0);
    GuestMemoryMmap::from_ranges(&ranges).ok()
}

/// Descriptor chains to iovecs (`iovec.rs`, `GuestIoVecs::push_chain`).
///
/// Layout:
/// - guest memory (see `guest_memory`: `u8` count, then per region `u16`
///   start page and `u8` pages);
/// - `u8` queue size as a power of two (`1 << (b % 9)`);
/// - `u64` descriptor table, `u64` avail ring, `u64` used ring addresses
///   (each modulo the end of memory plus 8 KiB, then aligned as the spec
///   wants: 16, 2, 4);
/// - `u8` direction (bit 0: device-writable), `u16` minimum length,
///   `u32` maximum length, `u16` most descriptors;
/// - `u8` chains to pop (modulo 9) and as many `u16` head indices, put on
///   the avail ring in order (the avail index then counts them);
/// - `u8` raw writes (modulo 64), each a `u64` address (modulo the end of
///   memory plus 4 KiB), a `u8` length (modulo 33) and that many bytes:
///   descriptors, indirect tables, ring entries, anything. Written after
///   the heads, so they can overwrite them.
///
/// With `ZCNET_FUZZ_DEBUG` set, each chain's result goes to stderr.
///
/// Checks: every chain either fails and leaves the list as it was, or
/// adds iovecs that lie wholly inside one region of guest memory, whose
/// lengths add up to the length returned, within the limits asked for.
pub fn descriptor_chains(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Some(mem) = guest_memory(&mut u) else {
        return;
    };
    let end = mem.last_addr().0 + 1;
    let size = 1u16 << (u8_(&mut u) % 9);
    let desc = (u64_(&mut u) % (end + 0x2000)) & !0xf;
    let avail = (u64_(&mut u) % (end + 0x2000)) & !0x1;
    let used = (u64_(&mut u) % (end + 0x2000)) & !0x3;
    let direction = if u8_(&mut u) & 1 == 0 {
        Direction::Readable
    } else {
        Direction::Writable
    };
    let min_len = usize::from(u16_(&mut u));
    let max_len = u32_(&mut u) as usize;
    let max_descriptors = usize::from(u16_(&mut u));
    let chains = u8_(&mut u) % 9;
    for i in 0..chains {
        let head = u16_(&mut u);
        let _ = mem.write_obj(head.to_le(), GuestAddress(avail + 4 + 2 * u64::from(i)));
    }
    let _ = mem.write_obj(u16::from(chains).to_le(), GuestAddress(avail + 2));
    for _ in 0..u8_(&mut u) % 64 {
        let at = u64_(&mut u) % (end + 0x1000);
        let len = usize::from(u8_(&mut u) % 33);
        let mut bytes = [0u8; 32];
        let _ = u.fill_buffer(&mut bytes[..len]);
        let _ = mem.write_slice(&bytes[..len], GuestAddress(at));
    }

    let Ok(mut queue) = Queue::new(size) else {
        return;
    };
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    queue.set_ready(true);

    // Where each region is mapped in this process.
    let mapped: Vec<(usize, usize)> = mem
        .iter()
        .map(|r| {
            let host = mem
                .get_host_address(r.start_addr())
                .expect("a region's first byte is mapped");
            (host as usize, r.len() as usize)
        })
        .collect();
    let mut iov = GuestIoVecs::new();
    let view = MemView::new(&mem);
    for _ in 0..chains {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let (segments, len) = (iov.segments(), iov.len());
        let result = iov.push_chain(chain, &view, direction, min_len, max_len, max_descriptors);
        if std::env::var_os("ZCNET_FUZZ_DEBUG").is_some() {
            eprintln!("chain: {result:?}");
        }
        match result {
            Ok(n) => {
                let new = &iov.iovecs()[segments..];
                let sum: usize = new.iter().map(|v| v.iov_len).sum();
                assert_eq!(sum, n, "the iovecs hold the chain's length");
                assert_eq!(iov.len(), len + n);
                assert!(
                    n >= min_len && n <= max_len,
                    "{n} outside {min_len}..={max_len}"
                );
                for v in new {
                    let (base, l) = (v.iov_base as usize, v.iov_len);
                    assert!(
                        mapped
                            .iter()
                            .any(|&(h, hl)| base >= h && base + l <= h + hl),
                        "iovec {base:#x}+{l} outside guest memory"
                    );
                }
            }
            Err(_) => {
                assert_eq!(
                    (iov.segments(), iov.len()),
                    (segments, len),
                    "not left as it was"
                );
            }
        }
    }
}
