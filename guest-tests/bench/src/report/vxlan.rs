//! The VXLAN part of the report: each kind of frame lent and copied
//! (median and min..max over the repetitions), zero-copy against copy,
//! and TSO (zcnet cuts 64 KiB frames) against the guest segmenting itself
//! (MSS-sized frames whose checksum zcnet completes), by CPU per GB.

use std::fmt::Write as _;

use serde::Serialize;

use super::{cell, dagger, load_line, ratio, si, sig3, Table};
use crate::measure::vxlan::VxlanSample;
use crate::sample::{Load, Spread, Summary};
use crate::udp::TxMode;
use crate::vxlan::{VxlanCase, VxlanFrames, MSS};

/// One case over its repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct VxlanRow {
    pub case: VxlanCase,
    pub title: String,
    #[serde(flatten)]
    pub summary: Summary,
    pub guest_cores_busy: Spread,
    /// Summed over every repetition's run (warm-up included).
    pub zcnet_frames: u64,
    pub inner_frames: u64,
    pub zerocopy_sends: u64,
    pub zerocopy_completed: u64,
    pub zerocopy_copied: u64,
    pub copy_fallbacks: u64,
    pub disturbed: bool,
}

impl VxlanRow {
    fn of(case: VxlanCase, samples: &[&VxlanSample]) -> Option<VxlanRow> {
        let windows: Vec<_> = samples.iter().map(|s| &s.sample).collect();
        let sum = |f: fn(&VxlanSample) -> u64| samples.iter().map(|s| f(s)).sum();
        Some(VxlanRow {
            case,
            title: case.title(),
            summary: Summary::of(&windows)?,
            guest_cores_busy: Spread::of(windows.iter().map(|s| s.feeder_cpu_seconds / s.seconds))?,
            zcnet_frames: sum(|s| s.zcnet.frames),
            inner_frames: sum(|s| s.inner_frames),
            zerocopy_sends: sum(|s| s.zcnet.zerocopy_sends),
            zerocopy_completed: sum(|s| s.zcnet.zerocopy_completed),
            zerocopy_copied: sum(|s| s.zcnet.zerocopy_copied),
            copy_fallbacks: sum(|s| s.zcnet.copy_fallbacks),
            disturbed: windows.iter().any(|s| s.disturbed()),
        })
    }
}

/// The VXLAN workloads of a run, as `bench.json` holds them.
#[derive(Clone, Debug, Serialize)]
pub struct VxlanSummary {
    /// In `VxlanCase::ALL` order (those measured).
    pub rows: Vec<VxlanRow>,
    /// By kind of frame: median zero-copy over median copy, frames/s and
    /// zcnet CPU per GB.
    pub zero_copy_vs_copy: Vec<(VxlanFrames, Option<f64>, Option<f64>)>,
    /// By mode: median zcnet CPU per GB of TSO frames over that of the
    /// guest's own segments (below 1: TSO costs zcnet less per byte).
    pub tso_vs_segmented: Vec<(TxMode, Option<f64>)>,
    #[serde(flatten)]
    pub load: Load,
}

pub fn summarize(samples: &[VxlanSample]) -> VxlanSummary {
    let rows: Vec<VxlanRow> = VxlanCase::ALL
        .iter()
        .filter_map(|&case| {
            let of: Vec<&VxlanSample> = samples.iter().filter(|s| s.case == case).collect();
            VxlanRow::of(case, &of)
        })
        .collect();
    let find = |mode, frames| rows.iter().find(|r| r.case == VxlanCase { mode, frames });
    let over = |a: Option<&VxlanRow>, b: Option<&VxlanRow>, f: fn(&Summary) -> f64| {
        a.zip(b)
            .map(|(a, b)| f(&a.summary) / f(&b.summary))
            .filter(|r| r.is_finite())
    };
    let kinds = [VxlanFrames::Mtu, VxlanFrames::Tso, VxlanFrames::Segmented];
    let zero_copy_vs_copy = kinds
        .iter()
        .map(|&k| {
            let (z, c) = (find(TxMode::ZeroCopy, k), find(TxMode::Copy, k));
            (
                k,
                over(z, c, |s| s.frames_per_second.median),
                over(z, c, |s| s.cpu_seconds_per_gb.median),
            )
        })
        .collect();
    let tso_vs_segmented = TxMode::BOTH
        .iter()
        .map(|&m| {
            (
                m,
                over(
                    find(m, VxlanFrames::Tso),
                    find(m, VxlanFrames::Segmented),
                    |s| s.cpu_seconds_per_gb.median,
                ),
            )
        })
        .collect();
    VxlanSummary {
        rows,
        zero_copy_vs_copy,
        tso_vs_segmented,
        load: Load::of(samples.iter().map(|s| &s.sample)),
    }
}

