//! One measurement of a VXLAN workload: zcnet with `--vxlan-vni` in a
//! fresh namespace whose route to the remote VTEPs leaves through an `ifb`
//! device, a fake guest with 256 MiB of memory whose TX buffers fill it, a
//! warm-up that passes at least once through every buffer, the window,
//! then zcnet's own counters. Built as `udp` is; see there.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::driver::{self, Counters};
use zcnet_harness::guest::{self, FakeGuest, GuestOpts};
use zcnet_harness::vxlan_lab::{self, Path, VxlanLab};

use super::udp::ZcnetTxCounters;
use super::{
    alive, checked_metrics, require, spawn_guest_tx, take_rings, zcnet_window, MeasureError,
    Timing, QUEUE_SIZE,
};
use crate::crew::Crew;
use crate::sample::Sample;
use crate::udp::{self, TxMode};
use crate::vxlan::{VxlanCase, VxlanFrames};
use crate::workload::Direction;

const WARMUP_LIMIT: Duration = Duration::from_secs(30);
const WARMUP_POLL: Duration = Duration::from_millis(10);

/// One window of one VXLAN workload.
#[derive(Clone, Debug, Serialize)]
pub struct VxlanSample {
    pub case: VxlanCase,
    /// Bytes of each guest frame, without the virtio-net header.
    pub frame_len: usize,
    pub repetition: usize,
    pub buffers: usize,
    pub buffer_span_bytes: u64,
    pub warmup_seconds: f64,
    /// Frames and bytes are the guest's (a TSO frame is one frame).
    #[serde(flatten)]
    pub sample: Sample,
    pub zcnet: ZcnetTxCounters,
    /// Inner frames zcnet put on the wire over the whole run (each TSO
    /// segment counts).
    pub inner_frames: u64,
}

/// Runs `case` through zcnet once.
pub fn run(
    bin: &ZcnetBin,
    case: VxlanCase,
    repetition: usize,
    timing: Timing,
) -> Result<VxlanSample, MeasureError> {
    let mut lab = VxlanLab::new(bin, Path::Ifb, &case.zcnet_args());
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
    match case.frames {
        VxlanFrames::Mtu => {}
        VxlanFrames::Segmented => require(&guest, &[(guest::CSUM, "CSUM")])?,
        VxlanFrames::Tso => require(
            &guest,
            &[(guest::CSUM, "CSUM"), (guest::HOST_TSO4, "HOST_TSO4")],
        )?,
    }
    let packet = case.packet();
    let room = guest.buffer_room();
    let count = udp::cold_buffers(room, packet.len());
    let bufs = driver::fill_buffers(&mut guest, count, &packet);
    let span = room - guest.buffer_room();
    let mut rings = take_rings(&mut guest);
    let ring = rings[1].take().expect("TX ring");
    let delivered = Arc::new(Counters::default());
    let mut crew = Crew::new();
    let started = Instant::now();
    spawn_guest_tx(&mut crew, 0, ring, bufs, &delivered);

    while delivered.read().0 < count as u64 {
        let waited = started.elapsed();
        alive(&mut lab.daemon)?;
        if crew.any_ended() {
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
    let m = checked_metrics(&mut lab.daemon, &lab.ns, Direction::Tx, 1)?;
    let get = |name: &str| Daemon::metric(&m, name, 0);
    let zcnet = ZcnetTxCounters {
        frames: get("zcnet_tx_frames_total"),
        zerocopy_sends: get("zcnet_tx_zerocopy_sends_total"),
        zerocopy_completed: get("zcnet_tx_zerocopy_completed_total"),
        zerocopy_copied: get("zcnet_tx_zerocopy_copied_total"),
        copy_fallbacks: get("zcnet_tx_copy_fallbacks_total"),
        lent_chains_max: get("zcnet_tx_lent_chains_max"),
    };
    if case.mode == TxMode::ZeroCopy && zcnet.zerocopy_sends == 0 {
        return Err(MeasureError::NothingLent {
            frames: zcnet.frames,
            log: lab.daemon.log_text(),
        });
    }
    let inner_frames = vxlan_lab::sum(&m, "zcnet_vxlan_tx_frames_total", &[]);
    drop(rings);
    drop(guest);
    Ok(VxlanSample {
        case,
        frame_len: case.frame_len(),
        repetition,
        buffers: count,
        buffer_span_bytes: span,
        warmup_seconds: (a.at - started).as_secs_f64(),
        sample: Sample::between(&a, &b),
        zcnet,
        inner_frames,
    })
}
