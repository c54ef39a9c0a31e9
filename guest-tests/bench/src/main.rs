//! zcnet-bench: the datapath figures of zcnet against the physical limit of
//! its tap, and its zero-copy UDP attachment against copying, on this
//! machine.
//!
//! It drives the real `zcnet` binary over its real vhost-user socket with
//! the fake guest of zcnet-harness (no VM), on a tap in its own network
//! namespace, and measures each workload against a raw tap writer (or
//! reader) in another namespace. Then it sends through `--udp` out of an
//! `ifb` device, with zero-copy on and off, over a sweep of frame sizes
//! from cold buffers, and through `--vxlan-vni` out of an `ifb` device:
//! 1514-byte and 64 KiB TSO frames, lent and copied, and TSO against the
//! guest segmenting itself (`--vxlan-only` runs just those). Repetitions
//! go round-robin across the workloads. The
//! Markdown report goes to stdout, every repetition's numbers to
//! `OUT/bench.json`, the tap TX chart to `OUT/bench.svg` and the UDP CPU
//! per GB chart to `OUT/bench-udp.svg`.
//!
//! ```sh
//! cargo build --release -p zcnet
//! cargo run --release -p zcnet-bench -- [--quick] [--out DIR]
//! ```

mod chart;
mod cpu;
mod crew;
mod injector;
mod machine;
mod measure;
mod raw_tap;
mod report;
mod sample;
mod udp;
mod vxlan;
mod workload;

use std::error::Error as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use thiserror::Error;
use zcnet_harness::daemon::{NoZcnetBin, ZcnetBin};

use machine::Machine;
use measure::dpdk::Dpdk;
use measure::tap::Side;
use measure::{MeasureError, Timing};
use report::Run;
use udp::{TxMode, UdpCase};
use workload::{Carrier, Workload};

/// Measures zcnet's datapath against the raw tap limit (run as root).
#[derive(Debug, Parser)]
#[command(name = "zcnet-bench")]
struct Args {
    /// One repetition with half-second windows and two UDP frame sizes:
    /// proves the command works (about 20 s), the numbers are rough.
    #[arg(long)]
    quick: bool,
    /// Directory for bench.json, bench.svg and bench-udp.svg [default:
    /// target/bench of the target directory this binary was built in].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Only the VXLAN workloads: their report section on stdout and
    /// their numbers in OUT/bench-vxlan.json.
    #[arg(long)]
    vxlan_only: bool,
    /// Run only these tap workloads (ids as in bench.json, e.g. tx-64),
    /// and no UDP sweep; for profiling. The report then lacks the rest.
    #[arg(long, value_name = "ID,..", value_delimiter = ',')]
    only: Vec<String>,
    /// Run only these sides (e.g. zcnet-uring,raw-uring; ids as in
    /// bench.json); for profiling.
    #[arg(long, value_name = "ID,..", value_delimiter = ',')]
    sides: Vec<String>,
    /// Length of each tap workload's window, in seconds (e.g. to attach
    /// perf to zcnet meanwhile) [default: 3, or 0.5 with --quick].
    #[arg(long, value_name = "SECONDS")]
    window: Option<f64>,
}

/// Attempts at a tap workload's window when other work disturbs it.
const ATTEMPTS: usize = 3;

/// How long and how often.
struct Plan {
    mode: &'static str,
    repetitions: usize,
    timing: Timing,
    /// Frame sizes of the UDP zero-copy/copy sweep.
    udp_sizes: &'static [usize],
    /// The UDP windows; their warm-up comes after one pass through every
    /// buffer, which already warms zcnet up.
    udp_timing: Timing,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                mode: "quick",
                repetitions: 1,
                timing: Timing {
                    warmup: Duration::from_millis(250),
                    window: Duration::from_millis(500),
                },
                udp_sizes: &udp::SWEEP_QUICK,
                udp_timing: Timing {
                    warmup: Duration::from_millis(250),
                    window: Duration::from_millis(500),
                },
            }
        } else {
            Plan {
                mode: "full",
                repetitions: 3,
                timing: Timing {
                    warmup: Duration::from_secs(1),
                    window: Duration::from_secs(3),
                },
                udp_sizes: &udp::SWEEP,
                udp_timing: Timing {
                    warmup: Duration::from_millis(500),
                    window: Duration::from_secs(2),
                },
            }
        }
    }
}

