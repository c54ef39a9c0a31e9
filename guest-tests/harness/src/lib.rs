//! The test harness of zcnet: the real `zcnet` binary in network
//! namespaces, driven over its real vhost-user socket by a fake guest (a
//! vhost-user frontend with memfd guest memory and split virtqueues), the
//! host side of its tap and of its socket attachments, and real QEMU guests
//! booted from the test image.
//!
//! Used by the backend's integration tests, the guest tests and
//! `zcnet-bench`; never by the daemon itself.

pub mod alloc;
pub mod daemon;
pub mod driver;
pub mod frames;
pub mod guest;
mod image;
pub mod lab;
pub mod malformed;
pub mod migration_lab;
pub mod netns;
pub mod qmp;
pub mod ring;
pub mod roundtrip;
pub mod setup;
pub mod soak;
pub mod stream_lab;
pub mod udp_lab;
pub mod vm;
pub mod vxlan_lab;

/// The vhost crate with its frontend, as the fake guest speaks it, for
/// tests that send vhost-user messages themselves.
pub use vhost;
