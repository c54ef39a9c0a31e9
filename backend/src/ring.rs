//! The device side of one split virtqueue, beyond what virtio-queue does:
//! an impossible avail index breaks the queue instead of spinning its
//! worker, and the first used-ring update after a (re)start always
//! notifies the guest. The datapath pops, uses, gives back and notifies
//! only through here, so what must follow every ring access (in-flight
//! tracking, dirty logging) has one place to go.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use log::debug;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};

use crate::datapath::{QueueError, VState};
use crate::dirty_log::UsedLog;
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
    /// The call fd the guest was last notified through: a new one (the
    /// frontend replaced it with SET_VRING_CALL) is notified at once.
    call: Option<RawFd>,
    /// While a migration logs dirty pages: this event's log for the used
    /// ring (see [`set_log`](Self::set_log)).
    log: Option<UsedLog>,
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
        // The event's dirty log stays: the stop is part of that event.
        *self = RingState {
            log: self.log.take(),
            ..RingState::default()
        };
    }

    /// The dirty log for the used ring's writes until the next call, or
    /// `None` when no migration logs them (see [`crate::dirty_log`]). Set
    /// once per event, before the ring is used, and cleared after it.
    pub fn set_log(&mut self, log: Option<UsedLog>) {
        self.log = log;
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
        let slot = vs.get_queue().next_used() % vs.get_queue().size().max(1);
        self.track.using(head);
        vs.add_used(head, len).map_err(QueueError::Queue)?;
        self.track.used(head, vs.get_queue().next_used());
        if let Some(log) = &self.log {
            // The element and `used.idx`, after both were written.
            log.mark(vs.get_queue(), 4 + 8 * u64::from(slot), 8);
            log.mark(vs.get_queue(), 2, 2);
        }
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
    /// Asks the driver for a kick on new buffers (`avail_event` with
    /// EVENT_IDX, `used.flags` without); returns whether buffers arrived
    /// meanwhile (virtio-queue's `enable_notification`).
    pub fn enable_notification(&mut self, vs: &mut VState, mem: &Mem) -> Result<bool, QueueError> {
        let more = vs.get_queue_mut().enable_notification(mem)?;
        self.log_notification(vs);
        Ok(more)
    }

    /// Asks the driver for no kicks while the device works through the
    /// ring (`used.flags` without EVENT_IDX; nothing with it).
    pub fn disable_notification(&mut self, vs: &mut VState, mem: &Mem) -> Result<(), QueueError> {
        vs.get_queue_mut().disable_notification(mem)?;
        self.log_notification(vs);
        Ok(())
    }

    /// Marks what notification suppression writes: `used.flags`, or
    /// `avail_event` after the last element.
    fn log_notification(&self, vs: &VState) {
        if let Some(log) = &self.log {
            let q = vs.get_queue();
            if q.event_idx_enabled() {
                log.mark(q, 4 + 8 * u64::from(q.size()), 2);
            } else {
                log.mark(q, 0, 2);
            }
        }
    }

    /// Notifies the guest of used-ring updates if it asked (EVENT_IDX) or
    /// if it was not notified since the queue started: after a (re)start
    /// the last index it was signalled at is unknown, so kernel vhost and
    /// QEMU notify once unconditionally (issue 12, case 6). The same holds
    /// after the frontend replaced the call fd: a notification sent
    /// through the old one may never have reached the guest (see
    /// [`signal_new_call`]), and with EVENT_IDX a lost one is never sent
    /// again.
    pub fn notify(&mut self, vs: &mut VState) -> Result<(), QueueError> {
        // Always asked: it also resets virtio-queue's count of entries
        // added since the last notification.
        let asked = vs.needs_notification()?;
        let call = vs.get_call().as_ref().map(AsRawFd::as_raw_fd);
        if asked || !self.signalled || call != self.call {
            vs.signal_used_queue().map_err(QueueError::Signal)?;
            self.signalled = true;
            self.call = call;
        }
        Ok(())
    }
}

/// SET_VRING_CALL brought `call`, the ring's new call fd: signals it once,
/// before the handler installs it (libvhost-user does the same,
/// `vu_set_vring_call_exec`: "in case of I/O hang after reconnecting").
///
/// A ring runs from SET_VRING_KICK on, and QEMU sends the call fd the
/// guest listens on only after the kick, having discarded whatever was
/// signalled on its placeholder (`vhost_virtqueue_start`,
/// hw/virtio/vhost.c: "Clear and discard previous events"). Used entries
/// zcnet added in between, such as frames received by a migration's
/// destination as soon as its rings start, would otherwise wait for a
/// notification that EVENT_IDX never sends again. An extra interrupt only
/// makes the driver look at the used ring. [`RingState::notify`] also
/// notifies unconditionally through a call fd it has not used before, for
/// entries added between this signal and the handler installing the fd.
pub fn signal_new_call(call: Option<&OwnedFd>) {
    let Some(fd) = call else {
        return;
    };
    let one = 1u64.to_ne_bytes();
    if let Err(e) = nix::unistd::write(fd, &one) {
        debug!("cannot signal a new call fd: {e}");
    }
}
