//! One measurement: zcnet, or the raw tap, in a fresh namespace with the
//! workload's threads running; a warm-up, then frames, bytes and CPU time
//! read at both ends of the window; then everything stopped and, for
//! zcnet, its own counters checked.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::cpu::{self, CpuOf};
use crate::crew::{Crew, Role};
use crate::injector;
use crate::raw_tap::{self, RawTap};
use crate::workload::{Direction, Workload};
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::driver::{self, Counters};
use zcnet_harness::frames::PacketSock;
use zcnet_harness::guest::{self, FakeGuest, GuestOpts};
use zcnet_harness::netns::NetNs;
use zcnet_harness::ring::Ring;

/// The tap's name inside each namespace (zcnet's and the raw tap's).
const TAP: &str = "zb0";
/// Entries of each of the fake guest's rings: what QEMU and
/// cloud-hypervisor give a virtio-net queue unless told otherwise.
pub const QUEUE_SIZE: u16 = 256;

#[derive(Debug, Error)]
pub enum MeasureError {
    #[error("cannot create the raw tap")]
    RawTap(#[source] io::Error),
    #[error("cannot read CPU time")]
    Cpu(#[source] io::Error),
    #[error("thread {name} failed: {why}")]
    Thread { name: String, why: String },
    #[error("the fake guest could not negotiate {0}, which this workload needs")]
    Feature(&'static str),
    #[error(
        "frames arrived with {got:.0} bytes on average instead of {expected}: \
         segmented or cut on the way"
    )]
    FrameSize { expected: usize, got: f64 },
    #[error(
        "most frames reached the fake guest with the wrong length ({damaged} against \
         {whole} whole): segmented or cut on the way"
    )]
    MostlyDamaged { whole: u64, damaged: u64 },
    #[error("zcnet exited during the run; its log:\n{0}")]
    ZcnetExited(String),
    #[error(
        "zcnet dropped {dropped} frames and counted {malformed} malformed chains: \
         the bench fed it something wrong"
    )]
    ZcnetRefused { dropped: u64, malformed: u64 },
    #[error(
        "the warm-up sent only {frames} of the {buffers} frames that pass once through \
         every buffer, in {seconds:.0} s: zcnet or the fake guest is stuck"
    )]
    WarmupStalled {
        frames: u64,
        buffers: usize,
        seconds: f64,
    },
    #[error(
        "zcnet ran with --zerocopy on but lent none of its {frames} frames \
         (SO_ZEROCOPY refused? see its log):\n{log}"
    )]
    NothingLent { frames: u64, log: String },
}

/// What carries the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The zcnet daemon, fed by the fake guest over vhost-user.
    Zcnet,
    /// The bench's own tap fds: the physical limit.
    Raw,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Zcnet => "zcnet",
            Side::Raw => "raw",
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
}

/// One window of one workload on one side.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub workload: &'static str,
    pub side: Side,
    pub repetition: usize,
    pub seconds: f64,
    pub frames: u64,
    /// Frame bytes, without the virtio-net header.
    pub bytes: u64,
    /// CPU time of what is measured: the whole zcnet process, or the raw
    /// tap's writer or reader threads.
    pub cpu_seconds: f64,
    /// CPU time of the bench's threads that feed it: the fake guest's
    /// drivers, the RX injector.
    pub feeder_cpu_seconds: f64,
    /// The whole machine's busy CPU time, all cores: what the measured
    /// and feeding threads do not account for is other load.
    pub machine_busy_seconds: f64,
    /// CPU time the hypervisor took from this machine's cores.
    pub steal_seconds: f64,
    /// RX: frames the injector got into the tap.
    pub offered_frames: Option<u64>,
    /// RX through zcnet: frames the guest received that were not the frame
    /// sent (cut short), over the whole run; not in `frames` or `bytes`.
    pub damaged_frames: Option<u64>,
    /// zcnet's own frame counter of each queue pair over the whole run
    /// (warm-up included), from its metrics.
    pub zcnet_queue_frames: Option<Vec<u64>>,
}

