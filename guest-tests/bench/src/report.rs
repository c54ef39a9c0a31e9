//! What a run prints and writes: the Markdown tables (median and min..max
//! over the repetitions), and every repetition's raw numbers as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::machine::Machine;
use crate::measure::QUEUE_SIZE;
use crate::measure::{IdleSample, Sample, Side};
use crate::udp_measure::UdpSample;
use crate::udp_report::{self, UdpSummary};
use crate::workload::{Direction, Workload};

/// The line for the workload the bench does not run yet.
pub const NOT_MEASURED_STREAM: &str = "TX through the TCP stream attachment \
     (`--stream-connect`, `--stream-listen`): not measured: zcnet-bench drives the tap \
     and the UDP attachment only";

/// Everything a run measured, as written to `bench.json`.
#[derive(Serialize)]
pub struct Run {
    pub command: String,
    pub machine: Machine,
    pub zcnet_bin: String,
    pub mode: &'static str,
    pub repetitions: usize,
    pub warmup_seconds: f64,
    pub window_seconds: f64,
    /// The UDP workloads' warm-up (after one pass through every buffer)
    /// and window.
    pub udp_warmup_seconds: f64,
    pub udp_window_seconds: f64,
    pub samples: Vec<Sample>,
    pub idle: Vec<IdleSample>,
    pub summary: Vec<Summary>,
    /// The UDP attachment to an ifb egress, zero-copy and copy: every
    /// window, and by frame size.
    pub udp_samples: Vec<UdpSample>,
    pub udp: UdpSummary,
    pub not_measured: Vec<&'static str>,
}

/// Median, smallest and largest of the repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The rates of one side of one workload over its repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct SideSummary {
    pub frames_per_second: Spread,
    pub gbit_per_second: Spread,
    /// CPU seconds per million frames.
    pub cpu_seconds_per_mframe: Spread,
    /// CPU seconds per 10^9 frame bytes.
    pub cpu_seconds_per_gb: Spread,
    /// CPU seconds per second: how many cores it kept busy.
    pub cores_busy: Spread,
    /// RX: the share of the frames the injector got into the tap that
    /// reached the reader (the tap drops the rest).
    pub delivered_share: Option<Spread>,
}

impl SideSummary {
    fn of(samples: &[&Sample]) -> Option<SideSummary> {
        let per = |f: fn(&Sample) -> f64| Spread::of(samples.iter().map(|s| f(s)));
        Some(SideSummary {
            frames_per_second: per(|s| s.frames as f64 / s.seconds)?,
            gbit_per_second: per(|s| s.bytes as f64 * 8.0 / s.seconds / 1e9)?,
            cpu_seconds_per_mframe: per(|s| s.cpu_seconds / s.frames as f64 * 1e6)
                .unwrap_or(NAN_SPREAD),
            cpu_seconds_per_gb: per(|s| s.cpu_seconds / s.bytes as f64 * 1e9).unwrap_or(NAN_SPREAD),
            cores_busy: per(|s| s.cpu_seconds / s.seconds)?,
            delivered_share: Spread::of(
                samples
                    .iter()
                    .filter_map(|s| s.offered_frames.map(|o| s.frames as f64 / o as f64)),
            ),
        })
    }
}

const NAN_SPREAD: Spread = Spread {
    median: f64::NAN,
    min: f64::NAN,
    max: f64::NAN,
};

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
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

pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    Workload::ALL
        .iter()
        .map(|&w| {
            let side = |side: Side| {
                let of: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.workload == w.id() && s.side == side)
                    .collect();
                SideSummary::of(&of)
            };
            let (zcnet, raw) = (side(Side::Zcnet), side(Side::Raw));
            let zcnet_over_raw = zcnet
                .as_ref()
                .zip(raw.as_ref())
                .map(|(z, r)| z.frames_per_second.median / r.frames_per_second.median);
            Summary {
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

/// A number with three significant digits and an SI suffix: 1.02M, 812k.
pub fn si(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let (v, suffix) = match x.abs() {
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    format!("{}{suffix}", sig3(v))
}

/// Three significant digits, no exponent.
pub fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    let decimals = if a == 0.0 || a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        // 0.0123 -> 4 decimals.
        (2 - a.log10().floor() as i32).clamp(2, 9) as usize
    };
    format!("{x:.decimals$}")
}

pub fn cell(s: Option<&Spread>, fmt: fn(f64) -> String) -> String {
    match s {
        Some(s) if s.min == s.max => fmt(s.median),
        Some(s) => format!("{} ({}..{})", fmt(s.median), fmt(s.min), fmt(s.max)),
        None => "-".into(),
    }
}

/// Other load above which a window is marked as disturbed, in cores.
pub const DISTURBED: f64 = 0.25;

/// Cores busy with other work during a window: the machine's busy time
/// that neither the measured nor the feeding threads account for.
fn other_load(s: &Sample) -> f64 {
    (s.machine_busy_seconds - s.cpu_seconds - s.feeder_cpu_seconds).max(0.0) / s.seconds
}

/// The report printed on stdout.
pub fn markdown(run: &Run) -> String {
    let mut out = String::new();
    let w = &mut out;
    let m = &run.machine;
    let _ = writeln!(w, "# zcnet-bench\n");
    let _ = writeln!(w, "- command: `{}`", run.command);
    let _ = writeln!(
        w,
        "- machine: {}, {} cores, Linux {}",
        m.cpu_model, m.cores, m.kernel
    );
    let _ = writeln!(w, "- zcnet: `{}`", run.zcnet_bin);
    let _ = writeln!(
        w,
        "- mode: {}: {} repetition(s), each tap workload {} s warm-up then a {} s window, \
         each UDP workload one pass through its buffers and {} s warm-up then a {} s window, \
         repetitions interleaved across workloads; cells are median (min..max)\n",
        run.mode,
        run.repetitions,
        sig3(run.warmup_seconds),
        sig3(run.window_seconds),
        sig3(run.udp_warmup_seconds),
        sig3(run.udp_window_seconds)
    );

    let _ = writeln!(w, "## Throughput\n");
    let _ = writeln!(
        w,
        "| workload | zcnet frames/s | zcnet Gbit/s | raw tap frames/s | raw tap Gbit/s | zcnet/raw |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- |");
    let mut disturbed_any = false;
    for s in &run.summary {
        let (z, r) = (s.zcnet.as_ref(), s.raw.as_ref());
        let disturbed = run
            .samples
            .iter()
            .any(|x| x.workload == s.workload && other_load(x) > DISTURBED);
        disturbed_any |= disturbed;
        let _ = writeln!(
            w,
            "| {}{} | {} | {} | {} | {} | {} |",
            s.title,
            if disturbed { " †" } else { "" },
            cell(z.map(|z| &z.frames_per_second), si),
            cell(z.map(|z| &z.gbit_per_second), sig3),
            cell(r.map(|r| &r.frames_per_second), si),
            cell(r.map(|r| &r.gbit_per_second), sig3),
            s.zcnet_over_raw.map_or("-".into(), |x| format!("{x:.2}")),
        );
    }
    for line in &run.not_measured {
        let _ = writeln!(w, "| {line} | | | | | |");
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
    let _ = writeln!(
        w,
        "| workload | zcnet CPU s per 10^6 frames | zcnet CPU s per GB | zcnet cores busy | \
         raw tap CPU s per 10^6 frames | raw tap CPU s per GB |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- |");
    for s in &run.summary {
        let (z, r) = (s.zcnet.as_ref(), s.raw.as_ref());
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            s.title,
            cell(z.map(|z| &z.cpu_seconds_per_mframe), sig3),
            cell(z.map(|z| &z.cpu_seconds_per_gb), sig3),
            cell(z.map(|z| &z.cores_busy), sig3),
            cell(r.map(|r| &r.cpu_seconds_per_mframe), sig3),
            cell(r.map(|r| &r.cpu_seconds_per_gb), sig3),
        );
    }
    let _ = writeln!(
        w,
        "\nRX: share of the injected frames that reached the reader (the tap drops \
         what the reader does not take in time):"
    );
    for s in run.summary.iter().filter(|s| s.direction == Direction::Rx) {
        let share = |side: Option<&SideSummary>| {
            let pct = side.and_then(|x| x.delivered_share).map(|d| Spread {
                median: d.median * 100.0,
                min: d.min * 100.0,
                max: d.max * 100.0,
            });
            cell(pct.as_ref(), |x| format!("{x:.1}"))
        };
        let _ = writeln!(
            w,
            "- {}: zcnet {} %, raw tap {} %",
            s.title,
            share(s.zcnet.as_ref()),
            share(s.raw.as_ref())
        );
    }
    for s in run.summary.iter().filter(|s| s.zcnet_damaged_frames > 0) {
        let whole: u64 = run
            .samples
            .iter()
            .filter(|x| x.workload == s.workload && x.side == Side::Zcnet)
            .map(|x| x.frames)
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
    let other = Spread::of(run.samples.iter().map(other_load));
    let steal = Spread::of(run.samples.iter().map(|s| s.steal_seconds / s.seconds));
    let _ = writeln!(
        w,
        "\nOther load during the windows (the machine's busy time that the measured and \
         feeding threads do not account for: other processes, interrupts, kernel threads): \
         {} cores; stolen by the hypervisor: {} cores.",
        cell(other.as_ref(), |x| format!("{x:.2}")),
        cell(steal.as_ref(), |x| format!("{x:.2}")),
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
    out.push_str(&udp_report::markdown(
        &run.udp,
        run.udp_warmup_seconds,
        run.udp_window_seconds,
    ));
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(si(1_023_456.0), "1.02M");
        assert_eq!(si(812_345.0), "812k");
        assert_eq!(sig3(0.01234), "0.0123");
        assert_eq!(sig3(42.26), "42.3");
        assert_eq!(sig3(0.5), "0.500");
    }
}
