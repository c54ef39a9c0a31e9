//! Restart after a crash: every chain returned exactly once, no frame sent
//! twice, posted RX buffers used after the restart.
//!
//! # Why zcnet needs it
//!
//! A frontend whose backend died cannot ask it where its rings were.
//! QEMU's net device restarts each ring at the guest's used index;
//! cloud-hypervisor restarts it at the avail index (unless IN_ORDER, which
//! zcnet never offers, or inflight tracking was negotiated). Both are right
//! only for a device that completes in order. zcnet completes TX chains
//! out of order (a lent chain waits for the kernel) and pops RX chains in
//! batches: with the used index a completed chain is popped and returned
//! again (a Linux guest then reports "id N is not a head!") and its frame
//! sent twice; with the avail index the chains in flight and the RX
//! buffers posted before the crash are never returned.
//!
//! # The record
//!
//! One in-flight record per queue, in vhost-user's split-ring layout
//! ("Inflight I/O tracking"; [`record`]), kept either in the frontend's
//! region (INFLIGHT_SHMFD, [`frontend`]: cloud-hypervisor) or, for a
//! frontend that keeps none (QEMU's net device), in zcnet's own ledger
//! file next to the socket ([`ledger`]). Both are shared mappings, so
//! every store is in the page cache as soon as it is made and survives
//! SIGKILL. (Not a host crash: the guest does not survive that either.)
//!
//! The datapath's stores, all through `RingState` ([`Track`]):
//! - **pop**: the head's counter, then its flag (in flight), before
//!   anything is done with the chain;
//! - **used-ring update**: the head becomes `last_batch_head`, the used
//!   element and index are written, then the flag is cleared and the
//!   record's used index set (zcnet writes batches of one chain);
//! - **given back to the avail ring** (RX rewinding unused chains or a
//!   held frame's chains, TX on EAGAIN): the flag is cleared.
//!
//! So every chain popped is on the used ring or in flight, and the next
//! avail index is always the used index plus the number in flight. TX
//! chains lent to the kernel stay in flight until its notification lets
//! them go on the used ring.
//!
//! # When a ring starts
//!
//! The first time a ring starts on a connection (the worker's first event
//! that finds it ready), its queue's record is read ([`plan`]):
//! - no ring was running (never started, or stopped cleanly by
//!   GET_VRING_BASE): the frontend's base stands;
//! - it was written for another ring (size, addresses, or the file behind
//!   the guest's memory differ: another guest, or rings laid out anew): it
//!   is discarded with a log line;
//! - it was this ring's: the last batch is fixed up if the crash fell
//!   between a used-ring write and the flag's clearing; TX chains in
//!   flight (sent or lent before the crash) are put on the used ring
//!   without being sent again, so a frame may be lost but never
//!   duplicated; RX chains in flight are popped again before any newer
//!   buffer (they are the next ones on the avail ring, in counter order);
//!   and popping resumes at used index plus in flight, whatever base the
//!   frontend set;
//! - it was this ring's but the ring does not show what it implies (its
//!   used index is not where the record's is, or fewer chains are
//!   outstanding than were in flight): those chains cannot be returned;
//!   they are counted in `zcnet_restart_lost_chains_total` and logged.
//!
//! Chains returned or resubmitted are counted in
//! `zcnet_restart_recovered_chains_total`. After a clean stop the record
//! is idle (chains abandoned after the drain deadline were never returned
//! and are not returned later). A frontend that disconnects without
//! stopping its rings leaves them running: the same guest, reconnecting,
//! gets its chains back; another guest's rings do not match.
//!
//! A frame the kernel still held when zcnet died (in a qdisc, or in the
//! orphaned TCP socket's retransmission queue) may leave after its chain
//! was returned; if the guest has reused the buffer by then, that frame
//! carries the new bytes. That is the guest's own frame, as with the race
//! documented in `tx`.

mod frontend;
pub mod ledger;
mod map;
mod plan;
mod record;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{debug, error, info, warn};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::datapath::VState;
use crate::iovec::Mem;

