//! The tap workloads: zcnet on a tap, fed by the fake guest, and the raw
//! tap's own writers and readers, on the same kind of tap in a fresh
//! namespace; and zcnet idle.

use std::sync::Arc;

use serde::Serialize;
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::driver::{self, Counters};
use zcnet_harness::frames::PacketSock;
use zcnet_harness::guest::{self, FakeGuest, GuestOpts, HDR_LEN};
use zcnet_harness::netns::NetNs;

use super::{
    alive, checked_metrics, require, spawn_guest_tx, take_rings, window, zcnet_window,
    MeasureError, Reading, Timing, QUEUE_SIZE,
};
use crate::crew::{Crew, Role};
use crate::injector;
use crate::raw_tap::{self, RawTap};
use crate::sample::Sample;
use crate::workload::{Direction, Workload};

/// The tap's name inside each namespace (zcnet's and the raw tap's).
const TAP: &str = "zb0";
/// zcnet's `--io-engine` for TX on a tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Uring,
    Syscall,
}

impl Engine {
    pub fn arg(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Syscall => "syscall",
        }
    }
}

/// What carries the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The zcnet daemon, fed by the fake guest over vhost-user, with this
    /// TX engine.
    Zcnet(Engine),
    /// The zcnet daemon, fed by DPDK's `virtio_user` (dpdk-testpmd in
    /// txonly mode), with this TX engine.
    ZcnetDpdk(Engine),
    /// The bench's own fds on the same kind of tap: one writev per frame
    /// (TX) or readv (RX), the limit of one system call per frame.
    Raw,
    /// The same kind of tap written 64 frames per io_uring_enter on a
    /// registered fd (TX): the limit of a batched writer.
    RawUring,
    /// A plain tap (no vnet header, one queue) written one frame per
    /// writev (TX).
    RawPlain,
}

