//! One measurement of a UDP workload: zcnet with `--udp` in a fresh
//! namespace whose route to the peer leaves through an `ifb` device, a
//! fake guest with 256 MiB of memory whose TX buffers fill it, a warm-up
//! that passes at least once through every buffer, the window, and then
//! zcnet's own counters (frames lent, completions the kernel reported,
//! and how many of those it copied after all).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::driver::{self, Counters};
use zcnet_harness::guest::{self, FakeGuest, GuestOpts};
use zcnet_harness::udp_lab::{Path, UdpLab};

use super::{
    alive, checked_metrics, require, spawn_guest_tx, take_rings, zcnet_window, MeasureError,
    Timing, QUEUE_SIZE,
};
use crate::crew::Crew;
use crate::sample::Sample;
use crate::udp::{self, TxMode, UdpCase};
use crate::workload::Direction;

/// The longest the warm-up waits for one pass through every buffer.
const WARMUP_LIMIT: Duration = Duration::from_secs(30);
/// How often the warm-up looks at the frame counter.
const WARMUP_POLL: Duration = Duration::from_millis(10);

/// zcnet's TX counters of queue pair 0, scraped after the window (so over
/// the whole run, warm-up included).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ZcnetTxCounters {
    pub frames: u64,
    pub zerocopy_sends: u64,
    /// Sends the kernel reported released (`zcnet_tx_zerocopy_completed_total`).
    pub zerocopy_completed: u64,
    /// Of those, the kernel copied after all (`zcnet_tx_zerocopy_copied_total`).
    pub zerocopy_copied: u64,
    /// Frames copied that could have been lent: the cap on lent chains,
    /// ENOBUFS.
    pub copy_fallbacks: u64,
    /// The most chains lent at once.
    pub lent_chains_max: u64,
}

/// One window of one UDP workload.
#[derive(Clone, Debug, Serialize)]
pub struct UdpSample {
    pub mode: TxMode,
    /// Bytes of each Ethernet frame (the datagram's payload).
    pub frame_len: usize,
    pub repetition: usize,
    /// TX buffers the fake guest cycles through, and the guest memory they
    /// span.
    pub buffers: usize,
    pub buffer_span_bytes: u64,
    /// The warm-up as it ran: at least the plan's, and at least one pass
    /// through every buffer.
    pub warmup_seconds: f64,
    /// zcnet's whole process is measured; the fake guest's TX driver
    /// feeds it.
    #[serde(flatten)]
    pub sample: Sample,
    pub zcnet: ZcnetTxCounters,
}

/// Runs `case` through zcnet once.
pub fn run(
    bin: &ZcnetBin,
    case: UdpCase,
    repetition: usize,
    timing: Timing,
) -> Result<UdpSample, MeasureError> {
    let mut lab = UdpLab::new(bin, Path::Ifb, case.mode.zcnet_args());
    let opts = GuestOpts {
        queue_size: QUEUE_SIZE,
        ..GuestOpts::default()
    };
    let mut guest = FakeGuest::connect_with_mem(&lab.daemon.socket, &opts, udp::GUEST_MEM);
    require(
        &guest,
        &[
            (guest::VERSION_1, "VERSION_1"),
            (guest::EVENT_IDX, "EVENT_IDX"),
        ],
    )?;
    let packet = case.packet();
    let room = guest.buffer_room();
    let count = udp::cold_buffers(room, packet.len());
    let bufs = driver::fill_buffers(&mut guest, count, &packet);
    let span = room - guest.buffer_room();
    // rings[1] is TX; the RX ring stays here, without buffers (an ifb
    // delivers nothing).
    let mut rings = take_rings(&mut guest);
    let ring = rings[1].take().expect("TX ring");
    let delivered = Arc::new(Counters::default());
    let mut crew = Crew::new();
    let started = Instant::now();
    spawn_guest_tx(&mut crew, 0, ring, bufs, &delivered);

    // Every buffer once: zcnet maps each page on first touch, and the
    // guest's own writes at setup have left the latest buffers in cache.
    while delivered.read().0 < count as u64 {
        let waited = started.elapsed();
        alive(&mut lab.daemon)?;
        if crew.any_ended() {
            // Its failure, or its panic, is the error.
            crew.finish()?;
            return Err(MeasureError::Thread {
                name: "guest-tx0".into(),
                why: "returned before it was told to stop".into(),
            });
        }
        if waited > WARMUP_LIMIT {
            return Err(MeasureError::WarmupStalled {
                frames: delivered.read().0,
                buffers: count,
                seconds: waited.as_secs_f64(),
            });
        }
        thread::sleep(WARMUP_POLL); // polling a counter, with a deadline
    }
    let nothing = Counters::default();
    let (a, b) = zcnet_window(timing, &lab.daemon, crew, &delivered, &nothing)?;
    let zcnet = zcnet_counters(&mut lab)?;
    if case.mode == TxMode::ZeroCopy && zcnet.zerocopy_sends == 0 {
        return Err(MeasureError::NothingLent {
            frames: zcnet.frames,
            log: lab.daemon.log_text(),
        });
    }
    drop(rings);
    drop(guest);
    Ok(UdpSample {
        mode: case.mode,
        frame_len: case.frame_len,
        repetition,
        buffers: count,
        buffer_span_bytes: span,
        warmup_seconds: (a.at - started).as_secs_f64(),
        sample: Sample::between(&a, &b),
        zcnet,
    })
}

/// zcnet's TX counters; fails if it dropped a frame or found a malformed
/// chain.
fn zcnet_counters(lab: &mut UdpLab) -> Result<ZcnetTxCounters, MeasureError> {
    let m = checked_metrics(&mut lab.daemon, &lab.ns, Direction::Tx, 1)?;
    let get = |name: &str| Daemon::metric(&m, name, 0);
    Ok(ZcnetTxCounters {
        frames: get("zcnet_tx_frames_total"),
        zerocopy_sends: get("zcnet_tx_zerocopy_sends_total"),
        zerocopy_completed: get("zcnet_tx_zerocopy_completed_total"),
        zerocopy_copied: get("zcnet_tx_zerocopy_copied_total"),
        copy_fallbacks: get("zcnet_tx_copy_fallbacks_total"),
        lent_chains_max: get("zcnet_tx_lent_chains_max"),
    })
}

#[cfg(test)]
impl UdpSample {
    /// A one-second window of `frames` frames that cost zcnet
    /// `cpu_seconds` (for the report's and the chart's tests).
    pub fn fake(
        mode: TxMode,
        frame_len: usize,
        frames: u64,
        cpu_seconds: f64,
        feeder_cpu_seconds: f64,
        machine_busy_seconds: f64,
    ) -> UdpSample {
        UdpSample {
            mode,
            frame_len,
            repetition: 0,
            buffers: 10,
            buffer_span_bytes: 10 * frame_len as u64,
            warmup_seconds: 1.0,
            sample: Sample {
                seconds: 1.0,
                frames,
                bytes: frames * frame_len as u64,
                cpu_seconds,
                feeder_cpu_seconds,
                machine_busy_seconds,
                steal_seconds: 0.0,
            },
            zcnet: ZcnetTxCounters::default(),
        }
    }
}
