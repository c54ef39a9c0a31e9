//! The device side of one split virtqueue, beyond what virtio-queue does:
//! an impossible avail index breaks the queue instead of spinning its
//! worker, and the first used-ring update after a (re)start always
//! notifies the guest. The datapath pops, uses, gives back and notifies
//! only through here, so what must follow every ring access (in-flight
//! tracking, dirty logging) has one place to go.

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};

use crate::datapath::{QueueError, VState};
use crate::inflight::{self, Kind, Session, Started};
use crate::iovec::Mem;

/// What zcnet tracks of one queue across events.
#[derive(Debug, Default)]
pub struct RingState {
    /// The driver published an impossible avail index: the queue is not
    /// processed until the frontend restarts it (GET_VRING_BASE).
    broken: bool,
    /// The guest was notified since the queue (re)started.
    signalled: bool,
    /// The queue's in-flight record (see `inflight`).
    track: inflight::Track,
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
        self.track.stop();
        *self = RingState::default();
    }

    /// Whether [`start`](Self::start) ran since the connection began or
    /// the ring was last stopped.
    pub fn is_started(&self) -> bool {
        self.track.is_started()
    }

    /// The ring (queue `queue`, ready in `vs`) starts on this connection:
    /// after a crash its record says where it resumes, and which chains go
    /// on the used ring first (see `inflight`).
    pub fn start(
        &mut self,
        vs: &mut VState,
        mem: &Mem,
        session: &Session,
        queue: u16,
        kind: Kind,
    ) -> Result<Started, QueueError> {
        let started = self.track.start(vs, mem, session, queue, kind);
        if let Some(next) = started.next_avail {
            vs.get_queue_mut().set_next_avail(next);
        }
        for &head in &started.to_use {
            self.add_used(vs, head, 0)?;
        }
        Ok(started)
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
            Ok(mut it) => {
                let chain = it.next();
                if let Some(c) = &chain {
                    self.track.popped(c.head_index());
                }
                Ok(chain)
            }
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

    /// Puts chain `head` on the used ring with `len` bytes written into
    /// it. Every used-ring write of the datapath goes through here.
    pub fn add_used(&mut self, vs: &mut VState, head: u16, len: u32) -> Result<(), QueueError> {
        self.track.using(head);
        vs.add_used(head, len).map_err(QueueError::Queue)?;
        self.track.used(head, vs.get_queue().next_used());
        Ok(())
    }

    /// Gives the last chains popped, `heads`, back to the avail ring
    /// unused: they are popped again later.
    pub fn unpop(&mut self, vs: &mut VState, heads: impl ExactSizeIterator<Item = u16>) {
        let count = heads.len();
        for head in heads {
            self.track.unpopped(head);
        }
        let q = vs.get_queue_mut();
        q.set_next_avail(q.next_avail().wrapping_sub(count as u16));
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
