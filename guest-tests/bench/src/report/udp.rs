//! The UDP part of the report: zero-copy against copy at each frame size
//! (median and min..max over the repetitions), their ratios, the smallest
//! size at which lending costs zcnet less CPU per byte than copying (the
//! break-even that `--zerocopy-min-bytes` should sit near), and the
//! kernel's own word on whether lent pages went out uncopied.

use std::fmt::Write as _;

use serde::Serialize;

use super::{cell, dagger, load_line, ratio, si, sig3, Table};
use crate::measure::udp::UdpSample;
use crate::measure::QUEUE_SIZE;
use crate::sample::{Load, Spread, Summary, DISTURBED};
use crate::udp::{TxMode, UdpCase, BIG_FRAME};

/// One frame size sent one way, over its repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct UdpRow {
    pub title: String,
    /// TX buffers the fake guest cycled through, and the memory they span.
    pub buffers: usize,
    pub buffer_span_bytes: u64,
    /// zcnet's rates and CPU time.
    #[serde(flatten)]
    pub summary: Summary,
    /// The fake guest's TX driver, CPU seconds per second: near 1, it
    /// may be what bounds the rate.
    pub guest_cores_busy: Spread,
    /// zcnet's counters summed over every repetition's run (warm-up
    /// included).
    pub zcnet_frames: u64,
    pub zerocopy_sends: u64,
    pub zerocopy_completed: u64,
    pub zerocopy_copied: u64,
    pub copy_fallbacks: u64,
    /// Some window had more than `DISTURBED` cores of other load.
    pub disturbed: bool,
}

impl UdpRow {
    fn of(case: UdpCase, samples: &[&UdpSample]) -> Option<UdpRow> {
        let windows: Vec<_> = samples.iter().map(|s| &s.sample).collect();
        let sum = |f: fn(&UdpSample) -> u64| samples.iter().map(|s| f(s)).sum();
        let first = samples.first()?;
        Some(UdpRow {
            title: case.title(),
            buffers: first.buffers,
            buffer_span_bytes: first.buffer_span_bytes,
            summary: Summary::of(&windows)?,
            guest_cores_busy: Spread::of(windows.iter().map(|s| s.feeder_cpu_seconds / s.seconds))?,
            zcnet_frames: sum(|s| s.zcnet.frames),
            zerocopy_sends: sum(|s| s.zcnet.zerocopy_sends),
            zerocopy_completed: sum(|s| s.zcnet.zerocopy_completed),
            zerocopy_copied: sum(|s| s.zcnet.zerocopy_copied),
            copy_fallbacks: sum(|s| s.zcnet.copy_fallbacks),
            disturbed: windows.iter().any(|s| s.disturbed()),
        })
    }
}

/// Both ways of sending one frame size.
#[derive(Clone, Debug, Serialize)]
pub struct UdpPoint {
    pub frame_len: usize,
    pub zero_copy: Option<UdpRow>,
    pub copy: Option<UdpRow>,
    /// Median zero-copy frames/s over median copy frames/s.
    pub throughput_ratio: Option<f64>,
    /// Median zero-copy zcnet CPU per GB over median copy CPU per GB:
    /// below 1, lending is cheaper per byte.
    pub cpu_per_gb_ratio: Option<f64>,
}

/// The UDP workloads of a run, as `bench.json` holds them.
#[derive(Clone, Debug, Serialize)]
pub struct UdpSummary {
    /// By frame size, smallest first.
    pub points: Vec<UdpPoint>,
    /// The smallest frame size at which zero-copy used less zcnet CPU per
    /// GB than copy (medians).
    pub break_even_frame_len: Option<usize>,
    /// Zero-copy used less CPU per GB at every larger size too.
    pub break_even_holds_above: bool,
    /// The other load (the machine's busy time that zcnet and the fake
    /// guest do not account for) and the steal during the windows.
    #[serde(flatten)]
    pub load: Load,
}

