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

use crate::cpu::{self, CpuOf};
use crate::crew::{Crew, Role};
use crate::measure::{self, MeasureError, Timing, QUEUE_SIZE};
use crate::udp::{self, TxMode, UdpCase};
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::driver::{self, Counters};
use zcnet_harness::guest::{self, FakeGuest, GuestOpts};
use zcnet_harness::ring::Ring;
use zcnet_harness::udp_lab::{Path, UdpLab};

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
    pub seconds: f64,
    pub frames: u64,
    /// Frame bytes, without the virtio-net header.
    pub bytes: u64,
    /// CPU time of the whole zcnet process.
    pub cpu_seconds: f64,
    /// CPU time of the fake guest's TX driver.
    pub feeder_cpu_seconds: f64,
    pub machine_busy_seconds: f64,
    pub steal_seconds: f64,
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
    for (bit, name) in [
        (guest::VERSION_1, "VERSION_1"),
        (guest::EVENT_IDX, "EVENT_IDX"),
    ] {
        if guest.acked & bit == 0 {
            return Err(MeasureError::Feature(name));
        }
    }
    let packet = case.packet();
    let room = guest.buffer_room();
    let count = udp::cold_buffers(room, packet.len());
    let bufs = driver::fill_buffers(&mut guest, count, &packet);
    let span = room - guest.buffer_room();
    // rings[1] is TX; the RX ring stays here, without buffers (an ifb
    // delivers nothing).
    let mut rings: Vec<Option<Ring>> = std::mem::take(&mut guest.rings)
        .into_iter()
        .map(Some)
        .collect();
    let ring = rings[1].take().expect("TX ring");
    let delivered = Arc::new(Counters::default());
    let mut crew = Crew::new();
    let counters = Arc::clone(&delivered);
    let started = Instant::now();
    crew.spawn("guest-tx0".into(), Role::Feeder, move |stop| {
        driver::run_tx(ring, bufs, &counters, stop);
        Ok(())
    });

    // Every buffer once: zcnet maps each page on first touch, and the
    // guest's own writes at setup have left the latest buffers in cache.
    while delivered.read().0 < count as u64 {
        let waited = started.elapsed();
        if !lab.daemon.is_running() {
            return Err(MeasureError::ZcnetExited(lab.daemon.log_text()));
        }
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
    let pid = lab.daemon.pid();
    let nothing = Counters::default();
    let (a, b) = measure::window(
        timing,
        &delivered,
        &nothing,
        || cpu::seconds(CpuOf::Process(pid)),
        || crew.cpu(Role::Feeder),
    )?;
    crew.finish()?;
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
        seconds: (b.at - a.at).as_secs_f64(),
        frames: b.frames - a.frames,
        bytes: b.bytes - a.bytes,
        cpu_seconds: b.cpu - a.cpu,
        feeder_cpu_seconds: b.feeder_cpu - a.feeder_cpu,
        machine_busy_seconds: b.machine_busy - a.machine_busy,
        steal_seconds: b.steal - a.steal,
        zcnet,
    })
}

/// zcnet's TX counters; fails if it dropped a frame or found a malformed
/// chain.
fn zcnet_counters(lab: &mut UdpLab) -> Result<ZcnetTxCounters, MeasureError> {
    if !lab.daemon.is_running() {
        return Err(MeasureError::ZcnetExited(lab.daemon.log_text()));
    }
    let m = Daemon::scrape(&lab.ns);
    let get = |name: &str| Daemon::metric(&m, name, 0);
    let (dropped, malformed) = (
        get("zcnet_tx_dropped_total"),
        get("zcnet_malformed_chains_total"),
    );
    if dropped > 0 || malformed > 0 {
        return Err(MeasureError::ZcnetRefused { dropped, malformed });
    }
    Ok(ZcnetTxCounters {
        frames: get("zcnet_tx_frames_total"),
        zerocopy_sends: get("zcnet_tx_zerocopy_sends_total"),
        zerocopy_completed: get("zcnet_tx_zerocopy_completed_total"),
        zerocopy_copied: get("zcnet_tx_zerocopy_copied_total"),
        copy_fallbacks: get("zcnet_tx_copy_fallbacks_total"),
        lent_chains_max: get("zcnet_tx_lent_chains_max"),
    })
}