pub use ledger::{open as open_ledger, LedgerError};
pub use plan::Kind;
pub use record::{Geometry, Record};

use plan::{plan, Action, Plan, RingNow};
use record::{QueueRecord, RingId};

/// One connection's view of the in-flight records.
pub struct Session {
    ledger: Arc<Record>,
    /// The frontend's region, once SET_INFLIGHT_FD gave one.
    frontend: Mutex<Option<Arc<Record>>>,
    /// INFLIGHT_SHMFD was negotiated.
    negotiated: AtomicBool,
    /// Rings the device has.
    rings: u16,
    /// `--queue-size`.
    max_queue_size: u16,
}

impl Session {
    pub fn new(ledger: Arc<Record>, rings: u16, max_queue_size: u16) -> Session {
        Session {
            ledger,
            frontend: Mutex::new(None),
            negotiated: AtomicBool::new(false),
            rings,
            max_queue_size,
        }
    }

    /// Where queue `queue`'s ring of `size` entries keeps its record: the
    /// frontend's region if it gave one with room for it (the ledger then
    /// keeps nothing for the queue), the ledger otherwise.
    fn record_for(&self, queue: u16, size: u16) -> Option<QueueRecord> {
        let frontend = self
            .frontend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let ledger = QueueRecord::new(self.ledger.clone(), queue, size);
        if let Some(q) = frontend.and_then(|rec| QueueRecord::new(rec, queue, size)) {
            if let Some(l) = ledger {
                l.stop();
            }
            return Some(q);
        }
        ledger
    }
}

/// What starting a ring found.
#[derive(Debug, Default)]
pub struct Started {
    /// Where popping goes on, if not at the frontend's base.
    pub next_avail: Option<u16>,
    /// Chains to put on the used ring, empty, in this order.
    pub to_use: Vec<u16>,
    /// Chains returned or resubmitted.
    pub recovered: u64,
    /// Chains the record had in flight that cannot be returned.
    pub lost: u64,
}

/// One queue's in-flight tracking, kept by its `RingState`.
#[derive(Default)]
pub struct Track {
    queue: Option<QueueRecord>,
    counter: u64,
    started: bool,
}

impl std::fmt::Debug for Track {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Track")
            .field("record", &self.queue.as_ref().map(|q| q.record().what()))
            .field("counter", &self.counter)
            .field("started", &self.started)
            .finish()
    }
}

impl Track {
    /// Whether the ring was started (see [`start`](Self::start)) since
    /// the connection began or the ring was last stopped.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Chain `head` was popped.
    #[inline]
    pub fn popped(&mut self, head: u16) {
        if let Some(q) = &self.queue {
            q.mark(head, self.counter);
            self.counter = self.counter.wrapping_add(1);
        }
    }

    /// Chain `head` is about to go on the used ring.
    #[inline]
    pub fn using(&self, head: u16) {
        if let Some(q) = &self.queue {
            q.batch(head);
        }
    }

    /// Chain `head` is on the used ring, whose index is now `used_idx`.
    #[inline]
    pub fn used(&self, head: u16, used_idx: u16) {
        if let Some(q) = &self.queue {
            q.used(head, used_idx);
        }
    }

    /// Chain `head` went back to the avail ring.
    #[inline]
    pub fn unpopped(&self, head: u16) {
        if let Some(q) = &self.queue {
            q.unmark(head);
        }
    }

    /// The frontend stopped the ring (GET_VRING_BASE): whatever is still
    /// in flight was abandoned (see `QueuePair::stop_queue`); the record
    /// says nothing is running.
    pub fn stop(&mut self) {
        if let Some(q) = self.queue.take() {
            q.stop();
        }
        self.started = false;
    }

