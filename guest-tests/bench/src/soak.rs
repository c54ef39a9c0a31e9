//! `zcnet-soak`: the long run of `zcnet_harness::soak` against the real
//! zcnet (`ZCNET_BIN`, or the `zcnet` of this target directory):
//!
//! ```sh
//! cargo build --release -p zcnet
//! cargo run --release -p zcnet-bench --bin zcnet-soak -- --frames 1000000
//! ```
//!
//! Exits non-zero (a panic naming what broke) at the first lost,
//! duplicated or early chain, wrong frame, or leak.

use std::time::Instant;

use clap::Parser;
use zcnet_harness::daemon::ZcnetBin;
use zcnet_harness::soak::{self, SoakConfig, RSS_TOLERANCE_KIB};

/// Soak zcnet: TX and RX frames of random sizes, one chain in ten
/// malformed, through a tap and a zero-copy UDP attachment, with frontend
/// reconnects and memory-table changes (run as root: it makes network
/// namespaces).
#[derive(Debug, Parser)]
#[command(name = "zcnet-soak")]
struct Args {
    /// TX frames, and as many RX frames, in all (half through each
    /// attachment).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// A clean frontend reconnect every this many frames (TX and RX
    /// together) on each attachment.
    #[arg(long, default_value_t = 100_000)]
    reconnect_every: u64,
    /// The random seed (default: a fresh one, printed).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let bin = ZcnetBin::from_env();
    println!(
        "zcnet-soak: {} on {} TX and {} RX frames, a reconnect every {}, seed {seed}",
        bin.path().display(),
        args.frames,
        args.frames,
        args.reconnect_every
    );
    let start = Instant::now();
    let reports = soak::run(
        &bin,
        &SoakConfig {
            frames: args.frames,
            reconnect_every: args.reconnect_every,
            seed,
        },
    );
    for r in &reports {
        println!("{r}");
    }
    println!(
        "zcnet-soak: passed in {:.1} s (descriptors equal after warm-up, RSS within {} KiB)",
        start.elapsed().as_secs_f64(),
        RSS_TOLERANCE_KIB
    );
}