/// zcnet's CPU time with a connected guest and no traffic.
#[derive(Clone, Debug, Serialize)]
pub struct IdleSample {
    pub repetition: usize,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// What the window reads at each end.
pub struct Reading {
    pub at: Instant,
    pub frames: u64,
    pub bytes: u64,
    pub offered: u64,
    pub cpu: f64,
    pub feeder_cpu: f64,
    pub machine_busy: f64,
    pub steal: f64,
}

/// Warms up, then reads at both ends of the window.
pub fn window(
    timing: Timing,
    delivered: &Counters,
    offered: &Counters,
    cpu: impl Fn() -> io::Result<f64>,
    feeder_cpu: impl Fn() -> io::Result<f64>,
) -> Result<(Reading, Reading), MeasureError> {
    let read = || -> Result<Reading, MeasureError> {
        let (frames, bytes) = delivered.read();
        let at = Instant::now();
        let cpu = cpu().map_err(MeasureError::Cpu)?;
        let (machine_busy, steal) = cpu::machine().map_err(MeasureError::Cpu)?;
        Ok(Reading {
            at,
            frames,
            bytes,
            offered: offered.read().0,
            cpu,
            feeder_cpu: feeder_cpu().map_err(MeasureError::Cpu)?,
            machine_busy,
            steal,
        })
    };
    thread::sleep(timing.warmup);
    let start = read()?;
    thread::sleep(timing.window);
    Ok((start, read()?))
}

/// The sample of a window; fails if the frames that arrived were not the
/// frames sent (RX frames can be segmented on the way).
fn sample(
    workload: Workload,
    side: Side,
    repetition: usize,
    a: &Reading,
    b: &Reading,
) -> Result<Sample, MeasureError> {
    let (frames, bytes) = (b.frames - a.frames, b.bytes - a.bytes);
    let expected = workload.frame_len();
    let average = bytes as f64 / frames as f64;
    // A frame that spans several RX buffers may straddle the window's ends.
    if frames > 0 && (average - expected as f64).abs() > expected as f64 / 50.0 {
        return Err(MeasureError::FrameSize {
            expected,
            got: average,
        });
    }
    Ok(Sample {
        workload: workload.id(),
        side,
        repetition,
        seconds: (b.at - a.at).as_secs_f64(),
        frames,
        bytes,
        cpu_seconds: b.cpu - a.cpu,
        feeder_cpu_seconds: b.feeder_cpu - a.feeder_cpu,
        machine_busy_seconds: b.machine_busy - a.machine_busy,
        steal_seconds: b.steal - a.steal,
        offered_frames: (workload.direction() == Direction::Rx).then(|| b.offered - a.offered),
        damaged_frames: None,
        zcnet_queue_frames: None,
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
    fn new(bin: &ZcnetBin, pairs: usize) -> ZcnetSetup {
        let ns = NetNs::new();
        let daemon = Daemon::start(bin, &ns, TAP, &["--queue-pairs", &pairs.to_string()]);
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

    fn require(&self, bits: &[(u64, &'static str)]) -> Result<(), MeasureError> {
        for &(bit, name) in bits {
            if self.guest.acked & bit == 0 {
                return Err(MeasureError::Feature(name));
            }
        }
        Ok(())
    }

    fn alive(&mut self) -> Result<(), MeasureError> {
        if self.daemon.is_running() {
            Ok(())
        } else {
            Err(MeasureError::ZcnetExited(self.daemon.log_text()))
        }
    }

    /// zcnet's frame counter of each pair in `direction`; fails if it
    /// dropped a frame or found a malformed chain.
    fn check_counters(
        &mut self,
        direction: Direction,
        pairs: usize,
    ) -> Result<Vec<u64>, MeasureError> {
        self.alive()?;
        let m = Daemon::scrape(&self.ns);
        let (frames, dropped) = match direction {
            Direction::Tx => ("zcnet_tx_frames_total", "zcnet_tx_dropped_total"),
            Direction::Rx => ("zcnet_rx_frames_total", "zcnet_rx_dropped_total"),
        };
        let (mut lost, mut malformed) = (0, 0);
        let mut per_pair = Vec::new();
        for q in 0..pairs {
            per_pair.push(Daemon::metric(&m, frames, q));
            malformed += Daemon::metric(&m, "zcnet_malformed_chains_total", q);
            // The tap drops RX frames zcnet cannot take in time; zcnet
            // itself must not drop any.
            lost += Daemon::metric(&m, dropped, q);
        }
        if lost > 0 || malformed > 0 {
            return Err(MeasureError::ZcnetRefused {
                dropped: lost,
                malformed,
            });
        }
        Ok(per_pair)
    }
}

/// Runs `workload` through zcnet once.
pub fn zcnet(
    bin: &ZcnetBin,
    workload: Workload,
    repetition: usize,
    timing: Timing,
) -> Result<Sample, MeasureError> {
    let pairs = workload.pairs();
    let mut s = ZcnetSetup::new(bin, pairs);
    s.require(&[
        (guest::VERSION_1, "VERSION_1"),
        (guest::EVENT_IDX, "EVENT_IDX"),
        (guest::MRG_RXBUF, "MRG_RXBUF"),
    ])?;
    let traffic = workload.traffic();
    if traffic.gso {
        s.require(match workload.direction() {
            Direction::Tx => &[(guest::CSUM, "CSUM"), (guest::HOST_TSO4, "HOST_TSO4")],
            Direction::Rx => &[
                (guest::GUEST_CSUM, "GUEST_CSUM"),
                (guest::GUEST_TSO4, "GUEST_TSO4"),
            ],
        })?;
    }
    let queue_size = usize::from(QUEUE_SIZE);
    let delivered = Arc::new(Counters::default());
    let damaged = Arc::new(Counters::default());
    let offered = Arc::new(Counters::default());
    // rings[2 * pair] is RX, rings[2 * pair + 1] is TX. Unused rings stay
    // here until the end.
    let mut rings: Vec<Option<Ring>> = std::mem::take(&mut s.guest.rings)
        .into_iter()
        .map(Some)
        .collect();
    let mut crew = Crew::new();
    match workload.direction() {
        Direction::Tx => {
            let packet = traffic.with_hdr();
            for pair in 0..pairs {
                let bufs = driver::fill_buffers(&mut s.guest, queue_size, &packet);
                let ring = rings[2 * pair + 1].take().expect("TX ring");
                let counters = Arc::clone(&delivered);
                crew.spawn(format!("guest-tx{pair}"), Role::Feeder, move |stop| {
                    driver::run_tx(ring, bufs, &counters, stop);
                    Ok(())
                });
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
    let pid = s.daemon.pid();
    let (a, b) = window(
        timing,
        &delivered,
        &offered,
        || cpu::seconds(CpuOf::Process(pid)),
        || crew.cpu(Role::Feeder),
    )?;
    crew.finish()?;
    let mut sample = sample(workload, Side::Zcnet, repetition, &a, &b)?;
    if workload.direction() == Direction::Rx {
        let (whole, damaged) = (delivered.read().0, damaged.read().0);
        if damaged > whole {
            return Err(MeasureError::MostlyDamaged { whole, damaged });
        }
        sample.damaged_frames = Some(damaged);
    }
    sample.zcnet_queue_frames = Some(s.check_counters(workload.direction(), pairs)?);
    drop(rings);
    Ok(sample)
}

/// Runs `workload` on the bench's own tap once.
pub fn raw(workload: Workload, repetition: usize, timing: Timing) -> Result<Sample, MeasureError> {
    let pairs = workload.pairs();
    let ns = NetNs::new();
    let tap = Arc::new(RawTap::create(&ns, TAP, pairs).map_err(MeasureError::RawTap)?);
    ns.ip(&["link", "set", TAP, "up"]);
    let traffic = workload.traffic();
    let delivered = Arc::new(Counters::default());
    let offered = Arc::new(Counters::default());
    let queue_size = usize::from(QUEUE_SIZE);
    let mut crew = Crew::new();
    match workload.direction() {
        Direction::Tx => {
            let pool = vec![traffic.with_hdr(); queue_size];
            let pool = Arc::new(pool);
            for q in 0..pairs {
                let (tap, pool, counters) =
                    (Arc::clone(&tap), Arc::clone(&pool), Arc::clone(&delivered));
                crew.spawn(format!("raw-writer{q}"), Role::Measured, move |stop| {
                    raw_tap::write_loop(tap.queue(q), &pool, &counters, stop)
                        .map_err(|e| format!("writev to the tap: {e}"))
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
    sample(workload, Side::Raw, repetition, &a, &b)
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
    let mut s = ZcnetSetup::new(bin, 1);
    let queue_size = usize::from(QUEUE_SIZE);
    s.guest.post_rx(0, queue_size, 2048);
    let pid = s.daemon.pid();
    let nothing = Counters::default();
    let (a, b) = window(
        timing,
        &nothing,
        &nothing,
        || cpu::seconds(CpuOf::Process(pid)),
        || Ok(0.0),
    )?;
    s.alive()?;
    Ok(IdleSample {
        repetition,
        seconds: (b.at - a.at).as_secs_f64(),
        cpu_seconds: b.cpu - a.cpu,
    })
}