#[derive(Debug, Error)]
enum BenchError {
    #[error("zcnet-bench must run as root: it creates network namespaces and taps")]
    NotRoot,
    #[error(transparent)]
    NoZcnet(#[from] NoZcnetBin),
    #[error("workload {workload} on {side}, repetition {repetition}")]
    Measure {
        workload: &'static str,
        side: Side,
        repetition: usize,
        #[source]
        source: MeasureError,
    },
    #[error("UDP {mode}, {frame_len} B frames, repetition {repetition}")]
    MeasureUdp {
        mode: TxMode,
        frame_len: usize,
        repetition: usize,
        #[source]
        source: MeasureError,
    },
    #[error("{case}, repetition {repetition}")]
    MeasureVxlan {
        case: String,
        repetition: usize,
        #[source]
        source: MeasureError,
    },
    #[error("idle check, repetition {repetition}")]
    Idle {
        repetition: usize,
        #[source]
        source: MeasureError,
    },
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
    #[error("cannot write {0}")]
    Chart(PathBuf, #[source] chart::ChartError),
    #[error("these runs moved no frames, so the harness is broken: {0}")]
    NoFrames(String),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zcnet-bench: error: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), BenchError> {
    let started = Instant::now();
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BenchError::NotRoot);
    }
    // ZCNET_BIN, or the zcnet beside this binary (both are built into the
    // same target/release).
    let zcnet = ZcnetBin::locate()?;
    let out_dir = args.out.clone().unwrap_or_else(default_out_dir);
    let mut plan = Plan::new(args.quick);
    if let Some(w) = args.window {
        plan.timing.window = Duration::from_secs_f64(w);
    }
    if !args.only.is_empty() {
        plan.udp_sizes = &[];
    }
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|o| o == w.id()))
        .collect();
    if args.vxlan_only {
        return run_vxlan_only(&zcnet, &plan, out_dir, started);
    }
    let command = command_line();
    let machine = Machine::this();
    eprintln!(
        "zcnet-bench: {} mode, {} repetition(s) of {} workloads on zcnet and the raw taps \
         ({:?} warm-up + {:?} window each) and {} UDP frame sizes zero-copy and copy \
         (one pass through the buffers + {:?} warm-up + {:?} window each)",
        plan.mode,
        plan.repetitions,
        workloads.len(),
        plan.timing.warmup,
        plan.timing.window,
        plan.udp_sizes.len(),
        plan.udp_timing.warmup,
        plan.udp_timing.window
    );

    // DPDK's testpmd, installed if missing; without it the DPDK rows are
    // not measured, and the report and the end of the run say so.
    let wants_dpdk = workloads
        .iter()
        .any(|w| w.sides().iter().any(|s| matches!(s, Side::ZcnetDpdk(_))));
    let dpdk = if wants_dpdk {
        Dpdk::find_or_install()
    } else {
        Err("not asked for (--only)".into())
    };
    let mut not_measured = Vec::new();
    if let (true, Err(why)) = (wants_dpdk, &dpdk) {
        let line = format!(
            "TX with DPDK's virtio_user as the frontend: dpdk-testpmd is not available ({why})"
        );
        eprintln!("zcnet-bench: NOT MEASURED: {line}");
        not_measured.push(line);
    }

    let (mut samples, mut udp_samples, mut idle) = (Vec::new(), Vec::new(), Vec::new());
    let mut vxlan_samples = Vec::new();
    for repetition in 0..plan.repetitions {
        // Alternate the order of the sides, so none always runs on a
        // machine another just warmed.
        for &w in &workloads {
            let mut sides: Vec<Side> = w
                .sides()
                .iter()
                .copied()
                .filter(|s| args.sides.is_empty() || args.sides.iter().any(|x| x == s.id()))
                .collect();
            if repetition % 2 == 1 {
                sides.reverse();
            }
            for side in sides {
                if matches!(side, Side::ZcnetDpdk(_)) && dpdk.is_err() {
                    continue;
                }
                // On a shared machine a window can be disturbed by other
                // work: it is measured again (at most `ATTEMPTS` times in
                // all) and the least disturbed attempt is kept.
                let mut kept: Option<measure::tap::TapSample> = None;
                for attempt in 1..=ATTEMPTS {
                    let mut s = match side {
                        Side::Zcnet(_) if w.carrier() == Carrier::Stream => {
                            measure::stream::run(&zcnet, w, repetition, plan.timing)
                        }
                        Side::Zcnet(engine) => {
                            measure::tap::zcnet(&zcnet, w, engine, repetition, plan.timing)
                        }
                        Side::ZcnetDpdk(engine) => {
                            let d = dpdk.as_ref().expect("checked above");
                            measure::dpdk::run(&zcnet, d, w, engine, repetition, plan.timing)
                        }
                        raw => measure::tap::raw(w, raw, repetition, plan.timing),
                    }
                    .map_err(|source| BenchError::Measure {
                        workload: w.id(),
                        side,
                        repetition,
                        source,
                    })?;
                    s.attempts = attempt;
                    eprintln!(
                        "  {}/{} {:<24} {:<18} {:>10.0} frames/s {:>8.3} Gbit/s{}",
                        repetition + 1,
                        plan.repetitions,
                        w.title(),
                        side.to_string(),
                        s.sample.frames_per_second(),
                        s.sample.gbit_per_second(),
                        if s.sample.disturbed() {
                            format!(
                                "  (disturbed: {:.2} cores of other load)",
                                s.sample.other_load()
                            )
                        } else {
                            String::new()
                        }
                    );
                    let disturbed = s.sample.disturbed();
                    if kept
                        .as_ref()
                        .is_none_or(|k| s.sample.other_load() < k.sample.other_load())
                    {
                        kept = Some(s);
                    }
                    if !disturbed {
                        break;
                    }
                }
                samples.extend(kept);
            }
        }
        // Alternate which mode goes first, as with the sides above.
        let modes = if repetition % 2 == 0 {
            TxMode::BOTH
        } else {
            [TxMode::Copy, TxMode::ZeroCopy]
        };
        for &frame_len in plan.udp_sizes {
            for mode in modes {
                let case = UdpCase { mode, frame_len };
                let s = measure::udp::run(&zcnet, case, repetition, plan.udp_timing).map_err(
                    |source| BenchError::MeasureUdp {
                        mode,
                        frame_len,
                        repetition,
                        source,
                    },
                )?;
                eprintln!(
                    "  {}/{} UDP {:<9} {:>5} B  {:>10.0} frames/s {:>8.3} Gbit/s \
                     {:>7.3} CPU s/GB  kernel copied {}/{} completed, {} buffers, \
                     warm-up {:.2} s",
                    repetition + 1,
                    plan.repetitions,
                    mode.to_string(),
                    frame_len,
                    s.sample.frames_per_second(),
                    s.sample.gbit_per_second(),
                    s.sample.cpu_seconds_per_gb(),
                    s.zcnet.zerocopy_copied,
                    s.zcnet.zerocopy_completed,
                    s.buffers,
                    s.warmup_seconds
                );
                udp_samples.push(s);
            }
        }
        vxlan_repetition(&zcnet, &plan, repetition, &mut vxlan_samples)?;
        let i = measure::tap::idle(&zcnet, repetition, plan.timing)
            .map_err(|source| BenchError::Idle { repetition, source })?;
        eprintln!(
            "  {}/{} idle: zcnet used {:.3} s of CPU in {:.2} s",
            repetition + 1,
            plan.repetitions,
            i.cpu_seconds,
            i.seconds
        );
        idle.push(i);
    }

    let summary = report::tap::summarize(&samples);
    let udp = report::udp::summarize(&udp_samples, plan.udp_sizes);
    let vxlan = report::vxlan::summarize(&vxlan_samples);
    let run = Run {
        command,
        machine,
        zcnet_bin: zcnet.path().display().to_string(),
        mode: plan.mode,
        repetitions: plan.repetitions,
        warmup_seconds: plan.timing.warmup.as_secs_f64(),
        window_seconds: plan.timing.window.as_secs_f64(),
        udp_warmup_seconds: plan.udp_timing.warmup.as_secs_f64(),
        udp_window_seconds: plan.udp_timing.window.as_secs_f64(),
        samples,
        idle,
        summary,
        udp_samples,
        udp,
        vxlan_samples,
        vxlan,
        not_measured,
    };
    print!("{}", report::markdown(&run));

    fs::create_dir_all(&out_dir).map_err(|e| BenchError::Write(out_dir.clone(), e))?;
    let out_dir = out_dir.canonicalize().unwrap_or(out_dir);
    let json_path = out_dir.join("bench.json");
    let json = serde_json::to_string_pretty(&run).expect("the run serializes");
    fs::write(&json_path, json + "\n").map_err(|e| BenchError::Write(json_path.clone(), e))?;
    let svg_path = out_dir.join("bench.svg");
    let subtitle = |window_seconds: f64| {
        format!(
            "{} mode: median of {} window(s) of {} s, error bars min..max; {}, {} cores, \
             Linux {}",
            run.mode,
            run.repetitions,
            window_seconds,
            run.machine.cpu_model,
            run.machine.cores,
            run.machine.kernel
        )
    };
    chart::draw_tap(&svg_path, &run.summary, &subtitle(run.window_seconds))
        .map_err(|e| BenchError::Chart(svg_path.clone(), e))?;
    let udp_svg_path = out_dir.join("bench-udp.svg");
    chart::draw_udp(&udp_svg_path, &run.udp, &subtitle(run.udp_window_seconds))
        .map_err(|e| BenchError::Chart(udp_svg_path.clone(), e))?;
    println!("\nRaw numbers (every repetition): {}", json_path.display());
    println!("Charts: {}, {}", svg_path.display(), udp_svg_path.display());
    println!(
        "Took {:.0} s ({} mode).",
        started.elapsed().as_secs_f64(),
        run.mode
    );

    let empty: Vec<String> = run
        .samples
        .iter()
        .filter(|s| s.sample.frames == 0)
        .map(|s| format!("{} on {} (repetition {})", s.workload, s.side, s.repetition))
        .chain(
            run.udp_samples
                .iter()
                .filter(|s| s.sample.frames == 0)
                .map(|s| {
                    format!(
                        "UDP {} {} B (repetition {})",
                        s.mode, s.frame_len, s.repetition
                    )
                }),
        )
        .collect();
    if !empty.is_empty() {
        return Err(BenchError::NoFrames(empty.join(", ")));
    }
    for line in &run.not_measured {
        eprintln!("zcnet-bench: NOT MEASURED: {line}");
    }
    Ok(())
}

