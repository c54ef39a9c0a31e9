//! The device side of one split virtqueue, beyond what virtio-queue does:
//! an impossible avail index breaks the queue instead of spinning its
//! worker, and the first used-ring update after a (re)start always
//! notifies the guest. The datapath pops, uses and notifies only through
//! here, so what must follow every ring access (in-flight tracking, dirty
//! logging) has one place to go.

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};

use crate::datapath::{QueueError, VState};
use crate::iovec::Mem;

/// What zcnet tracks of one queue across events.
#[derive(Debug, Default)]
pub struct RingState {
    /// The driver published an impossible avail index: the queue is not
    /// processed until the frontend restarts it (GET_VRING_BASE).
    broken: bool,
    /// The guest was notified since the queue (re)started.
    signalled: bool,
}

impl RingState {
    /// Whether the queue is broken (see [`pop`](Self::pop)).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The frontend stopped the queue (GET_VRING_BASE); whatever it sets
    /// up next starts clean: not broken, and its first used-ring update
    /// notifies.
    pub fn restart(&mut self) {
        *self = RingState::default();
    }

    /// Pops the next available descriptor chain.
    ///
    /// # Errors
    /// [`QueueError::Broken`] when the avail index is impossible: more than
    /// a queue ahead of the next one to pop, or behind it (virtio 1.x,
    /// 2.7.6: the driver never makes more than queue-size entries
    /// available). The queue is then marked broken, so a loop that
    /// re-enters on `enable_notification` stops instead of spinning.
    pub fn pop<'m>(
        &mut self,
        vs: &mut VState,
        mem: &'m Mem,
    ) -> Result<Option<DescriptorChain<&'m Mem>>, QueueError> {
        let q = vs.get_queue_mut();
        match q.iter(mem) {
            Ok(mut it) => Ok(it.next()),
            Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                self.broken = true;
                let avail = q.avail_idx(mem, Ordering::Acquire).map_or(0, |w| w.0);
                Err(QueueError::Broken {
                    avail,
                    next: q.next_avail(),
                    size: q.size(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the last `count` chains popped back to the avail ring: they
    /// are popped again, in the same order. Only chains not yet used may
    /// go back (a frame that would block, RX buffers a frame did not
    /// fill).
    pub fn rewind(&mut self, vs: &mut VState, count: usize) {
        let q = vs.get_queue_mut();
        q.set_next_avail(q.next_avail().wrapping_sub(count as u16));
    }

    /// Puts chain `head` on the used ring with `len` bytes written into
    /// it. Every used-ring write of the datapath goes through here.
    pub fn add_used(&mut self, vs: &mut VState, head: u16, len: u32) -> Result<(), QueueError> {
        vs.add_used(head, len).map_err(QueueError::Queue)
    }

    /// Notifies the guest of used-ring updates if it asked (EVENT_IDX) or
    /// if it was not notified since the queue started: after a (re)start
    /// the last index it was signalled at is unknown, so kernel vhost and
    /// QEMU notify once unconditionally (issue 12, case 6).
    pub fn notify(&mut self, vs: &mut VState) -> Result<(), QueueError> {
        // Always asked: it also resets virtio-queue's count of entries
        // added since the last notification.
        let asked = vs.needs_notification()?;
        if asked || !self.signalled {
            vs.signal_used_queue().map_err(QueueError::Signal)?;
            self.signalled = true;
        }
        Ok(())
    }
}
