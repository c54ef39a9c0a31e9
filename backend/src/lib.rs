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
mod dirty_log;
mod features;
mod frontend_relay;
mod guest_errors;
pub mod intercept;
mod iovec;
mod lending;
mod metrics;
mod migration;
mod net_intercept;
mod queue_pair;
mod ring;
mod rx;
#[cfg(test)]
mod testing;
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