fn kernel_word(r: &VxlanRow) -> String {
    if r.zerocopy_sends == 0 {
        "not lent".into()
    } else {
        format!("{} / {}", r.zerocopy_copied, r.zerocopy_completed)
    }
}

/// The VXLAN section of the report.
pub fn markdown(w: &mut String, v: &VxlanSummary, warmup_seconds: f64, window_seconds: f64) {
    if v.rows.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n## VXLAN attachment to an ifb egress (1 queue pair)\n");
    let mut t = Table::new(
        w,
        "workload | zcnet frames/s | zcnet Gbit/s | zcnet CPU s per GB | zcnet cores busy | \
         fake guest cores busy | inner frames per guest frame | share of frames lent | \
         sends (ids) per lent frame | kernel: copied / completed",
    );
    for r in &v.rows {
        let z = &r.summary;
        let per = |n: u64| {
            if r.zcnet_frames == 0 {
                "-".into()
            } else {
                sig3(n as f64 / r.zcnet_frames as f64)
            }
        };
        t.row(&[
            format!("{}{}", r.title, dagger(r.disturbed)),
            cell(Some(&z.frames_per_second), si),
            cell(Some(&z.gbit_per_second), sig3),
            cell(Some(&z.cpu_seconds_per_gb), sig3),
            cell(Some(&z.cores_busy), sig3),
            cell(Some(&r.guest_cores_busy), sig3),
            per(r.inner_frames),
            per(r.zerocopy_sends),
            if r.zerocopy_sends == 0 {
                "-".into()
            } else {
                sig3(r.zerocopy_completed as f64 / r.zerocopy_sends as f64)
            },
            kernel_word(r),
        ]);
    }
    let _ = writeln!(w);
    let mut t = Table::new(
        w,
        "frames | zero-copy/copy frames/s | zero-copy/copy CPU per GB",
    );
    for (k, fps, cpu) in &v.zero_copy_vs_copy {
        let name = match k {
            VxlanFrames::Mtu => "1514 B".to_owned(),
            VxlanFrames::Tso => "64 KiB TSO".to_owned(),
            VxlanFrames::Segmented => format!("MSS {MSS}, guest-segmented"),
        };
        t.row(&[name, ratio(*fps), ratio(*cpu)]);
    }
    let _ = writeln!(w);
    for (m, r) in &v.tso_vs_segmented {
        if let Some(r) = r {
            let _ = writeln!(
                w,
                "- {m}: a 64 KiB TSO frame cost zcnet {r:.2}× the CPU per GB that the same \
                 bytes cost as MSS-sized frames the guest segmented itself."
            );
        }
    }
    load_line(
        w,
        "VXLAN windows",
        "zcnet and the fake guest do not account for",
        &v.load,
    );
    let _ = writeln!(w, "\nHow to read it:\n");
    for note in [
        "zcnet runs with `--vxlan-vni 42 --vxlan-local 10.9.0.1 --vxlan-remote 10.9.0.2 \
         --vxlan-remote 10.9.1.2` and a static FDB entry for the frames' destination MAC \
         (so each goes to one VTEP), in a namespace where both remotes are routed out of an \
         `ifb` device (MTU 9000), which frees every skb without delivering it. Zero-copy: \
         `--zerocopy on --zerocopy-min-bytes 0`; copy: `--zerocopy off`."
            .to_owned(),
        format!(
            "Frames/s and Gbit/s count the guest's frames and bytes (a TSO frame is one frame); \
             inner frames per guest frame is what zcnet put on the wire per guest frame (a TSO \
             frame's segments). A lent send pins at most 17 pages (the kernel's \
             MAX_SKB_FRAGS), so a lent TSO frame takes several sends. Cold buffers over 256 MiB \
             of guest memory as in the UDP section; each window starts after one pass through \
             every buffer and a further {} s, and lasts {} s.",
            sig3(warmup_seconds),
            sig3(window_seconds)
        ),
        "zcnet's CPU includes the kernel's work in its threads (the UDP/IP stack with \
         UDP_SEGMENT, the qdisc and the ifb, the copy or the page pinning) and zcnet's own: \
         the FDB, the flow hash, TSO planning, and the checksums it completes or computes \
         per segment, which read the payload from guest memory."
            .to_owned(),
    ] {
        let _ = writeln!(w, "- {note}");
    }
}
