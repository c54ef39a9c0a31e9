//! zcnet: a vhost-user virtio-net backend.
//!
//! The daemon ([`daemon`]) serves QEMU or cloud-hypervisor over a Unix
//! socket. Each queue pair ([`queue_pair`]) carries frames between its two
//! virtqueues and a host attachment: the TX path ([`tx`]) sends straight
//! from guest memory, the RX path ([`rx`]) receives straight into it, and
//! [`iovec`] is the one place where descriptors become iovecs. `inflight`
//! keeps the record that makes a restart after a crash return every chain
//! exactly once.

pub mod cli;
mod config_space;
mod control;
pub mod daemon;
mod datapath;
mod device;
pub mod features;
mod frontend_relay;
mod guest_errors;
mod inflight;
pub mod intercept;
pub mod iovec;
pub mod lending;
pub mod metrics;
mod net_intercept;
mod queue_pair;
mod ring;
mod rx;
mod tx;
mod vhost_message;

/// `e` and its causes, joined with ": ", for one log line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
