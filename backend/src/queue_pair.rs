//! A queue pair: one RX and one TX virtqueue, the attachment they carry
//! frames through, and the per-connection state of both directions. Each
//! pair has its own worker thread and its own lock, so pairs run in
//! parallel. The pair owns its attachment for the life of a frontend
//! connection: it configures it when features are set and hands it back
//! to the daemon when the frontend leaves.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringT};
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zcnet_tap::vnet_hdr::VnetHdr;
use zcnet_tap::{Attachment, Readiness, SendMode, Sent, TxFrame};

use crate::datapath::{Ctx, QueueError, Vring};
use crate::dirty_log::{DirtyLog, LogMap};
use crate::features::Negotiated;
use crate::guest_errors::GuestErrorLog;
use crate::inflight::{Kind, Session};
use crate::iovec::Mem;
use crate::lending::LendPolicy;
use crate::metrics::QueueMetrics;
use crate::rx::{self, RxState, RxStop};
use crate::tx::{self, TxState};

/// Event ids past the queues and the exit event (`num_queues`).
const ATTACHMENT_EVENT: u64 = 1;
const RX_RESUME_EVENT: u64 = 2;
/// Written once when the pair is registered, so the worker's first event
/// (which installs its seccomp filter) comes at once, even on an idle pair.
const SANDBOX_EVENT: u64 = 3;

/// What woke the pair's worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairEvent {
    RxKick,
    TxKick,
    Attachment(EventSet),
    RxResume,
    /// The wake-up of [`SANDBOX_EVENT`].
    Sandbox,
}

impl PairEvent {
    /// Decodes an event id of the pair's worker. Queue ids are local to the
    /// worker: 0 is the pair's RX queue, 1 its TX queue.
    pub fn decode(id: u16, evset: EventSet, num_queues: usize) -> Option<Self> {
        match u64::from(id) {
            0 => Some(PairEvent::RxKick),
            1 => Some(PairEvent::TxKick),
            id if id == num_queues as u64 + ATTACHMENT_EVENT => Some(PairEvent::Attachment(evset)),
            id if id == num_queues as u64 + RX_RESUME_EVENT => Some(PairEvent::RxResume),
            id if id == num_queues as u64 + SANDBOX_EVENT => Some(PairEvent::Sandbox),
            _ => None,
        }
    }
}

/// What the datapath reaches through a [`Ctx`].
struct PairIo {
    /// `None` once handed back to the daemon (the workers have stopped).
    attachment: Option<Box<dyn Attachment>>,
    features: Negotiated,
    guest_log: GuestErrorLog,
    host_log: GuestErrorLog,
}

struct PairState {
    io: PairIo,
    tx: TxState,
    /// The TX vring, kept from the first event so GET_VRING_BASE can
    /// return drained chains (it comes from the frontend's thread).
    tx_vring: Option<Vring>,
    rx: RxState,
}

pub struct QueuePair {
    index: usize,
    /// The attachment's fd, for the worker's epoll set (the attachment
    /// keeps it open while the pair owns it).
    attachment_fd: RawFd,
    metrics: QueueMetrics,
    /// Wakes the worker again when RX stopped on its budget.
    rx_resume: EventFd,
    /// Wakes the worker once at registration (see [`SANDBOX_EVENT`]).
    sandbox_wake: EventFd,
    /// How long GET_VRING_BASE waits for lent chains.
    drain: Duration,
    /// Where the pair's rings keep their in-flight records.
    inflight: Arc<Session>,
    /// The connection's dirty logging (live migration).
    dirty: Arc<DirtyLog>,
    state: Mutex<PairState>,
}

impl QueuePair {
    pub fn new(
        index: usize,
        attachment: Box<dyn Attachment>,
        metrics: QueueMetrics,
        lend: LendPolicy,
        drain: Duration,
        inflight: Arc<Session>,
    ) -> io::Result<Self> {
        Ok(QueuePair {
            index,
            attachment_fd: attachment.fd().as_raw_fd(),
            metrics,
            rx_resume: EventFd::new(EFD_NONBLOCK)?,
            sandbox_wake: EventFd::new(EFD_NONBLOCK)?,
            drain,
            inflight,
            // Never logging until the device gives its own (set_dirty_log).
            dirty: Arc::new(DirtyLog::new(0)),
            state: Mutex::new(PairState {
                io: PairIo {
                    attachment: Some(attachment),
                    features: Negotiated::default(),
                    guest_log: GuestErrorLog::default(),
                    host_log: GuestErrorLog::default(),
                },
                tx: TxState::new(lend),
                tx_vring: None,
                rx: RxState::new(),
            }),
        })
    }