pub fn summarize(samples: &[UdpSample], sizes: &[usize]) -> UdpSummary {
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    let row = |mode: TxMode, frame_len: usize| {
        let of: Vec<&UdpSample> = samples
            .iter()
            .filter(|s| s.mode == mode && s.frame_len == frame_len)
            .collect();
        UdpRow::of(UdpCase { mode, frame_len }, &of)
    };
    let points: Vec<UdpPoint> = sizes
        .iter()
        .map(|&frame_len| {
            let (zero_copy, copy) = (
                row(TxMode::ZeroCopy, frame_len),
                row(TxMode::Copy, frame_len),
            );
            let ratio = |f: fn(&UdpRow) -> f64| {
                zero_copy
                    .as_ref()
                    .zip(copy.as_ref())
                    .map(|(z, c)| f(z) / f(c))
                    .filter(|r| r.is_finite())
            };
            UdpPoint {
                frame_len,
                throughput_ratio: ratio(|r| r.summary.frames_per_second.median),
                cpu_per_gb_ratio: ratio(|r| r.summary.cpu_seconds_per_gb.median),
                zero_copy,
                copy,
            }
        })
        .collect();
    let cheaper = |p: &UdpPoint| p.cpu_per_gb_ratio.is_some_and(|r| r < 1.0);
    let at = points.iter().position(cheaper);
    UdpSummary {
        break_even_frame_len: at.map(|i| points[i].frame_len),
        break_even_holds_above: at.is_some_and(|i| points[i..].iter().all(cheaper)),
        points,
        load: Load::of(samples.iter().map(|s| &s.sample)),
    }
}

/// What the sweep says about the break-even.
fn break_even_text(u: &UdpSummary) -> String {
    let cheaper = |p: &&UdpPoint| p.cpu_per_gb_ratio.is_some_and(|r| r < 1.0);
    let Some(n) = u.break_even_frame_len else {
        let largest = u.points.last().map_or(0, |p| p.frame_len);
        return format!(
            "**No break-even up to {largest} B:** zero-copy never used less zcnet CPU per GB \
             than copy."
        );
    };
    let mut text = format!(
        "**Break-even: {n} B**, the smallest swept frame size at which zero-copy used less \
         zcnet CPU per GB than copy (medians)"
    );
    match u.points.iter().rev().find(|p| p.frame_len < n) {
        Some(below) => {
            let _ = write!(
                text,
                "; at {} B, the next smaller size swept, copy cost less, so the crossing lies \
                 between the two",
                below.frame_len
            );
        }
        None => text.push_str("; it is the smallest size swept"),
    }
    let not: Vec<String> = u
        .points
        .iter()
        .filter(|p| p.frame_len > n && !cheaper(p))
        .map(|p| format!("{} B", p.frame_len))
        .collect();
    if u.points.iter().all(|p| p.frame_len <= n) {
        text.push('.');
    } else if not.is_empty() {
        text.push_str(". Zero-copy cost less at every larger size too.");
    } else {
        let _ = write!(
            text,
            ". But not at {}: the figures near the break-even are within this run's noise.",
            not.join(", ")
        );
    }
    text
}

/// "copied / completed" of the kernel's zero-copy notifications.
fn kernel_word(r: &UdpRow) -> String {
    if r.zerocopy_sends == 0 {
        "not lent".into()
    } else {
        format!("{} / {}", r.zerocopy_copied, r.zerocopy_completed)
    }
}

