//! In-process datapath tests' support, compiled only for `cargo test`:
//! a scripted attachment ([`fake`]), the guest's side of split virtqueues
//! ([`driver`]), and one queue pair wired to both ([`harness`]). Nothing
//! here needs root, a tap or a frontend.
//!
//! ```ignore
//! let h = Setup::lending(ZeroCopyMode::On).build();
//! let head = h.send(&frame(1000, 1));
//! h.tx_kick();
//! assert_eq!(h.tx.used_idx(), 0, "lent: not used before its completion");
//! h.fake.complete(0, 0, false);
//! h.notified();
//! assert_eq!(h.tx.take_used(), [Used { id: head, len: 0 }]);
//! ```

pub mod alloc;
pub mod driver;
pub mod fake;
pub mod harness;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

pub use driver::{Desc, Posted, Used};
pub use fake::{Engine, Reply};
pub use harness::{with_engine, Delivered, Harness, Setup, Vq, MODERN};

/// A fresh non-blocking eventfd (the fake's fd, the vrings' call fds).
pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd(2) takes no pointers; the flags are valid ones.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by eventfd(2), so it is open and no
    // one else owns it; the OwnedFd becomes its only owner and closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A `len`-byte Ethernet-like frame whose bytes tell frames apart: the
/// source MAC's last byte and every payload byte derive from `seed`.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let head = [
        0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, seed, 0x08, 0x00,
    ];
    let n = head.len().min(len);
    f[..n].copy_from_slice(&head[..n]);
    f
}
