//! The virtio-net device as vhost-user-backend sees it: features, config
//! space, one worker thread per queue pair, and event dispatch.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use zcnet_tap::{Attachment, Offloads};

use crate::config_space::NetConfigSpace;
use crate::datapath::Vring;
use crate::dirty_log::{DirtyLog, VHOST_F_LOG_ALL};
use crate::exit_events::ExitEvents;
use crate::features::{self, Negotiated};
use crate::inflight::Session;
use crate::iovec::Mem;
use crate::lending::LendPolicy;
use crate::metrics::Metrics;
use crate::migration::MigrationDevice;
use crate::net_intercept::DeviceEvents;
use crate::queue_pair::{PairEvent, QueuePair};
use crate::sandbox::{self, Kind};

/// What the device is, independent of any connection.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub mac: [u8; 6],
    pub mtu: Option<u16>,
    pub queue_size: u16,
    /// The offloads the attachment accepts from the guest (TX).
    pub offloads: Offloads,
    /// The offloads the attachment may deliver to the guest (RX).
    pub rx_offloads: Offloads,
    /// When TX frames are lent to the kernel (socket attachments).
    pub lend: LendPolicy,
    /// How long GET_VRING_BASE waits for lent TX chains.
    pub drain: Duration,
}

/// One connection's device: a fresh one is built for every frontend, and
/// its queue pairs own the attachments until the frontend leaves.
pub struct NetDevice {
    pairs: Vec<QueuePair>,
    mem: GuestMemoryAtomic<Mem>,
    spec: DeviceSpec,
    config: NetConfigSpace,
    offered: u64,
    exit_events: ExitEvents,
    /// Dirty logging for live migration, shared with the pairs (which
    /// mark) and the interceptor (which maps logs).
    dirty: Arc<DirtyLog>,
}

impl NetDevice {
    /// A device whose pair `i` owns `attachments[i]`. On error the
    /// attachments are lost: the caller treats it as fatal.
    pub fn new(
        spec: DeviceSpec,
        attachments: Vec<Box<dyn Attachment>>,
        metrics: &Metrics,
        mem: GuestMemoryAtomic<Mem>,
        inflight: Arc<Session>,
    ) -> io::Result<Self> {
        let dirty = Arc::new(DirtyLog::new(2 * attachments.len()));
        let pairs = attachments
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let session = inflight.clone();
                let mut pair =
                    QueuePair::new(i, a, metrics.queue(i), spec.lend, spec.drain, session)?;
                pair.set_dirty_log(dirty.clone());
                Ok(pair)
            })
            .collect::<io::Result<Vec<_>>>()?;
        // No pair takes frames until the frontend enables it (see
        // `set_vring_enabled`).
        for pair in &pairs {
            pair.set_enabled(false);
        }
        let config = NetConfigSpace::new(spec.mac, pairs.len() as u16, spec.mtu.unwrap_or(0));
        Ok(NetDevice {
            offered: features::offered(spec.offloads, spec.rx_offloads, spec.mtu.is_some()),
            pairs,
            mem,
            spec,
            config,
            exit_events: ExitEvents::default(),
            dirty,
        })
    }

    /// Closes the exit events' descriptors vhost-user-backend leaks (see
    /// `exit_events`); call it after the `VhostUserDaemon` is dropped.
    pub fn close_leaked_exit_events(&self) {
        self.exit_events.close_leaked();
    }

    /// The connection's dirty logging, for the interceptor.
    pub fn dirty_log(&self) -> Arc<DirtyLog> {
        self.dirty.clone()
    }

    /// Hands every pair's attachment back, in pair order (call once the
    /// workers have stopped), taking no frames until the next frontend
    /// enables its pair.
    pub fn take_attachments(&self) -> Vec<Box<dyn Attachment>> {
        self.pairs
            .iter()
            .filter_map(|pair| {
                pair.set_enabled(false);
                pair.take_attachment()
            })
            .collect()
    }

    pub fn queue_pairs(&self) -> usize {
        self.pairs.len()
    }

    /// Adds each pair's fds to its worker thread.
    pub fn register<B: VhostUserBackend>(
        &self,
        workers: &[Arc<VringEpollHandler<B>>],
    ) -> io::Result<()> {
        for (pair, worker) in self.pairs.iter().zip(workers) {
            pair.register(worker, self.num_queues())?;
        }
        Ok(())
    }

    /// Removes each pair's fds from its worker thread.
    pub fn unregister<B: VhostUserBackend>(&self, workers: &[Arc<VringEpollHandler<B>>]) {
        for (pair, worker) in self.pairs.iter().zip(workers) {
            pair.unregister(worker, self.num_queues());
        }
    }
}