/// The UDP sections of the report.
pub fn markdown(w: &mut String, u: &UdpSummary, warmup_seconds: f64, window_seconds: f64) {
    let _ = writeln!(
        w,
        "## UDP attachment to an ifb egress: zero-copy vs copy (1 queue pair)\n"
    );
    let mut t = Table::new(
        w,
        "workload | zcnet frames/s | zcnet Gbit/s | zcnet CPU s per 10^6 frames | \
         zcnet CPU s per GB | zcnet cores busy | fake guest cores busy | \
         zero-copy/copy frames/s | zero-copy/copy CPU per GB | \
         kernel: copied / completed",
    );
    let big = u.points.iter().find(|p| p.frame_len == BIG_FRAME);
    for (row, ratios) in big
        .into_iter()
        .flat_map(|p| [(p.zero_copy.as_ref(), true), (p.copy.as_ref(), false)])
        .filter_map(|(r, zc)| r.map(|r| (r, zc)))
    {
        let (tput, cpu) = match big {
            Some(p) if ratios => (ratio(p.throughput_ratio), ratio(p.cpu_per_gb_ratio)),
            _ => (String::new(), String::new()),
        };
        let z = &row.summary;
        t.row(&[
            format!("{}{}", row.title, dagger(row.disturbed)),
            cell(Some(&z.frames_per_second), si),
            cell(Some(&z.gbit_per_second), sig3),
            cell(Some(&z.cpu_seconds_per_mframe), sig3),
            cell(Some(&z.cpu_seconds_per_gb), sig3),
            cell(Some(&z.cores_busy), sig3),
            cell(Some(&row.guest_cores_busy), sig3),
            tput,
            cpu,
            kernel_word(row),
        ]);
    }
    if let Some(p) = big {
        if let (Some(t), Some(c)) = (p.throughput_ratio, p.cpu_per_gb_ratio) {
            let _ = writeln!(
                w,
                "\nAt {BIG_FRAME} B, copying cost zcnet {:.2}× the CPU per GB that lending \
                 did, and lending moved {t:.2}× the frames per second.",
                1.0 / c
            );
        }
    }

    let _ = writeln!(
        w,
        "\n### Choosing `--zerocopy-min-bytes`: zcnet CPU per GB by frame size\n"
    );
    let mut t = Table::new(
        w,
        "frame size | zero-copy CPU s per GB | copy CPU s per GB | \
         zero-copy/copy CPU per GB | zero-copy Gbit/s | copy Gbit/s | \
         zero-copy/copy frames/s | kernel: copied / completed",
    );
    for p in &u.points {
        let (z, c) = (p.zero_copy.as_ref(), p.copy.as_ref());
        let disturbed = z.is_some_and(|r| r.disturbed) || c.is_some_and(|r| r.disturbed);
        let (zs, cs) = (z.map(|r| &r.summary), c.map(|r| &r.summary));
        t.row(&[
            format!("{} B{}", p.frame_len, dagger(disturbed)),
            cell(zs.map(|r| &r.cpu_seconds_per_gb), sig3),
            cell(cs.map(|r| &r.cpu_seconds_per_gb), sig3),
            ratio(p.cpu_per_gb_ratio),
            cell(zs.map(|r| &r.gbit_per_second), sig3),
            cell(cs.map(|r| &r.gbit_per_second), sig3),
            ratio(p.throughput_ratio),
            z.map_or("-".into(), kernel_word),
        ]);
    }
    let _ = writeln!(w, "\n{}", break_even_text(u));
    if u.points
        .iter()
        .flat_map(|p| [&p.zero_copy, &p.copy])
        .any(|r| r.as_ref().is_some_and(|r| r.disturbed))
    {
        let _ = writeln!(
            w,
            "\n† In at least one window, more than {DISTURBED} cores were busy with other \
             work; bench.json has every window's machine_busy_seconds."
        );
    }
    load_line(
        w,
        "UDP windows",
        "zcnet and the fake guest do not account for",
        &u.load,
    );

    let _ = writeln!(w, "\nHow to read it:\n");
    for note in notes(u, warmup_seconds, window_seconds) {
        let _ = writeln!(w, "- {note}");
    }
}