impl Side {
    /// A stable name for the JSON and the progress lines.
    pub fn id(self) -> &'static str {
        match self {
            Side::Zcnet(Engine::Uring) => "zcnet-uring",
            Side::Zcnet(Engine::Syscall) => "zcnet-syscall",
            Side::ZcnetDpdk(Engine::Uring) => "dpdk-zcnet-uring",
            Side::ZcnetDpdk(Engine::Syscall) => "dpdk-zcnet-syscall",
            Side::Raw => "raw",
            Side::RawUring => "raw-uring",
            Side::RawPlain => "raw-plain",
        }
    }

    /// Whether zcnet carries the frames (else the bench's own fds do).
    pub fn is_zcnet(self) -> bool {
        matches!(self, Side::Zcnet(_) | Side::ZcnetDpdk(_))
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Side {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// One window of one workload on one side.
#[derive(Clone, Debug, Serialize)]
pub struct TapSample {
    pub workload: &'static str,
    pub side: Side,
    pub repetition: usize,
    #[serde(flatten)]
    pub sample: Sample,
    /// RX: frames the injector got into the tap.
    pub offered_frames: Option<u64>,
    /// RX through zcnet: frames the guest received that were not the frame
    /// sent (cut short), over the whole run; not in `frames` or `bytes`.
    pub damaged_frames: Option<u64>,
    /// zcnet's own frame counter of each queue pair over the whole run
    /// (warm-up included), from its metrics.
    pub zcnet_queue_frames: Option<Vec<u64>>,
    /// Which attempt this window is (windows disturbed by other load are
    /// measured again; the least disturbed is kept).
    pub attempts: usize,
}

/// zcnet's CPU time with a connected guest and no traffic.
#[derive(Clone, Debug, Serialize)]
pub struct IdleSample {
    pub repetition: usize,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// The sample of a window; fails if the frames that arrived were not the
/// frames sent (RX frames can be segmented on the way).
pub(super) fn sample(
    workload: Workload,
    side: Side,
    repetition: usize,
    a: &Reading,
    b: &Reading,
) -> Result<TapSample, MeasureError> {
    let sample = Sample::between(a, b);
    let (frames, bytes) = (sample.frames, sample.bytes);
    let expected = workload.frame_len();
    let average = bytes as f64 / frames as f64;
    // A frame that spans several RX buffers may straddle the window's ends.
    if frames > 0 && (average - expected as f64).abs() > expected as f64 / 50.0 {
        return Err(MeasureError::FrameSize {
            expected,
            got: average,
        });
    }
    Ok(TapSample {
        workload: workload.id(),
        side,
        repetition,
        sample,
        offered_frames: (workload.direction() == Direction::Rx).then(|| b.offered - a.offered),
        damaged_frames: None,
        zcnet_queue_frames: None,
        attempts: 1,
    })
}

/// zcnet on a fresh tap in a fresh namespace, with a fake guest connected
/// over its vhost-user socket and every ring started.
struct ZcnetSetup {
    // Dropped in this order: the guest disconnects, zcnet is killed, the
    // namespace (and with it the tap) goes.
    guest: FakeGuest,
    daemon: Daemon,
    ns: NetNs,
}

impl ZcnetSetup {
    fn new(bin: &ZcnetBin, pairs: usize, engine: Engine) -> ZcnetSetup {
        let ns = NetNs::new();
        let daemon = Daemon::start(
            bin,
            &ns,
            TAP,
            &[
                "--queue-pairs",
                &pairs.to_string(),
                "--io-engine",
                engine.arg(),
            ],
        );
        // zcnet opens (here: creates) the tap before it listens.
        ns.ip(&["link", "set", TAP, "up"]);
        let opts = GuestOpts {
            pairs,
            queue_size: QUEUE_SIZE,
            ..GuestOpts::default()
        };
        let guest = FakeGuest::connect(&daemon.socket, &opts);
        ZcnetSetup { guest, daemon, ns }
    }
}

/// Runs `workload` through zcnet with `engine` once.
pub fn zcnet(
    bin: &ZcnetBin,
    workload: Workload,
    engine: Engine,
    repetition: usize,
    timing: Timing,
) -> Result<TapSample, MeasureError> {
    let pairs = workload.pairs();
    let mut s = ZcnetSetup::new(bin, pairs, engine);
    require(
        &s.guest,
        &[
            (guest::VERSION_1, "VERSION_1"),
            (guest::EVENT_IDX, "EVENT_IDX"),
            (guest::MRG_RXBUF, "MRG_RXBUF"),
        ],
    )?;
    let traffic = workload.traffic();
    if traffic.gso {
        require(
            &s.guest,
            match workload.direction() {
                Direction::Tx => &[(guest::CSUM, "CSUM"), (guest::HOST_TSO4, "HOST_TSO4")],
                Direction::Rx => &[
                    (guest::GUEST_CSUM, "GUEST_CSUM"),
                    (guest::GUEST_TSO4, "GUEST_TSO4"),
                ],
            },
        )?;
    }
    let queue_size = usize::from(QUEUE_SIZE);
    let delivered = Arc::new(Counters::default());
    let damaged = Arc::new(Counters::default());
    let offered = Arc::new(Counters::default());
    let mut rings = take_rings(&mut s.guest);
    let mut crew = Crew::new();
    match workload.direction() {
        Direction::Tx => {
            let packet = traffic.with_hdr();
            for pair in 0..pairs {
                let bufs = driver::fill_buffers(&mut s.guest, queue_size, &packet);
                let ring = rings[2 * pair + 1].take().expect("TX ring");
                spawn_guest_tx(&mut crew, pair, ring, bufs, &delivered);
            }
        }
        Direction::Rx => {
            let len = workload.rx_buffer_len();
            let bufs = driver::alloc_buffers(&mut s.guest, queue_size, len);
            let ring = rings[0].take().expect("RX ring");
            let mem = s.guest.mem.clone();
            let (whole, damaged) = (Arc::clone(&delivered), Arc::clone(&damaged));
            let frame_len = workload.frame_len();
            crew.spawn("guest-rx0".into(), Role::Feeder, move |stop| {
                driver::run_rx(ring, mem, bufs, frame_len, &whole, &damaged, stop);
                Ok(())
            });
            spawn_injector(&mut crew, &s.ns, workload, &offered);
        }
    }
    let (a, b) = zcnet_window(timing, &s.daemon, crew, &delivered, &offered)?;
    let mut sample = sample(workload, Side::Zcnet(engine), repetition, &a, &b)?;
    if workload.direction() == Direction::Rx {
        let (whole, damaged) = (delivered.read().0, damaged.read().0);
        if damaged > whole {
            return Err(MeasureError::MostlyDamaged { whole, damaged });
        }
        sample.damaged_frames = Some(damaged);
    }
    let m = checked_metrics(&mut s.daemon, &s.ns, workload.direction(), pairs)?;
    let frames = match workload.direction() {
        Direction::Tx => "zcnet_tx_frames_total",
        Direction::Rx => "zcnet_rx_frames_total",
    };
    sample.zcnet_queue_frames = Some((0..pairs).map(|q| Daemon::metric(&m, frames, q)).collect());
    drop(rings);
    Ok(sample)
}

/// Runs `workload` on the bench's own tap once, as `side` (one of the raw
/// sides) says.
pub fn raw(
    workload: Workload,
    side: Side,
    repetition: usize,
    timing: Timing,
) -> Result<TapSample, MeasureError> {
    let pairs = workload.pairs();
    let ns = NetNs::new();
    let tap = if side == Side::RawPlain {
        RawTap::create_plain(&ns, TAP)
    } else {
        RawTap::create(&ns, TAP, pairs)
    };
    let tap = Arc::new(tap.map_err(MeasureError::RawTap)?);
    ns.ip(&["link", "set", TAP, "up"]);
    let traffic = workload.traffic();
    let delivered = Arc::new(Counters::default());
    let offered = Arc::new(Counters::default());
    let queue_size = usize::from(QUEUE_SIZE);
    let mut crew = Crew::new();
    match workload.direction() {
        Direction::Tx => {
            let (packet, hdr_len) = if side == Side::RawPlain {
                (traffic.frame.clone(), 0)
            } else {
                (traffic.with_hdr(), HDR_LEN)
            };
            let pool = Arc::new(vec![packet; queue_size]);
            for q in 0..pairs {
                let (tap, pool, counters) =
                    (Arc::clone(&tap), Arc::clone(&pool), Arc::clone(&delivered));
                crew.spawn(format!("{side}-writer{q}"), Role::Measured, move |stop| {
                    if side == Side::RawUring {
                        raw_tap::uring_write_loop(tap.queue(q), &pool, &counters, stop)
                            .map_err(|e| format!("io_uring writes to the tap: {e}"))
                    } else {
                        raw_tap::write_loop(tap.queue(q), &pool, hdr_len, &counters, stop)
                            .map_err(|e| format!("writev to the tap: {e}"))
                    }
                });
            }
        }
        Direction::Rx => {
            let (reader_tap, counters) = (Arc::clone(&tap), Arc::clone(&delivered));
            crew.spawn("raw-reader0".into(), Role::Measured, move |stop| {
                raw_tap::read_loop(reader_tap.queue(0), &counters, stop)
                    .map_err(|e| format!("readv from the tap: {e}"))
            });
            spawn_injector(&mut crew, &ns, workload, &offered);
        }
    }
    let (a, b) = window(
        timing,
        &delivered,
        &offered,
        || crew.cpu(Role::Measured),
        || crew.cpu(Role::Feeder),
    )?;
    crew.finish()?;
    sample(workload, side, repetition, &a, &b)
}

/// The host side of an RX workload: a packet socket on the tap.
fn spawn_injector(crew: &mut Crew, ns: &NetNs, workload: Workload, offered: &Arc<Counters>) {
    let traffic = workload.traffic();
    let sock = PacketSock::open(ns, TAP, traffic.gso);
    // Straight into the tap: the qdisc is neither zcnet's nor the raw
    // reader's cost.
    sock.bypass_qdisc();
    let packet = traffic.for_packet_socket();
    let (frame_len, offered) = (traffic.frame.len(), Arc::clone(offered));
    crew.spawn("injector".into(), Role::Feeder, move |stop| {
        injector::run(&sock, &packet, frame_len, &offered, stop)
            .map_err(|e| format!("AF_PACKET send: {e}"))
    });
}

/// zcnet with a guest connected, every ring started and RX buffers posted,
/// and no traffic.
pub fn idle(bin: &ZcnetBin, repetition: usize, timing: Timing) -> Result<IdleSample, MeasureError> {
    let mut s = ZcnetSetup::new(bin, 1, Engine::Uring);
    let queue_size = usize::from(QUEUE_SIZE);
    s.guest.post_rx(0, queue_size, 2048);
    let nothing = Counters::default();
    let (a, b) = zcnet_window(timing, &s.daemon, Crew::new(), &nothing, &nothing)?;
    alive(&mut s.daemon)?;
    Ok(IdleSample {
        repetition,
        seconds: (b.at - a.at).as_secs_f64(),
        cpu_seconds: b.cpu - a.cpu,
    })
}
