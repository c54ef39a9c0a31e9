//! One queue pair, in process: guest memory, the guest's two rings, the
//! backend's vrings pointed at them (as vhost-user-backend sets them up),
//! and a [`Fake`] attachment. Tests drive it with the events the pair's
//! worker would get and look at what the guest and the fake see.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::VringT;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use zcnet_tap::vnet_hdr::{VnetHdr, NUM_BUFFERS_OFFSET};

use super::driver::{Guest, GuestQueue, Posted, Used};
use super::fake::{self, Engine, Fake};
use crate::datapath::Vring;
use crate::features::Negotiated;
use crate::inflight::{self, Geometry, Session};
use crate::iovec::Mem;
use crate::lending::{LendPolicy, ZeroCopyMode};
use crate::metrics::QueueMetrics;
use crate::queue_pair::{PairEvent, QueuePair};

/// Guest memory: rings below `HEAP`, buffers from it on.
const GUEST_SIZE: u64 = 16 << 20;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const HEAP: u64 = 0x10_0000;

/// The feature bits a modern Linux guest negotiates with zcnet, without
/// offloads: VERSION_1, MRG_RXBUF and EVENT_IDX.
pub const MODERN: u64 =
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF | 1 << VIRTIO_RING_F_EVENT_IDX;

thread_local! {
    /// The engine of the test running on this thread (see `with_engine`).
    static ENGINE: Cell<Engine> = const { Cell::new(Engine::Uring) };
}

/// Runs `test` with every [`Setup`] it builds taking batches as `engine`
/// does (a test runs on a thread of its own).
pub fn with_engine<T>(engine: Engine, test: impl FnOnce() -> T) -> T {
    ENGINE.set(engine);
    test()
}

/// What the pair is built with.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// The negotiated virtio feature bits.
    pub features: u64,
    pub queue_size: u16,
    /// Whether the vrings use EVENT_IDX (the frontend sets it from the
    /// features; separate here so a test can vary one without the other).
    pub event_idx: bool,
    pub lend: LendPolicy,
    /// A socket that can take `MSG_ZEROCOPY`, or a tap that always copies.
    pub can_lend: bool,
    /// How long GET_VRING_BASE waits for lent chains.
    pub drain: Duration,
    /// How the attachment takes a batch of frames: the engine of the
    /// test's run (`with_engine`), `Uring` outside one.
    pub engine: Engine,
}

impl Default for Setup {
    /// A tap-like attachment, a modern guest, 256-entry rings.
    fn default() -> Self {
        Setup {
            features: MODERN,
            queue_size: 256,
            event_idx: true,
            lend: LendPolicy {
                mode: ZeroCopyMode::Off,
                min_bytes: 0,
                cap: 64,
            },
            can_lend: false,
            drain: Duration::ZERO,
            engine: ENGINE.get(),
        }
    }
}

impl Setup {
    /// A socket-like attachment that lends every frame in `mode` (no
    /// minimum size, a cap of 64 chains).
    pub fn lending(mode: ZeroCopyMode) -> Self {
        Setup {
            lend: LendPolicy {
                mode,
                min_bytes: 0,
                cap: 64,
            },
            can_lend: true,
            ..Setup::default()
        }
    }

    pub fn build(self) -> Harness {
        // A ring of 2048 entries takes 52 KiB: it fits below TX_RING's
        // 64 KiB stride and HEAP.
        assert!(self.queue_size <= 2048, "rings overlap past 2048 entries");
        let guest = Guest::new(GUEST_SIZE, HEAP);
        let rx = GuestQueue::new(&guest, RX_RING, self.queue_size);
        let tx = GuestQueue::new(&guest, TX_RING, self.queue_size);
        let mem = GuestMemoryAtomic::new(guest.mem().clone());
        let (rx_vring, rx_call) = vring(&mem, &rx, self.event_idx);
        let (tx_vring, tx_call) = vring(&mem, &tx, self.event_idx);
        let (attachment, fake) = fake::fake(self.can_lend, self.engine);
        let metrics = QueueMetrics::default();
        let geometry = Geometry {
            num_queues: 2,
            queue_size: self.queue_size,
        };
        let ledger = inflight::ledger::in_memory(geometry).expect("an in-memory in-flight record");
        let session = Arc::new(Session::new(ledger, 2, self.queue_size));
        let pair = QueuePair::new(
            0,
            Box::new(attachment),
            metrics.clone(),
            self.lend,
            self.drain,
            session,
        )
        .expect("queue pair");
        let features = Negotiated {
            bits: self.features,
        };
        pair.set_features(features);
        Harness {
            guest,
            rx,
            tx,
            fake,
            metrics,
            pair,
            hdr_len: features.hdr_len(),
            mem,
            vrings: [rx_vring, tx_vring],
            calls: [rx_call, tx_call],
        }
    }
}

/// A backend vring over the guest's ring `q`, ready and enabled, and the
/// read end of its call eventfd.
fn vring(mem: &GuestMemoryAtomic<Mem>, q: &GuestQueue, event_idx: bool) -> (Vring, Calls) {
    let vring = Vring::new(mem.clone(), q.size()).expect("vring");
    let (desc, avail, used) = q.addresses();
    vring.set_queue_size(q.size());
    vring
        .set_queue_info(desc, avail, used)
        .expect("ring addresses");
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_next_avail(0);
    vring.set_queue_next_used(0);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let call = super::eventfd();
    vring.set_call(Some(File::from(call.try_clone().expect("dup eventfd"))));
    (vring, Calls(File::from(call)))
}

/// One of the pair's two virtqueues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vq {
    Rx = 0,
    Tx = 1,
}

