//! One measurement: zcnet (or the raw tap) in a fresh namespace with the
//! workload's threads running; a warm-up, then frames, bytes and CPU time
//! read at both ends of the window; then everything stopped and zcnet's
//! own counters checked. `tap` measures the tap workloads, `udp` the UDP
//! attachment; what they share is here.

pub mod dpdk;
pub mod stream;
pub mod tap;
pub mod udp;
pub mod vxlan;

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use zcnet_harness::daemon::Daemon;
use zcnet_harness::driver::{self, Buffers, Counters};
use zcnet_harness::guest::FakeGuest;
use zcnet_harness::netns::NetNs;
use zcnet_harness::ring::Ring;

use crate::cpu::{self, CpuOf};
use crate::crew::{Crew, Role};
use crate::workload::Direction;

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
    #[error("cannot run dpdk-testpmd")]
    Testpmd(#[source] io::Error),
    #[error("no frame from dpdk-testpmd reached zcnet in {seconds} s; testpmd's log:\n{log}")]
    TestpmdSilent { seconds: u64, log: String },
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
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
    window_of(timing, || Ok(delivered.read()), offered, cpu, feeder_cpu)
}

/// [`window`] with the frames and bytes delivered so far read by
/// `delivered` (e.g. from zcnet's own counters).
pub fn window_of(
    timing: Timing,
    delivered: impl Fn() -> Result<(u64, u64), MeasureError>,
    offered: &Counters,
    cpu: impl Fn() -> io::Result<f64>,
    feeder_cpu: impl Fn() -> io::Result<f64>,
) -> Result<(Reading, Reading), MeasureError> {
    let read = || -> Result<Reading, MeasureError> {
        let (frames, bytes) = delivered()?;
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

/// The window of a run through zcnet: the CPU time of its whole process
/// against the feeders of `crew`, which is stopped afterwards.
fn zcnet_window(
    timing: Timing,
    daemon: &Daemon,
    crew: Crew,
    delivered: &Counters,
    offered: &Counters,
) -> Result<(Reading, Reading), MeasureError> {
    let pid = daemon.pid();
    let readings = window(
        timing,
        delivered,
        offered,
        || cpu::seconds(CpuOf::Process(pid)),
        || crew.cpu(Role::Feeder),
    )?;
    crew.finish()?;
    Ok(readings)
}

/// Fails unless the fake guest negotiated every feature in `bits`.
fn require(guest: &FakeGuest, bits: &[(u64, &'static str)]) -> Result<(), MeasureError> {
    for &(bit, name) in bits {
        if guest.acked & bit == 0 {
            return Err(MeasureError::Feature(name));
        }
    }
    Ok(())
}

/// Fails with zcnet's log if it has exited.
fn alive(daemon: &mut Daemon) -> Result<(), MeasureError> {
    if daemon.is_running() {
        Ok(())
    } else {
        Err(MeasureError::ZcnetExited(daemon.log_text()))
    }
}

/// zcnet's metrics after a run; fails if it exited, dropped a frame in
/// `direction` or found a malformed chain on any of its first `pairs`
/// queue pairs.
fn checked_metrics(
    daemon: &mut Daemon,
    ns: &NetNs,
    direction: Direction,
    pairs: usize,
) -> Result<String, MeasureError> {
    alive(daemon)?;
    let m = Daemon::scrape(ns);
    let dropped_metric = match direction {
        Direction::Tx => "zcnet_tx_dropped_total",
        Direction::Rx => "zcnet_rx_dropped_total",
    };
    let (mut dropped, mut malformed) = (0, 0);
    for q in 0..pairs {
        malformed += Daemon::metric(&m, "zcnet_malformed_chains_total", q);
        // The tap drops RX frames zcnet cannot take in time; zcnet
        // itself must not drop any.
        dropped += Daemon::metric(&m, dropped_metric, q);
    }
    if dropped > 0 || malformed > 0 {
        return Err(MeasureError::ZcnetRefused { dropped, malformed });
    }
    Ok(m)
}

/// The fake guest's rings, to be handed to driver threads one by one:
/// `rings[2 * pair]` is RX, `rings[2 * pair + 1]` is TX. Unused rings stay
/// here until the end of the measurement.
fn take_rings(guest: &mut FakeGuest) -> Vec<Option<Ring>> {
    std::mem::take(&mut guest.rings)
        .into_iter()
        .map(Some)
        .collect()
}

/// Starts the fake guest's TX driver of queue pair `pair`, sending the
/// frame in `bufs` and counting what zcnet returns in `delivered`.
fn spawn_guest_tx(
    crew: &mut Crew,
    pair: usize,
    ring: Ring,
    bufs: Buffers,
    delivered: &Arc<Counters>,
) {
    let counters = Arc::clone(delivered);
    crew.spawn(format!("guest-tx{pair}"), Role::Feeder, move |stop| {
        driver::run_tx(ring, bufs, &counters, stop);
        Ok(())
    });
}