/// One repetition of every VXLAN case, in the order `modes` puts first.
fn vxlan_repetition(
    zcnet: &ZcnetBin,
    plan: &Plan,
    repetition: usize,
    out: &mut Vec<measure::vxlan::VxlanSample>,
) -> Result<(), BenchError> {
    let mut cases = vxlan::VxlanCase::ALL.to_vec();
    if repetition % 2 == 1 {
        // Alternate which mode of each pair goes first.
        cases.chunks_mut(2).for_each(|c| c.reverse());
    }
    for case in cases {
        let s =
            measure::vxlan::run(zcnet, case, repetition, plan.udp_timing).map_err(|source| {
                BenchError::MeasureVxlan {
                    case: case.title(),
                    repetition,
                    source,
                }
            })?;
        eprintln!(
            "  {}/{} {:<62} {:>10.0} frames/s {:>8.3} Gbit/s {:>7.3} CPU s/GB  \
             {:.1} inner frames per frame, {:.1} ids per lent frame, kernel copied {}/{}",
            repetition + 1,
            plan.repetitions,
            case.title(),
            s.sample.frames_per_second(),
            s.sample.gbit_per_second(),
            s.sample.cpu_seconds_per_gb(),
            s.inner_frames as f64 / s.zcnet.frames.max(1) as f64,
            s.zcnet.zerocopy_completed as f64 / s.zcnet.zerocopy_sends.max(1) as f64,
            s.zcnet.zerocopy_copied,
            s.zcnet.zerocopy_completed,
        );
        out.push(s);
    }
    Ok(())
}