impl DeviceEvents for NetDevice {
    /// A pair whose RX queue is disabled takes no frames: a multi-queue
    /// tap steers them to enabled pairs (virtio 1.x 5.1.6.5.5, automatic
    /// receive steering), as QEMU expects while the guest uses fewer pairs
    /// than offered (`ethtool -L`).
    fn vring_enabled(&self, index: usize, enabled: bool) {
        if index.is_multiple_of(2) {
            if let Some(pair) = self.pairs.get(index / 2) {
                pair.set_enabled(enabled);
            }
        }
    }
}

impl MigrationDevice for NetDevice {
    fn quiesce(&self) {
        for pair in &self.pairs {
            pair.quiesce();
        }
    }

    fn announce(&self, frame: &[u8]) -> io::Result<()> {
        self.pairs
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no queue pair"))?
            .send_own_frame(frame)
    }
}

impl VhostUserBackend for NetDevice {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * self.pairs.len()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.spec.queue_size)
    }

    fn features(&self) -> u64 {
        // The first request the handler serves is the daemon's own
        // GET_FEATURES, so this installs its filter before any of the
        // frontend's (see `crate::sandbox`).
        sandbox::enter_if_named(sandbox::HANDLER_THREAD, Kind::Frontend);
        self.offered
    }

    fn acked_features(&self, bits: u64) {
        // LOG_ALL is vhost's, not the guest's: it starts and stops dirty
        // logging (live migration). vhost-user-backend keeps no state for
        // it, so zcnet follows it both ways itself.
        let log_all = bits & VHOST_F_LOG_ALL != 0;
        if self.dirty.set_log_all(log_all) != log_all {
            info!(
                "dirty logging {} (SET_FEATURES {} VHOST_F_LOG_ALL)",
                if log_all { "on" } else { "off" },
                if log_all { "acked" } else { "cleared" }
            );
        }
        let bits = bits & !VHOST_F_LOG_ALL;
        let features = Negotiated { bits };
        // Every pair's lock is taken below (set_features), after the flag
        // changed: an event in progress ends before the frontend gets its
        // reply, and every later event marks its writes.
        // Without PROTOCOL_FEATURES every ring is enabled at SET_FEATURES
        // (vhost-user "Ring states"); with it, SET_VRING_ENABLE says.
        let all_enabled = bits & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0;
        for pair in &self.pairs {
            pair.set_features(features);
            if all_enabled {
                pair.set_enabled(true);
            }
        }
        info!(
            "features negotiated: {bits:#x} (header {} bytes, mergeable RX {}, RX offloads {:?})",
            features.hdr_len(),
            features.mergeable_rx(),
            features.rx_offloads()
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        features::protocol()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vrings carry the flag; the datapath asks each queue.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size).unwrap_or_else(|| {
            warn!("frontend read config space {offset}+{size}, outside the device's");
            Vec::new()
        })
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        warn!(
            "frontend wrote {} bytes of config space at {offset}; it is read-only",
            buf.len()
        );
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "virtio-net config space is read-only",
        ))
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        // The same GuestMemoryAtomic was given to the daemon and already
        // holds the new map; in-flight work keeps its old snapshot.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.pairs.len()).map(|p| 0b11u64 << (2 * p)).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit_events.create()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let pair = self
            .pairs
            .get(queue_index as usize / 2)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such queue"))?;
        pair.stop_queue(queue_index);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // This thread is a queue pair's worker, started by
        // vhost-user-backend: its first event installs its filter.
        sandbox::enter(Kind::Worker);
        let (Some(pair), [rx, tx]) = (self.pairs.get(thread_id), vrings) else {
            warn!("event {device_event} for unknown worker {thread_id}");
            return Ok(());
        };
        let Some(event) = PairEvent::decode(device_event, evset, self.num_queues()) else {
            warn!("queue pair {thread_id}: unknown event id {device_event}");
            return Ok(());
        };
        let mem = self.mem.memory();
        pair.handle(event, rx, tx, &mem);
        Ok(())
    }
}