/// A frame the guest finds in its RX buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The used elements it came in, in ring order.
    pub used: Vec<Used>,
    /// `num_buffers` from its header.
    pub num_buffers: u16,
    /// Header and frame, from the buffers' used lengths.
    pub bytes: Vec<u8>,
}

pub struct Harness {
    pub guest: Guest,
    /// The guest's rings.
    pub rx: GuestQueue,
    pub tx: GuestQueue,
    /// The test's handle on the pair's attachment.
    pub fake: Fake,
    pub metrics: QueueMetrics,
    pub pair: QueuePair,
    /// Virtio-net header length the guest negotiated.
    pub hdr_len: usize,
    /// The memory the backend sees (as the daemon's `GuestMemoryAtomic`).
    pub mem: GuestMemoryAtomic<Mem>,
    /// The backend's vrings, indexed by [`Vq`], as vhost-user-backend
    /// would hand them to the worker.
    pub vrings: [Vring; 2],
    calls: [Calls; 2],
}

/// The read end of a vring's call eventfd.
pub struct Calls(File);

impl Calls {
    /// How many times the device signalled since the last look.
    pub fn take(&self) -> u64 {
        let mut buf = [0u8; 8];
        match (&self.0).read(&mut buf) {
            Ok(8) => u64::from_ne_bytes(buf),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            other => panic!("reading a call eventfd: {other:?}"),
        }
    }
}

impl Harness {
    /// What the pair's worker does for `event`.
    pub fn event(&self, event: PairEvent) {
        let mem = self.mem.memory();
        self.pair
            .handle(event, &self.vrings[0], &self.vrings[1], &mem);
    }

    pub fn tx_kick(&self) {
        self.event(PairEvent::TxKick);
    }

    pub fn rx_kick(&self) {
        self.event(PairEvent::RxKick);
    }

    /// The attachment's fd became writable (after an EAGAIN).
    pub fn writable(&self) {
        self.event(PairEvent::Attachment(EventSet::OUT));
    }

    /// The attachment's fd became readable (frames arrived).
    pub fn readable(&self) {
        self.event(PairEvent::Attachment(EventSet::IN));
    }

    /// The attachment's fd reported EPOLLERR (zero-copy notifications).
    pub fn notified(&self) {
        self.event(PairEvent::Attachment(EventSet::ERROR));
    }

    /// GET_VRING_BASE as vhost-user-backend handles it: the queue stops
    /// being ready, then the backend's `stop_vring` runs; returns the base
    /// the frontend gets.
    pub fn stop(&self, q: Vq) -> u16 {
        let vring = &self.vrings[q as usize];
        vring.set_queue_ready(false);
        self.pair.stop_queue(q as u32);
        vring.queue_next_avail()
    }

    /// The device's next avail index on `q` (where it will pop next).
    pub fn next_avail(&self, q: Vq) -> u16 {
        self.vrings[q as usize].queue_next_avail()
    }

    /// How many times the device signalled `q`'s call eventfd since the
    /// last look.
    pub fn calls(&self, q: Vq) -> u64 {
        self.calls[q as usize].take()
    }

    /// Another reader of `q`'s call eventfd, for a hook that looks while
    /// the device works.
    pub fn watch_calls(&self, q: Vq) -> Calls {
        Calls(self.calls[q as usize].0.try_clone().expect("dup eventfd"))
    }

    /// The virtio-net header (all zero) and `frame`, as the guest puts
    /// them in a TX buffer.
    pub fn wire(&self, frame: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; self.hdr_len];
        bytes.extend_from_slice(frame);
        bytes
    }

    /// Publishes `frame` on the TX ring behind an all-zero virtio-net
    /// header; returns the chain's head.
    pub fn send(&self, frame: &[u8]) -> u16 {
        self.send_with(&VnetHdr::default(), frame)
    }

    /// Publishes `frame` on the TX ring behind `hdr`.
    pub fn send_with(&self, hdr: &VnetHdr, frame: &[u8]) -> u16 {
        let mut bytes = hdr.to_bytes()[..self.hdr_len].to_vec();
        bytes.extend_from_slice(frame);
        self.tx.send(&bytes)
    }

    /// The frames the device delivered since the last look, grouped by
    /// `num_buffers`, read from the buffers in `posted`.
    pub fn delivered(&self, posted: &[Posted]) -> Vec<Delivered> {
        let mut used = self.rx.take_used().into_iter().peekable();
        let mut out = Vec::new();
        while let Some(first) = used.next() {
            let read = |u: &Used| {
                let p = posted
                    .iter()
                    .find(|p| p.head == u.id)
                    .unwrap_or_else(|| panic!("used id {} was not posted", u.id));
                assert!(u.len <= p.len, "used length {u:?} past the buffer");
                self.guest.read(p.addr, u.len as usize)
            };
            let mut bytes = read(&first);
            let num_buffers = if self.hdr_len > NUM_BUFFERS_OFFSET {
                assert!(bytes.len() >= self.hdr_len, "first buffer holds the header");
                u16::from_le_bytes([bytes[NUM_BUFFERS_OFFSET], bytes[NUM_BUFFERS_OFFSET + 1]])
            } else {
                1
            };
            assert!(num_buffers >= 1, "num_buffers 0: {first:?}");
            let mut frame_used = vec![first];
            for _ in 1..num_buffers {
                let u = used
                    .next()
                    .expect("as many used buffers as num_buffers says");
                bytes.extend(read(&u));
                frame_used.push(u);
            }
            out.push(Delivered {
                used: frame_used,
                num_buffers,
                bytes,
            });
        }
        out
    }
}