    /// The pair marks the guest pages it writes in `dirty`'s log while a
    /// migration runs (the device's; a pair made alone logs nothing until
    /// given one).
    pub fn set_dirty_log(&mut self, dirty: Arc<DirtyLog>) {
        self.dirty = dirty;
    }

    /// The pair's view of its resources for one event; `None` once the
    /// attachment was handed back.
    fn ctx<'a>(&'a self, io: &'a mut PairIo, dirty: Option<&'a LogMap>) -> Option<Ctx<'a>> {
        Some(Ctx {
            pair: self.index,
            attachment: io.attachment.as_deref_mut()?,
            metrics: &self.metrics,
            features: io.features,
            guest_log: &mut io.guest_log,
            host_log: &mut io.host_log,
            dirty,
        })
    }

    /// The dirty log for one event, if a migration logs writes, handed to
    /// both rings (one atomic load when none does).
    fn begin_logging(&self, st: &mut PairState) -> Option<Arc<LogMap>> {
        let map = self.dirty.batch();
        if let Some(m) = &map {
            st.rx.ring.set_log(Some(self.dirty.used(m, 2 * self.index)));
            st.tx
                .ring
                .set_log(Some(self.dirty.used(m, 2 * self.index + 1)));
        }
        map
    }

    /// Ends what [`begin_logging`](Self::begin_logging) started: the rings
    /// let go of the log, so a replaced one is unmapped once every event
    /// that marked it is over.
    fn end_logging(st: &mut PairState, map: Option<Arc<LogMap>>) {
        if map.is_some() {
            st.rx.ring.set_log(None);
            st.tx.ring.set_log(None);
        }
    }

    /// Returns once the event the pair's worker is handling, if any, has
    /// ended: every later event sees the dirty log as it is now.
    pub fn quiesce(&self) {
        drop(self.lock());
    }

    /// Sends `frame` (a whole Ethernet frame in zcnet's memory, no
    /// virtio-net header) through the pair's attachment, copied, under the
    /// pair's lock so it does not interleave with the worker's sends.
    pub fn send_own_frame(&self, frame: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let Some(attachment) = st.io.attachment.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the queue pair has handed its attachment back",
            ));
        };
        let mut iov = [
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: `iov[1]` describes `frame`, memory of zcnet's own that
        // the borrow of `frame` keeps alive and readable for as long as
        // `tx` lives (to the end of this function); nothing writes it.
        // `iov[0]` is the spare slot the attachment may fill.
        let mut tx = unsafe { TxFrame::new(VnetHdr::default(), &mut iov) };
        match attachment.send(&mut tx, SendMode::Copy)? {
            Sent::Copied => Ok(()),
            // A copy was asked for; an attachment that lends anyway would
            // read `frame` after it is gone.
            Sent::Lent { .. } => Err(io::Error::other(
                "the attachment lent a frame it was asked to copy",
            )),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PairState> {
        // A panic while holding the lock would be a bug in zcnet; the
        // state is still consistent enough to keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the attachment and the resume eventfd to the pair's worker.
    /// The attachment is edge-triggered: RX reads until EAGAIN, and TX
    /// waits for the next writable edge after an EAGAIN.
    pub fn register<B: VhostUserBackend>(
        &self,
        worker: &VringEpollHandler<B>,
        num_queues: usize,
    ) -> io::Result<()> {
        let base = num_queues as u64;
        worker.register_listener(
            self.attachment_fd,
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
            base + ATTACHMENT_EVENT,
        )?;
        worker.register_listener(
            self.rx_resume.as_raw_fd(),
            EventSet::IN,
            base + RX_RESUME_EVENT,
        )?;
        worker.register_listener(
            self.sandbox_wake.as_raw_fd(),
            EventSet::IN,
            base + SANDBOX_EVENT,
        )?;
        self.sandbox_wake.write(1)
    }

    /// Removes what [`register`](Self::register) added.
    pub fn unregister<B: VhostUserBackend>(
        &self,
        worker: &VringEpollHandler<B>,
        num_queues: usize,
    ) {
        let base = num_queues as u64;
        let _ = worker.unregister_listener(
            self.attachment_fd,
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
            base + ATTACHMENT_EVENT,
        );
        let _ = worker.unregister_listener(
            self.rx_resume.as_raw_fd(),
            EventSet::IN,
            base + RX_RESUME_EVENT,
        );
        let _ = worker.unregister_listener(
            self.sandbox_wake.as_raw_fd(),
            EventSet::IN,
            base + SANDBOX_EVENT,
        );
    }

    /// The guest's features (SET_FEATURES): the datapath follows them,
    /// and so does the attachment.
    pub fn set_features(&self, features: Negotiated) {
        let mut st = self.lock();
        st.io.features = features;
        if let Some(a) = st.io.attachment.as_mut() {
            let config = features.guest_config();
            if let Err(e) = a.configure(config) {
                warn!(
                    "queue pair {}: the attachment refused {config:?}: {e}",
                    self.index
                );
            }
        }
    }

    /// The guest enabled or disabled this pair (SET_VRING_ENABLE of its
    /// RX queue): the attachment takes frames only for enabled pairs.
    pub fn set_enabled(&self, enabled: bool) {
        if let Some(a) = self.lock().io.attachment.as_mut() {
            if let Err(e) = a.set_enabled(enabled) {
                warn!(
                    "queue pair {}: cannot {} the attachment's queue: {e}",
                    self.index,
                    if enabled { "attach" } else { "detach" }
                );
            }
        }
    }

    /// Hands the attachment back (the frontend left and the workers have
    /// stopped); `None` if it was already.
    pub fn take_attachment(&self) -> Option<Box<dyn Attachment>> {
        self.lock().io.attachment.take()
    }

    /// Handles one event. Guest mistakes are counted and logged; they never
    /// stop the worker.
    pub fn handle(&self, event: PairEvent, rx_vring: &Vring, tx_vring: &Vring, mem: &Mem) {
        if event == PairEvent::Sandbox {
            // The filter is on (`NetDevice::handle_event`); nothing else
            // to do.
            let _ = self.sandbox_wake.read();
            return;
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.tx_vring.is_none() {
            st.tx_vring = Some(tx_vring.clone());
        }
        self.start_rings(st, rx_vring, tx_vring, mem);
        let dirty = self.begin_logging(st);
        self.handle_logged(event, rx_vring, tx_vring, mem, st, dirty.as_deref());
        Self::end_logging(st, dirty);
    }

    fn handle_logged(
        &self,
        event: PairEvent,
        rx_vring: &Vring,
        tx_vring: &Vring,
        mem: &Mem,
        st: &mut PairState,
        dirty: Option<&LogMap>,
    ) {
        let Some(mut ctx) = self.ctx(&mut st.io, dirty) else {
            return;
        };
        let (mut run_rx, mut run_tx, mut reap) = (false, false, false);
        match event {
            PairEvent::RxKick => run_rx = true,
            PairEvent::TxKick => run_tx = !st.tx.blocked,
            PairEvent::RxResume => {
                let _ = self.rx_resume.read();
                run_rx = true;
            }
            // Handled above.
            PairEvent::Sandbox => {}
            PairEvent::Attachment(evset) => {
                // Zero-copy notifications raise EPOLLERR. An attachment
                // whose fd stands for others (an epoll set) says itself
                // what became possible.
                let ready = ctx.attachment.ready(Readiness {
                    readable: evset.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP),
                    writable: evset.contains(EventSet::OUT),
                    notified: evset.contains(EventSet::ERROR),
                });
                if ready.readable {
                    st.rx.readable = true;
                    run_rx = true;
                }
                run_tx = ready.writable && st.tx.blocked;
                reap = ready.notified;
            }
        }
        if reap && !run_tx {
            if let Err(e) = tx::complete(&mut ctx, &mut st.tx, tx_vring) {
                queue_failed(&mut ctx, "TX", &e);
            }
        }
        if run_tx {
            if let Err(e) = tx::process(&mut ctx, &mut st.tx, tx_vring, mem) {
                queue_failed(&mut ctx, "TX", &e);
            }
        }
        if run_rx {
            match rx::process(&mut ctx, &mut st.rx, rx_vring, mem) {
                Ok(RxStop::Budget) => {
                    let _ = self.rx_resume.write(1);
                }
                Ok(RxStop::Idle) => {}
                Err(e) => queue_failed(&mut ctx, "RX", &e),
            }
        }
    }

    /// Starts each ring of the pair that is ready and not yet started on
    /// this connection: after a crash its in-flight record says where it
    /// resumes (see `inflight`). Done before anything else touches it.
    fn start_rings(&self, st: &mut PairState, rx_vring: &Vring, tx_vring: &Vring, mem: &Mem) {
        let rings = [
            (Kind::Rx, &mut st.rx.ring, rx_vring),
            (Kind::Tx, &mut st.tx.ring, tx_vring),
        ];
        for (kind, ring, vring) in rings {
            if ring.is_started() {
                continue;
            }
            let mut vs = vring.get_mut();
            if !vs.get_queue().ready() {
                continue;
            }
            let queue = 2 * self.index + usize::from(kind == Kind::Tx);
            let queue = u16::try_from(queue).unwrap_or(u16::MAX);
            match ring.start(&mut vs, mem, &self.inflight, queue, kind) {
                Ok(started) => {
                    self.metrics.restart_recovered.inc_by(started.recovered);
                    self.metrics.restart_lost.inc_by(started.lost);
                    // Without a call fd yet the guest sees the used
                    // entries on its next look, and the first notification
                    // after the start still goes out (`RingState::notify`).
                    if !started.to_use.is_empty() && vs.get_call().is_some() {
                        if let Err(e) = ring.notify(&mut vs) {
                            warn!("queue {queue}: cannot notify the guest: {e}");
                        }
                    }
                }
                Err(e) => error!("queue {queue}: cannot start it: {e}"),
            }
        }
    }

    /// Called for GET_VRING_BASE once the queue no longer gets events,
    /// before the frontend gets its reply. For the TX queue, waits (at
    /// most the drain time) until the kernel released every lent chain and
    /// puts those on the used ring. Chains still lent when the time is up
    /// are abandoned: after the reply the device must not write the ring.
    pub fn stop_queue(&self, queue: u32) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let dirty = self.begin_logging(st);
        self.stop_logged(queue, st, dirty.as_deref());
        Self::end_logging(st, dirty);
    }

    fn stop_logged(&self, queue: u32, st: &mut PairState, dirty: Option<&LogMap>) {
        if queue.is_multiple_of(2) {
            st.rx.ring.restart();
            if st.rx.drop_held() {
                // Its chains went back to the avail ring when it was held,
                // so the base the frontend gets covers none of them.
                self.metrics.rx_dropped.inc();
                info!("queue {queue} stopped with a frame held for want of room: dropped");
            }
            info!("queue {queue} stopped by frontend (GET_VRING_BASE)");
            return;
        }
        let lent = st.tx.lending.lent();
        let deadline = Instant::now() + self.drain;
        if lent > 0 {
            info!(
                "queue {queue} stopping: waiting up to {:?} for {lent} lent TX chains",
                self.drain
            );
        }
        if let (Some(vring), Some(mut ctx)) = (st.tx_vring.clone(), self.ctx(&mut st.io, dirty)) {
            let mut vs = vring.get_mut();
            let mut used = false;
            loop {
                match tx::reap(&mut ctx, &mut st.tx, &mut vs) {
                    Ok(u) => used |= u,
                    Err(e) => {
                        ctx.guest_error(format_args!("TX queue: {e}"));
                        break;
                    }
                }
                let now = Instant::now();
                if st.tx.lending.lent() == 0 || now >= deadline {
                    break;
                }
                ctx.attachment.wait_notifications(deadline - now);
            }
            if used {
                let _ = vs.signal_used_queue();
            }
        }
        st.tx.ring.restart();
        let abandoned = st.tx.lending.abandon();
        self.metrics.lent_chains.set(0);
        if abandoned > 0 {
            warn!(
                "queue {queue} stopped by frontend (GET_VRING_BASE) with {abandoned} TX chains \
                 still lent after {:?}: they are not returned to the guest",
                self.drain
            );
        } else {
            info!(
                "queue {queue} stopped by frontend (GET_VRING_BASE); {lent} lent TX chains drained"
            );
        }
    }
}

/// A queue operation failed. A broken queue (an impossible avail index)
/// stops being processed, so it is logged once and counted; other
/// failures are logged at a limited rate.
fn queue_failed(ctx: &mut Ctx<'_>, which: &str, e: &QueueError) {
    if let QueueError::Broken { .. } = e {
        ctx.metrics.broken_queues.inc();
        error!("queue pair {}: {which} queue: {e}", ctx.pair);
    } else {
        ctx.guest_error(format_args!("{which} queue: {e}"));
    }
}
