//! zcnet: a vhost-user virtio-net backend.
//!
//! The daemon ([`daemon`]) serves QEMU or cloud-hypervisor over a Unix
//! socket. Each queue pair ([`queue_pair`]) carries frames between its two
//! virtqueues and a host attachment: the TX path ([`tx`]) sends straight
//! from guest memory, the RX path ([`rx`]) receives straight into it, and
//! [`iovec`] is the one place where descriptors become iovecs.

pub mod cli;
mod config_space;
mod control;
pub mod daemon;
mod datapath;
#[cfg(test)]
mod datapath_tests;
mod device;
pub mod features;
mod frontend_relay;
mod guest_errors;
pub mod iovec;
pub mod lending;
pub mod metrics;
mod queue_pair;
mod rx;
#[cfg(test)]
mod testing;
mod tx;
