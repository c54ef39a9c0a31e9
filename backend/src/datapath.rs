//! What the TX and RX paths of one queue pair share while they run.

use std::fmt::Display;
use std::io;

use thiserror::Error;
use vhost_user_backend::{VringRwLock, VringState};
use vm_memory::GuestMemoryAtomic;
use zcnet_tap::Attachment;

use crate::dirty_log::LogMap;
use crate::features::Negotiated;
use crate::guest_errors::GuestErrorLog;
use crate::iovec::Mem;
use crate::metrics::QueueMetrics;

pub type Vring = VringRwLock<GuestMemoryAtomic<Mem>>;
pub type VState = VringState<GuestMemoryAtomic<Mem>>;

/// A ring operation failed: the guest's ring memory is not usable.
#[derive(Debug, Error)]
pub enum QueueError {
    #[error("cannot access the virtqueue")]
    Queue(#[from] virtio_queue::Error),
    #[error("cannot notify the guest")]
    Signal(#[source] io::Error),
    #[error(
        "the driver's avail index {avail} is impossible (next avail {next}, {size} entries): \
         the queue is broken until the frontend resets it"
    )]
    Broken { avail: u16, next: u16, size: u16 },
}

/// One queue pair's view of its resources during one event.
pub struct Ctx<'a> {
    pub pair: usize,
    pub attachment: &'a mut dyn Attachment,
    pub metrics: &'a QueueMetrics,
    pub features: Negotiated,
    pub guest_log: &'a mut GuestErrorLog,
    pub host_log: &'a mut GuestErrorLog,
    /// The migration's dirty log for this event's writes into guest
    /// buffers, or `None` when no migration logs them.
    pub dirty: Option<&'a LogMap>,
}

impl Ctx<'_> {
    pub fn hdr_len(&self) -> usize {
        self.features.hdr_len()
    }

    /// Something the guest did wrong: logged at a limited rate.
    pub fn guest_error(&mut self, what: impl Display) {
        self.guest_log.report(self.pair, what);
    }

    /// Something the host side refused: logged at a limited rate.
    pub fn host_error(&mut self, what: impl Display) {
        self.host_log.report(self.pair, what);
    }
}