fn notes(u: &UdpSummary, warmup_seconds: f64, window_seconds: f64) -> Vec<String> {
    let rows = || {
        u.points
            .iter()
            .flat_map(|p| [&p.zero_copy, &p.copy])
            .flatten()
    };
    let buffers = |len: usize| {
        u.points
            .iter()
            .find(|p| p.frame_len == len)
            .and_then(|p| p.zero_copy.as_ref().or(p.copy.as_ref()))
            .map(|r| (r.buffers, r.buffer_span_bytes))
    };
    let spread = match (
        buffers(BIG_FRAME),
        u.points.first().and_then(|p| buffers(p.frame_len)),
    ) {
        (Some((big_n, span)), Some((small_n, _))) => format!(
            "{big_n} buffers of {BIG_FRAME} B ({:.0} MiB) for the largest frames, up to \
             {small_n} for the smallest",
            span as f64 / f64::from(1u32 << 20)
        ),
        _ => "as many buffers as fit".into(),
    };
    let fallbacks: u64 = rows().map(|r| r.copy_fallbacks).sum();
    vec![
        format!(
            "zcnet runs with `--udp 10.9.0.1:7000,10.9.0.2:7000` in its own namespace, where \
             10.9.0.0/24 is routed out of an `ifb` device (MTU 65535), which frees every skb \
             without delivering it, as a NIC would after DMA. Zero-copy: `--zerocopy on \
             --zerocopy-min-bytes 0`, every frame lent with MSG_ZEROCOPY; copy: \
             `--zerocopy off`. One Ethernet frame per datagram; {BIG_FRAME} B is the largest \
             round size under the 65,507 bytes one unfragmented IPv4 UDP datagram carries."
        ),
        format!(
            "Cold buffers: the fake guest has 256 MiB of memory and fills it with TX buffers \
             ({spread}), used in turn, so each frame is read from memory, not from a cache. \
             It keeps the ring of {} full as in the tap TX workloads; each window starts \
             after one pass through every buffer and a further {} s, and lasts {} s.",
            QUEUE_SIZE,
            sig3(warmup_seconds),
            sig3(window_seconds)
        ),
        "kernel: copied / completed is zcnet's `zcnet_tx_zerocopy_copied_total` / \
         `zcnet_tx_zerocopy_completed_total`, scraped after each zero-copy window and summed \
         over the repetitions (warm-up included): 0 copied means every lent frame left \
         uncopied."
            .into(),
        format!(
            "Frames the lending engine copied although they could have been lent (the cap on \
             lent chains, ENOBUFS): {fallbacks} over all zero-copy runs."
        ),
        "zcnet's CPU includes the kernel's work in its threads: the UDP/IP stack, the qdisc \
         and the ifb, the copy (copy) or the page pinning and the error-queue notifications \
         (zero-copy). The fake guest's TX driver is not counted; when it is near one core \
         busy, it bounds the rate, and CPU per GB is the figure to compare."
            .into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mode: TxMode, frame_len: usize, cpu_seconds: f64) -> UdpSample {
        UdpSample::fake(mode, frame_len, 1000, cpu_seconds, 0.5, cpu_seconds + 0.5)
    }

    fn text(u: &UdpSummary) -> String {
        let mut w = String::new();
        markdown(&mut w, u, 0.5, 2.0);
        w
    }

    #[test]
    fn break_even_is_the_smallest_size_where_lending_costs_less_per_byte() {
        let samples = [
            sample(TxMode::ZeroCopy, 1500, 0.9),
            sample(TxMode::Copy, 1500, 0.5),
            sample(TxMode::ZeroCopy, 8192, 0.4),
            sample(TxMode::Copy, 8192, 0.5),
            sample(TxMode::ZeroCopy, BIG_FRAME, 0.2),
            sample(TxMode::Copy, BIG_FRAME, 0.5),
        ];
        let u = summarize(&samples, &[BIG_FRAME, 1500, 8192]);
        assert_eq!(u.break_even_frame_len, Some(8192));
        assert!(u.break_even_holds_above);
        let big = u.points.last().unwrap();
        assert!((big.cpu_per_gb_ratio.unwrap() - 0.4).abs() < 1e-9);
        assert!((big.throughput_ratio.unwrap() - 1.0).abs() < 1e-9);
        assert!(text(&u).contains(
            "**Break-even: 8192 B**, the smallest swept frame size at which zero-copy used \
             less zcnet CPU per GB than copy (medians); at 1500 B, the next smaller size \
             swept, copy cost less, so the crossing lies between the two. Zero-copy cost \
             less at every larger size too."
        ));
    }

    #[test]
    fn a_break_even_that_does_not_hold_above_says_where() {
        let samples = [
            sample(TxMode::ZeroCopy, 4096, 0.4),
            sample(TxMode::Copy, 4096, 0.5),
            sample(TxMode::ZeroCopy, 8192, 0.51),
            sample(TxMode::Copy, 8192, 0.5),
            sample(TxMode::ZeroCopy, BIG_FRAME, 0.2),
            sample(TxMode::Copy, BIG_FRAME, 0.5),
        ];
        let u = summarize(&samples, &[4096, 8192, BIG_FRAME]);
        assert_eq!(u.break_even_frame_len, Some(4096));
        assert!(!u.break_even_holds_above);
        let text = break_even_text(&u);
        assert!(text.contains("it is the smallest size swept"), "{text}");
        assert!(text.contains("But not at 8192 B"), "{text}");
    }

    #[test]
    fn no_break_even_when_copying_is_always_cheaper() {
        let samples = [
            sample(TxMode::ZeroCopy, 1500, 0.9),
            sample(TxMode::Copy, 1500, 0.5),
        ];
        let u = summarize(&samples, &[1500]);
        assert_eq!(u.break_even_frame_len, None);
        assert!(text(&u).contains("No break-even up to 1500 B"));
    }
}
