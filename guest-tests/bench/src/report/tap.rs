//! The tap workloads' part of the report: zcnet against the raw tap for
//! each workload, throughput and CPU time, and zcnet idle.

use std::fmt::Write as _;

use serde::Serialize;

use super::{cell, dagger, load_line, ratio, si, sig3, Run, Table};
use crate::measure::tap::{Side, TapSample};
use crate::measure::QUEUE_SIZE;
use crate::sample::{Load, Spread, Summary, DISTURBED};
use crate::workload::{Direction, Workload};

/// One side of one workload over its repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct SideSummary {
    #[serde(flatten)]
    pub summary: Summary,
    /// RX: the share of the frames the injector got into the tap that
    /// reached the reader (the tap drops the rest).
    pub delivered_share: Option<Spread>,
}

impl SideSummary {
    fn of(samples: &[&TapSample]) -> Option<SideSummary> {
        let windows: Vec<_> = samples.iter().map(|s| &s.sample).collect();
        Some(SideSummary {
            summary: Summary::of(&windows)?,
            delivered_share: Spread::of(
                samples
                    .iter()
                    .filter_map(|s| s.offered_frames.map(|o| s.sample.frames as f64 / o as f64)),
            ),
        })
    }
}

/// One tap workload, both sides.
#[derive(Clone, Debug, Serialize)]
pub struct TapRow {
    pub workload: &'static str,
    pub title: &'static str,
    pub direction: Direction,
    /// Bytes of each frame on the wire.
    pub frame_len: usize,
    pub zcnet: Option<SideSummary>,
    pub raw: Option<SideSummary>,
    /// Median zcnet frames/s over median raw frames/s.
    pub zcnet_over_raw: Option<f64>,
    /// RX: frames zcnet delivered cut short, over every repetition.
    pub zcnet_damaged_frames: u64,
}

pub fn summarize(samples: &[TapSample]) -> Vec<TapRow> {
    Workload::ALL
        .iter()
        .map(|&w| {
            let side = |side: Side| {
                let of: Vec<&TapSample> = samples
                    .iter()
                    .filter(|s| s.workload == w.id() && s.side == side)
                    .collect();
                SideSummary::of(&of)
            };
            let (zcnet, raw) = (side(Side::Zcnet), side(Side::Raw));
            let zcnet_over_raw = zcnet.as_ref().zip(raw.as_ref()).map(|(z, r)| {
                z.summary.frames_per_second.median / r.summary.frames_per_second.median
            });
            TapRow {
                workload: w.id(),
                title: w.title(),
                direction: w.direction(),
                frame_len: w.frame_len(),
                zcnet,
                raw,
                zcnet_over_raw,
                zcnet_damaged_frames: samples
                    .iter()
                    .filter(|s| s.workload == w.id())
                    .filter_map(|s| s.damaged_frames)
                    .sum(),
            }
        })
        .collect()
}

