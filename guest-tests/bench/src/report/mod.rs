//! What a run prints and writes: the Markdown report, with the tap
//! workloads' sections (`tap`) and the UDP attachment's (`udp`), cells
//! median (min..max) over the repetitions; and every repetition's raw
//! numbers as JSON (`bench.json`, the serialized [`Run`]).

pub mod tap;
pub mod udp;
pub mod vxlan;

use std::fmt::Write as _;

use serde::Serialize;

use crate::machine::Machine;
use crate::measure::tap::{IdleSample, TapSample};
use crate::measure::udp::UdpSample;
use crate::measure::vxlan::VxlanSample;
use crate::sample::{Load, Spread};
use tap::TapRow;
use udp::UdpSummary;
use vxlan::VxlanSummary;

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
    pub samples: Vec<TapSample>,
    pub idle: Vec<IdleSample>,
    /// The tap workloads, one row each.
    pub summary: Vec<TapRow>,
    /// The UDP attachment to an ifb egress, zero-copy and copy: every
    /// window, and by frame size.
    pub udp_samples: Vec<UdpSample>,
    pub udp: UdpSummary,
    /// The VXLAN attachment to an ifb egress: every window, and by case.
    pub vxlan_samples: Vec<VxlanSample>,
    pub vxlan: VxlanSummary,
    /// What the run could not measure, and why.
    pub not_measured: Vec<String>,
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
    tap::markdown(w, run);
    udp::markdown(w, &run.udp, run.udp_warmup_seconds, run.udp_window_seconds);
    vxlan::markdown(
        w,
        &run.vxlan,
        run.udp_warmup_seconds,
        run.udp_window_seconds,
    );
    out
}

/// A Markdown table, written row by row.
pub struct Table<'w> {
    w: &'w mut String,
    columns: usize,
}

impl<'w> Table<'w> {
    /// Writes the header row, its columns separated by `|`, and the line
    /// under it.
    pub fn new(w: &'w mut String, header: &str) -> Table<'w> {
        let header: Vec<&str> = header.split('|').map(str::trim).collect();
        let mut t = Table {
            w,
            columns: header.len(),
        };
        t.row(&header);
        t.row(&vec!["---"; header.len()]);
        t
    }

    /// One row; an empty cell stays empty.
    pub fn row(&mut self, cells: &[impl AsRef<str>]) {
        debug_assert_eq!(cells.len(), self.columns, "cells in a row");
        for c in cells {
            match c.as_ref() {
                "" => self.w.push_str("| "),
                c => {
                    let _ = write!(self.w, "| {c} ");
                }
            }
        }
        self.w.push_str("|\n");
    }
}

/// The load line under a section: the machine's other load and the
/// hypervisor's steal during `windows`, where `unaccounted` says whose
/// CPU time the other load leaves out.
fn load_line(w: &mut String, windows: &str, unaccounted: &str, load: &Load) {
    let _ = writeln!(
        w,
        "\nOther load during the {windows} (the machine's busy time that {unaccounted}): \
         {} cores; stolen by the hypervisor: {} cores.",
        cell(load.other_load_cores.as_ref(), |x| format!("{x:.2}")),
        cell(load.steal_cores.as_ref(), |x| format!("{x:.2}")),
    );
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

/// A spread as "median (min..max)", or the median alone when they agree.
pub fn cell(s: Option<&Spread>, fmt: fn(f64) -> String) -> String {
    match s {
        Some(s) if s.min == s.max => fmt(s.median),
        Some(s) => format!("{} ({}..{})", fmt(s.median), fmt(s.min), fmt(s.max)),
        None => "-".into(),
    }
}

/// A ratio of medians with two decimals.
fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |x| format!("{x:.2}"))
}

/// The dagger that marks a disturbed row.
fn dagger(disturbed: bool) -> &'static str {
    if disturbed {
        " †"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(si(1_023_456.0), "1.02M");
        assert_eq!(si(812_345.0), "812k");
        assert_eq!(sig3(0.01234), "0.0123");
        assert_eq!(sig3(42.26), "42.3");
        assert_eq!(sig3(0.5), "0.500");
    }

    #[test]
    fn tables_have_a_header_line_and_keep_empty_cells() {
        let mut w = String::new();
        let mut t = Table::new(&mut w, "a | b | c");
        t.row(&["1", "", "3"]);
        assert_eq!(w, "| a | b | c |\n| --- | --- | --- |\n| 1 | | 3 |\n");
    }
}
