//! The tap workloads' part of the report: zcnet with each TX engine and
//! frontend against the physical limits of the same kind of tap (one
//! writev per frame, a batched io_uring writer) and of a plain tap, for
//! each workload, throughput and CPU time; RX against one readv per frame;
//! the TCP stream attachment; and zcnet idle.

use std::fmt::Write as _;

use serde::Serialize;

use super::{cell, dagger, load_line, ratio, si, sig3, Run, Table};
use crate::measure::tap::{Engine, Side, TapSample};
use crate::measure::QUEUE_SIZE;
use crate::sample::{Load, Spread, Summary, DISTURBED};
use crate::workload::{Carrier, Direction, Workload};

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

/// One side of one workload, over its repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct SideRow {
    pub side: Side,
    #[serde(flatten)]
    pub summary: SideSummary,
}

/// One workload, every side that ran it.
#[derive(Clone, Debug, Serialize)]
pub struct TapRow {
    pub workload: &'static str,
    pub title: &'static str,
    pub direction: Direction,
    /// Bytes of each frame on the wire.
    pub frame_len: usize,
    /// In the workload's order of sides.
    pub sides: Vec<SideRow>,
    /// RX: frames zcnet delivered cut short, over every repetition.
    pub zcnet_damaged_frames: u64,
}

impl TapRow {
    pub fn get(&self, side: Side) -> Option<&Summary> {
        self.sides
            .iter()
            .find(|s| s.side == side)
            .map(|s| &s.summary.summary)
    }

    fn fps(&self, side: Side) -> Option<f64> {
        self.get(side).map(|s| s.frames_per_second.median)
    }

    /// Median frames/s of `a` over median frames/s of `b`.
    pub fn ratio(&self, a: Side, b: Side) -> Option<f64> {
        Some(self.fps(a)? / self.fps(b)?)
    }

    /// Median CPU per frame of `a` over that of `b`.
    fn cpu_ratio(&self, a: Side, b: Side) -> Option<f64> {
        let cpu = |s: Side| self.get(s).map(|x| x.cpu_seconds_per_mframe.median);
        Some(cpu(a)? / cpu(b)?)
    }
}

pub fn summarize(samples: &[TapSample]) -> Vec<TapRow> {
    Workload::ALL
        .iter()
        .filter(|w| samples.iter().any(|s| s.workload == w.id()))
        .map(|&w| {
            let sides = w
                .sides()
                .iter()
                .filter_map(|&side| {
                    let of: Vec<&TapSample> = samples
                        .iter()
                        .filter(|s| s.workload == w.id() && s.side == side)
                        .collect();
                    Some(SideRow {
                        side,
                        summary: SideSummary::of(&of)?,
                    })
                })
                .collect();
            TapRow {
                workload: w.id(),
                title: w.title(),
                direction: w.direction(),
                frame_len: w.frame_len(),
                sides,
                zcnet_damaged_frames: samples
                    .iter()
                    .filter(|s| s.workload == w.id())
                    .filter_map(|s| s.damaged_frames)
                    .sum(),
            }
        })
        .collect()
}

const URING: Side = Side::Zcnet(Engine::Uring);
const SYSCALL: Side = Side::Zcnet(Engine::Syscall);
const DPDK_URING: Side = Side::ZcnetDpdk(Engine::Uring);
const DPDK_SYSCALL: Side = Side::ZcnetDpdk(Engine::Syscall);