/// The tap sections of the report.
pub fn markdown(w: &mut String, run: &Run) {
    let _ = writeln!(w, "## Throughput\n");
    let mut disturbed_any = false;
    let mut t = Table::new(
        w,
        "workload | zcnet frames/s | zcnet Gbit/s | raw tap frames/s | raw tap Gbit/s | \
         zcnet/raw",
    );
    for s in &run.summary {
        let (z, r) = (summary(&s.zcnet), summary(&s.raw));
        let disturbed = run
            .samples
            .iter()
            .any(|x| x.workload == s.workload && x.sample.disturbed());
        disturbed_any |= disturbed;
        t.row(&[
            format!("{}{}", s.title, dagger(disturbed)),
            cell(z.map(|z| &z.frames_per_second), si),
            cell(z.map(|z| &z.gbit_per_second), sig3),
            cell(r.map(|r| &r.frames_per_second), si),
            cell(r.map(|r| &r.gbit_per_second), sig3),
            ratio(s.zcnet_over_raw),
        ]);
    }
    for &line in &run.not_measured {
        t.row(&[line, "", "", "", "", ""]);
    }
    let _ = writeln!(w);
    if disturbed_any {
        let _ = writeln!(
            w,
            "† In at least one window of this workload, more than {DISTURBED} cores were \
             busy with other work (other processes, interrupts, kernel threads); bench.json \
             has every window's machine_busy_seconds.\n"
        );
    }

    let _ = writeln!(w, "## CPU time\n");
    let mut t = Table::new(
        w,
        "workload | zcnet CPU s per 10^6 frames | zcnet CPU s per GB | zcnet cores busy | \
         raw tap CPU s per 10^6 frames | raw tap CPU s per GB",
    );
    for s in &run.summary {
        let (z, r) = (summary(&s.zcnet), summary(&s.raw));
        t.row(&[
            s.title.to_owned(),
            cell(z.map(|z| &z.cpu_seconds_per_mframe), sig3),
            cell(z.map(|z| &z.cpu_seconds_per_gb), sig3),
            cell(z.map(|z| &z.cores_busy), sig3),
            cell(r.map(|r| &r.cpu_seconds_per_mframe), sig3),
            cell(r.map(|r| &r.cpu_seconds_per_gb), sig3),
        ]);
    }
    let _ = writeln!(
        w,
        "\nRX: share of the injected frames that reached the reader (the tap drops \
         what the reader does not take in time):"
    );
    for s in run.summary.iter().filter(|s| s.direction == Direction::Rx) {
        let share = |side: &Option<SideSummary>| {
            let pct = side
                .as_ref()
                .and_then(|x| x.delivered_share)
                .map(|d| d.scaled(100.0));
            cell(pct.as_ref(), |x| format!("{x:.1}"))
        };
        let _ = writeln!(
            w,
            "- {}: zcnet {} %, raw tap {} %",
            s.title,
            share(&s.zcnet),
            share(&s.raw)
        );
    }
    for s in run.summary.iter().filter(|s| s.zcnet_damaged_frames > 0) {
        let whole: u64 = run
            .samples
            .iter()
            .filter(|x| x.workload == s.workload && x.side == Side::Zcnet)
            .map(|x| x.sample.frames)
            .sum();
        let _ = writeln!(
            w,
            "\n**{}: zcnet delivered {} frames cut short** (beside {} whole ones in the \
             windows), each in fewer buffers than its {} bytes need: the fake guest had posted \
             too few, and the tap's readv returns the bytes it copied, not the frame's length. \
             They are left out of the figures above.",
            s.title, s.zcnet_damaged_frames, whole, s.frame_len
        );
    }
    load_line(
        w,
        "windows",
        "the measured and feeding threads do not account for: other processes, interrupts, \
         kernel threads",
        &Load::of(run.samples.iter().map(|s| &s.sample)),
    );
    let idle_cpu = Spread::of(run.idle.iter().map(|i| i.cpu_seconds));
    let idle_share = Spread::of(run.idle.iter().map(|i| i.cpu_seconds / i.seconds * 100.0));
    let _ = writeln!(
        w,
        "\nIdle (guest connected, rings started, RX buffers posted, no traffic): \
         zcnet used {} s of CPU per {} s window ({} % of one core).\n",
        cell(idle_cpu.as_ref(), sig3),
        sig3(run.window_seconds),
        cell(idle_share.as_ref(), sig3),
    );

    let _ = writeln!(w, "## How to read the tap rows\n");
    for note in notes() {
        let _ = writeln!(w, "- {note}");
    }
    let _ = writeln!(w);
}

/// The rates of one side, if it ran.
fn summary(side: &Option<SideSummary>) -> Option<&Summary> {
    side.as_ref().map(|s| &s.summary)
}

fn notes() -> [String; 7] {
    [
        format!(
            "zcnet: the real daemon on a tap in its own network namespace, fed over its \
             vhost-user socket by the fake guest (memfd memory, split rings of {QUEUE_SIZE}, \
             EVENT_IDX), one thread per ring. TX keeps the ring full of the same frame, one \
             descriptor per frame; with the ring full it sleeps until zcnet's call, as a \
             guest's stopped queue does. RX keeps {QUEUE_SIZE} buffers posted (2 KiB; 4 KiB \
             for GSO, so one frame fills 16)."
        ),
        format!(
            "raw tap: the physical limit, a tap of the same kind (multi-queue, 12-byte vnet \
             header, offloads CSUM|TSO4|TSO6) in its own namespace. TX: one thread per queue \
             writes the same frames with the same header with writev, cycling through \
             {QUEUE_SIZE} copies as the guest cycles through its buffers. RX: one thread reads \
             with readv."
        ),
        "TX frames go from the tap into the namespace's stack, which drops them (they are \
         not addressed to it): the same for zcnet and the raw writer. RX frames are sent into \
         the tap by one AF_PACKET thread (qdisc bypassed, PACKET_VNET_HDR for GSO) as fast as \
         it can: the same for both. When the reader takes all of it, that thread set the \
         rate; on a 2-core machine zcnet then also shares the cores with the fake guest, so \
         compare RX by CPU per frame."
            .into(),
        "The 64 KiB GSO frames are 65,214 bytes (45 segments of 1448): the kernel segments \
         any frame of 64 KiB or more sent into a device in software."
            .into(),
        "Gbit/s and per-GB figures count frame bytes without the virtio-net header; GB is \
         10^9 bytes."
            .into(),
        "CPU: utime + stime from /proc in clock ticks, over the window: the whole zcnet \
         process (its system time includes the tap's and the stack's work done in its \
         threads), or the raw tap's writer/reader threads. The fake guest and the injector \
         are not counted (bench.json: feeder_cpu_seconds)."
            .into(),
        "Timing is not asserted: numbers vary with the machine and what else runs on it.".into(),
    ]
}