/// `--vxlan-only`: the VXLAN workloads alone.
fn run_vxlan_only(
    zcnet: &ZcnetBin,
    plan: &Plan,
    out_dir: PathBuf,
    started: Instant,
) -> Result<(), BenchError> {
    let mut samples = Vec::new();
    for repetition in 0..plan.repetitions {
        vxlan_repetition(zcnet, plan, repetition, &mut samples)?;
    }
    let summary = report::vxlan::summarize(&samples);
    let machine = Machine::this();
    let mut text = format!(
        "# zcnet-bench --vxlan-only\n\n- command: `{}`\n- machine: {}, {} cores, Linux {}\n\
         - mode: {}: {} repetition(s); cells are median (min..max)\n",
        command_line(),
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        plan.mode,
        plan.repetitions
    );
    report::vxlan::markdown(
        &mut text,
        &summary,
        plan.udp_timing.warmup.as_secs_f64(),
        plan.udp_timing.window.as_secs_f64(),
    );
    print!("{text}");
    fs::create_dir_all(&out_dir).map_err(|e| BenchError::Write(out_dir.clone(), e))?;
    let path = out_dir.join("bench-vxlan.json");
    let json = serde_json::json!({ "samples": samples, "summary": summary });
    fs::write(&path, json.to_string() + "\n").map_err(|e| BenchError::Write(path.clone(), e))?;
    println!("\nRaw numbers (every repetition): {}", path.display());
    println!(
        "Took {:.0} s ({} mode).",
        started.elapsed().as_secs_f64(),
        plan.mode
    );
    if let Some(s) = samples.iter().find(|s| s.sample.frames == 0) {
        return Err(BenchError::NoFrames(s.case.title()));
    }
    Ok(())
}

/// `target/bench` of the target directory this binary runs from.
fn default_out_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target/bench"), |t| t.join("bench"))
}

/// The command line as typed, with arguments quoted where a shell needs it.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
