//! The worker threads' exit events, and the descriptor of each that
//! vhost-user-backend leaks.
//!
//! vhost-user-backend 0.24 (`event_loop.rs`, `VringEpollHandler::new`)
//! takes the consumer end of every exit event with `into_raw_fd`, adds it
//! to the worker's epoll set and never closes it: one eventfd per worker
//! thread per frontend connection, so a daemon serving frontend after
//! frontend runs out of descriptors (found by the `vhost_daemon` fuzz
//! target, which stopped on EMFILE; `backend/tests/reconnect_fds.rs`
//! checks it through the binary). zcnet records which file each consumer
//! is and closes it itself once the connection's workers are gone, if the
//! descriptor still is that file (should a later release close it, zcnet
//! then leaves alone whatever took its number).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};

use log::warn;
use nix::sys::stat::fstat;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// A consumer handed to vhost-user-backend: its number and its file.
struct HandedOut {
    fd: RawFd,
    dev: u64,
    ino: u64,
}

#[derive(Default)]
pub struct ExitEvents {
    handed_out: Mutex<Vec<HandedOut>>,
}

/// The device and inode of the file behind `fd`, if it is open.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // fstat only reads the descriptor's metadata; a closed or reused
    // number gives an error or another file, both handled.
    let st = fstat(fd).ok()?;
    Some((st.st_dev, st.st_ino))
}

impl ExitEvents {
    /// A new exit event for a worker; its consumer's descriptor is
    /// recorded for [`close_leaked`](Self::close_leaked).
    pub fn create(&self) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok((consumer, notifier)) => {
                let fd = consumer.as_raw_fd();
                if let Some((dev, ino)) = identity(fd) {
                    self.lock().push(HandedOut { fd, dev, ino });
                }
                Some((consumer, notifier))
            }
            Err(e) => {
                warn!("cannot create a worker exit event: {e}");
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HandedOut>> {
        // A list of numbers: a panic cannot leave it half-written.
        self.handed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the consumers vhost-user-backend kept open. Call it once the
    /// connection's worker threads have ended (the `VhostUserDaemon` is
    /// dropped), so none of them reads the descriptor any more.
    pub fn close_leaked(&self) {
        for h in self.lock().drain(..) {
            if identity(h.fd) != Some((h.dev, h.ino)) {
                continue;
            }
            // SAFETY: `h.fd` is the consumer end of an exit event this
            // struct created and handed to vhost-user-backend, which took
            // it with `into_raw_fd` and never closes it (module doc); the
            // descriptor still refers to that same file (checked just
            // above), and the worker that polled it has ended. Nothing
            // else owns it, so this OwnedFd is its only owner and closes
            // it once.
            drop(unsafe { OwnedFd::from_raw_fd(h.fd) });
        }
    }
}
