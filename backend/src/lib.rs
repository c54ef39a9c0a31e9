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
#[cfg(test)]
mod datapath_tests;
mod device;
mod dirty_log;
mod exit_events;
mod features;
mod frontend_relay;
/// The fuzz targets' entry points (see `backend/fuzz/`); not an interface.
#[doc(hidden)]
pub mod fuzzing;
mod guest_errors;
mod inflight;
pub mod intercept;
mod iovec;
mod lending;
mod metrics;
mod migration;
mod net_intercept;
mod privileges;
mod queue_pair;
mod request_checks;
mod ring;
mod rx;
pub mod sandbox;
mod socket_path;
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