    /// The ring of queue `queue`, ready in `vs`, starts on this
    /// connection: reads its record and decides where it resumes (see the
    /// module documentation), then tracks it.
    pub fn start(
        &mut self,
        vs: &VState,
        mem: &Mem,
        session: &Session,
        queue: u16,
        kind: Kind,
    ) -> Started {
        self.started = true;
        self.queue = None;
        let q = vs.get_queue();
        let size = q.size();
        let base = q.next_avail();
        let (used_idx, avail_idx) = match (
            q.used_idx(mem, Ordering::Acquire),
            q.avail_idx(mem, Ordering::Acquire),
        ) {
            (Ok(u), Ok(a)) => (u.0, a.0),
            (Err(e), _) | (_, Err(e)) => {
                warn!("queue {queue}: cannot read its ring ({e}); it is not tracked");
                return Started::default();
            }
        };
        let (dev, ino) = backing(mem, q.desc_table());
        let now = RingNow {
            id: RingId {
                size,
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                dev,
                ino,
            },
            used_idx,
            avail_idx,
        };
        let Some(record) = session.record_for(queue, size) else {
            warn!("queue {queue}: no in-flight record has room for its {size}-entry ring");
            return Started::default();
        };
        let avail = q.avail_ring();
        let entry = |i: u16| {
            let at = avail + 4 + 2 * u64::from(i % size);
            mem.read_obj::<u16>(GuestAddress(at)).ok().map(u16::from_le)
        };
        let what = record.record().what().to_owned();
        let mut started = Started::default();
        match plan(&record.snapshot(), &now, kind, entry) {
            Plan::Fresh => {
                debug!("queue {queue}: starts at the frontend's base {base}; tracked in {what}");
                record.begin(now.id, used_idx);
            }
            Plan::Discard(why) => {
                info!(
                    "queue {queue}: discarding {what}'s record of it: {why}; starting at the \
                     frontend's base {base}"
                );
                record.begin(now.id, used_idx);
            }
            Plan::Unrecoverable { chains, why } => {
                error!(
                    "queue {queue}: its ring was running when the last connection ended, but \
                     {what} does not fit the ring now: {why}. {chains} chains it had in flight \
                     cannot be returned to the guest; starting at the frontend's base {base}"
                );
                started.lost = chains as u64;
                record.begin(now.id, used_idx);
            }
            Plan::Resume(r) => {
                record.resume(&r.fixed, r.used_idx);
                let next = r.next_avail();
                let k = r.heads.len();
                let done = match (r.action, k) {
                    (_, 0) => "nothing was in flight".to_owned(),
                    (Action::Return, _) => format!(
                        "{k} TX chains were in flight (sent or lent before it): returned to the \
                         guest without sending them again"
                    ),
                    (Action::Repop, _) => format!(
                        "{k} RX buffers were in flight: they take the next frames, before newer \
                         buffers"
                    ),
                    (Action::ReturnEmpty, _) => {
                        format!("{k} RX buffers were in flight out of avail order: returned empty")
                    }
                };
                info!(
                    "queue {queue}: its ring was running when the last connection ended (zcnet \
                     was killed, or the frontend left without stopping it); resuming from \
                     {what}: {done}; next avail index {next} (the frontend's base was {base}, \
                     the used index is {used_idx}{})",
                    if r.fixed.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; heads {:?} were on the used ring already, though still marked",
                            r.fixed
                        )
                    }
                );
                if r.action == Action::Repop {
                    for &h in &r.heads {
                        record.unmark(h);
                    }
                } else {
                    started.to_use = r.heads;
                }
                started.recovered = k as u64;
                started.next_avail = Some(next);
                self.counter = r.next_counter;
            }
        }
        self.queue = Some(record);
        started
    }
}

/// Device and inode of the file behind the guest memory at `gpa` (0, 0
/// for memory without one).
fn backing(mem: &Mem, gpa: u64) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    mem.find_region(GuestAddress(gpa))
        .and_then(|r| r.file_offset())
        .and_then(|fo| fo.file().metadata().ok())
        .map_or((0, 0), |m| (m.dev(), m.ino()))
}