/// The tap and stream sections of the report.
pub fn markdown(w: &mut String, run: &Run) {
    let rows = |f: fn(&Workload) -> bool| -> Vec<(&TapRow, Workload)> {
        run.summary
            .iter()
            .filter_map(|r| {
                let wl = Workload::ALL.into_iter().find(|x| x.id() == r.workload)?;
                f(&wl).then_some((r, wl))
            })
            .collect()
    };
    let tx = rows(|w| w.direction() == Direction::Tx && w.carrier() == Carrier::Tap);
    let rx = rows(|w| w.direction() == Direction::Rx && w.carrier() == Carrier::Tap);
    let stream = rows(|w| w.carrier() == Carrier::Stream);
    let disturbed = |r: &TapRow| {
        dagger(
            run.samples
                .iter()
                .any(|x| x.workload == r.workload && x.sample.disturbed()),
        )
    };
    let fps = |r: &TapRow, side: Side| cell(r.get(side).map(|s| &s.frames_per_second), si);
    let cpu = |r: &TapRow, side: Side| cell(r.get(side).map(|s| &s.cpu_seconds_per_mframe), sig3);

    let _ = writeln!(
        w,
        "## TX through a tap: frames per second
"
    );
    let mut t = Table::new(
        w,
        "workload | frontend | zcnet, uring | zcnet, syscall | writev per frame | \
         io_uring, 64 per enter | plain tap, writev per frame | uring / writev | \
         uring / io_uring | uring / syscall",
    );
    for (r, wl) in &tx {
        let frontends: &[(&str, Side, Side)] = if wl.sides().contains(&DPDK_URING) {
            &[
                ("fake guest", URING, SYSCALL),
                ("DPDK virtio_user", DPDK_URING, DPDK_SYSCALL),
            ]
        } else {
            &[("fake guest", URING, SYSCALL)]
        };
        for &(frontend, uring, syscall) in frontends {
            t.row(&[
                format!("{}{}", r.title, disturbed(r)),
                frontend.to_owned(),
                fps(r, uring),
                fps(r, syscall),
                fps(r, Side::Raw),
                fps(r, Side::RawUring),
                fps(r, Side::RawPlain),
                ratio(r.ratio(uring, Side::Raw)),
                ratio(r.ratio(uring, Side::RawUring)),
                ratio(r.ratio(uring, syscall)),
            ]);
        }
    }
    for line in &run.not_measured {
        let _ = writeln!(w, "\n**Not measured:** {line}");
    }
    let _ = writeln!(w);
    let one = run
        .summary
        .iter()
        .find(|r| r.workload == Workload::Tx64.id());
    let two = run
        .summary
        .iter()
        .find(|r| r.workload == Workload::Tx64TwoPairs.id());
    if let (Some(one), Some(two)) = (one, two) {
        let pairs = |side: Side| Some(two.fps(side)? / one.fps(side)?);
        let _ = writeln!(
            w,
            "2 queue pairs against 1 (TX 64 B): zcnet uring {}, zcnet syscall {}, writev per \
             frame {}, io_uring {}.\n",
            ratio(pairs(URING)),
            ratio(pairs(SYSCALL)),
            ratio(pairs(Side::Raw)),
            ratio(pairs(Side::RawUring)),
        );
    }

    let _ = writeln!(
        w,
        "## TX through a tap: CPU seconds per 10^6 frames
"
    );
    let mut t = Table::new(
        w,
        "workload | frontend | zcnet, uring | zcnet, syscall | writev per frame | \
         io_uring, 64 per enter | plain tap, writev per frame | zcnet uring cores busy",
    );
    for (r, wl) in &tx {
        let mut frontends = vec![("fake guest", URING, SYSCALL)];
        if wl.sides().contains(&DPDK_URING) {
            frontends.push(("DPDK virtio_user", DPDK_URING, DPDK_SYSCALL));
        }
        for (frontend, uring, syscall) in frontends {
            t.row(&[
                r.title.to_owned(),
                frontend.to_owned(),
                cpu(r, uring),
                cpu(r, syscall),
                cpu(r, Side::Raw),
                cpu(r, Side::RawUring),
                cpu(r, Side::RawPlain),
                cell(r.get(uring).map(|s| &s.cores_busy), sig3),
            ]);
        }
    }
    let _ = writeln!(w);

    let _ = writeln!(
        w,
        "## RX through a tap
"
    );
    let mut t = Table::new(
        w,
        "workload | zcnet frames/s | zcnet Gbit/s | readv per frame, frames/s | \
         zcnet CPU s per 10^6 frames | readv CPU s per 10^6 frames | zcnet / readv CPU per frame",
    );
    for (r, _) in &rx {
        t.row(&[
            format!("{}{}", r.title, disturbed(r)),
            fps(r, URING),
            cell(r.get(URING).map(|s| &s.gbit_per_second), sig3),
            fps(r, Side::Raw),
            cpu(r, URING),
            cpu(r, Side::Raw),
            ratio(r.cpu_ratio(URING, Side::Raw)),
        ]);
    }
    let _ = writeln!(
        w,
        "\nRX: share of the injected frames that reached the reader (the tap drops \
         what the reader does not take in time):"
    );
    for (r, _) in &rx {
        let share = |side: Side| {
            let pct = r
                .sides
                .iter()
                .find(|s| s.side == side)
                .and_then(|x| x.summary.delivered_share)
                .map(|d| d.scaled(100.0));
            cell(pct.as_ref(), |x| format!("{x:.1}"))
        };
        let _ = writeln!(
            w,
            "- {}: zcnet {} %, raw tap {} %",
            r.title,
            share(URING),
            share(Side::Raw)
        );
    }
    for r in run.summary.iter().filter(|s| s.zcnet_damaged_frames > 0) {
        let whole: u64 = run
            .samples
            .iter()
            .filter(|x| x.workload == r.workload && x.side.is_zcnet())
            .map(|x| x.sample.frames)
            .sum();
        let _ = writeln!(
            w,
            "\n**{}: zcnet delivered {} frames cut short** (beside {} whole ones in the \
             windows), each in fewer buffers than its {} bytes need: the fake guest had posted \
             too few, and the tap's readv returns the bytes it copied, not the frame's length. \
             They are left out of the figures above.",
            r.title, r.zcnet_damaged_frames, whole, r.frame_len
        );
    }
    let _ = writeln!(w);

    if !stream.is_empty() {
        let _ = writeln!(w, "## TCP stream attachment (`--stream-connect`)\n");
        let mut t = Table::new(
            w,
            "workload | zcnet frames/s | zcnet Gbit/s | zcnet CPU s per 10^6 frames | \
             zcnet cores busy",
        );
        for (r, _) in &stream {
            t.row(&[
                format!("{}{}", r.title, disturbed(r)),
                fps(r, URING),
                cell(r.get(URING).map(|s| &s.gbit_per_second), sig3),
                cpu(r, URING),
                cell(r.get(URING).map(|s| &s.cores_busy), sig3),
            ]);
        }
        let _ = writeln!(w);
    }

    let retried = run.samples.iter().filter(|x| x.attempts > 1).count();
    if retried > 0 {
        let _ = writeln!(
            w,
            "{retried} of {} windows were measured again because other work disturbed an \
             earlier attempt (at most 3 attempts; the least disturbed is kept).\n",
            run.samples.len()
        );
    }
    if run.samples.iter().any(|x| x.sample.disturbed()) {
        let _ = writeln!(
            w,
            "† In at least one window of this workload, more than {DISTURBED} cores were \
             busy with other work (other processes, interrupts, kernel threads); bench.json \
             has every window's machine_busy_seconds.\n"
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

fn notes() -> [String; 10] {
    [
        format!(
            "zcnet: the real daemon on a tap in its own network namespace, fed over its \
             vhost-user socket by the fake guest (memfd memory, split rings of {QUEUE_SIZE}, \
             EVENT_IDX), one thread per ring. TX keeps the ring full of the same frame, one \
             descriptor per frame; with the ring full it sleeps until zcnet's call, as a \
             guest's stopped queue does. RX keeps {QUEUE_SIZE} buffers posted (2 KiB; 4 KiB \
             for GSO, so one frame fills 16)."
        ),
        "uring, syscall: zcnet's `--io-engine`. uring hands each batch of up to 64 TX \
         frames to the kernel as linked writes with one io_uring_enter; syscall makes one \
         writev per frame. RX is the same code with either engine (measured with uring)."
            .into(),
        format!(
            "DPDK virtio_user: dpdk-testpmd (DPDK 22.11, `--no-huge`, txonly, `--txpkts` of \
             the frame size, ring of {QUEUE_SIZE}) as zcnet's frontend, busy-polling lcore 1; \
             its rate is zcnet's own frame counter. DPDK negotiates no EVENT_IDX."
        ),
        format!(
            "writev per frame, io_uring: the physical limits, on a tap of the same kind \
             (multi-queue, 12-byte vnet header, offloads CSUM|TSO4|TSO6) in its own namespace: \
             one thread per queue writes the same frames with the same header, cycling through \
             {QUEUE_SIZE} copies as the guest cycles through its buffers, one writev per frame, \
             or 64 writev entries per io_uring_enter on a registered fd (not linked: the \
             fastest batched writer). plain tap: one writev per frame without a vnet header on \
             a one-queue tap. RX: one thread reads with readv."
        ),
        "TX frames go from the tap into the namespace's stack, which drops them (they are \
         not addressed to it): the same for zcnet and the raw writers. RX frames are sent into \
         the tap by one AF_PACKET thread (qdisc bypassed, PACKET_VNET_HDR for GSO) as fast as \
         it can: the same for both. When the reader takes all of it, that thread set the \
         rate; on a 2-core machine zcnet then also shares the cores with the fake guest, so \
         compare RX by CPU per frame."
            .into(),
        "TCP stream: zcnet `--stream-connect` to a plain TCP peer in the next namespace (a \
         veth, MTU 65535), records of a 4-byte length and the frame, no vnet header on the \
         wire; frames under `--zerocopy-min-bytes` (8192) are copied."
            .into(),
        "The 64 KiB GSO frames are 65,214 bytes (45 segments of 1448): the kernel segments \
         any frame of 64 KiB or more sent into a device in software."
            .into(),
        "Gbit/s and per-GB figures count frame bytes without the virtio-net header; GB is \
         10^9 bytes."
            .into(),
        "CPU: utime + stime from /proc in clock ticks, over the window: the whole zcnet \
         process (its system time includes the tap's and the stack's work done in its \
         threads), or the raw tap's writer/reader threads. The fake guest, testpmd, the \
         TCP peer and the injector are not counted (bench.json: feeder_cpu_seconds)."
            .into(),
        "Timing is not asserted: numbers vary with the machine and what else runs on it.".into(),
    ]
}
