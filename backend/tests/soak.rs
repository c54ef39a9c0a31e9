//! The soak, shortened for CI (the full one: `zcnet-soak`, README): 50,000
//! TX and 50,000 RX frames through the real zcnet under its default
//! `--seccomp enforce`, half through a tap and half through the UDP
//! attachment lending pages (`--zerocopy on`, a tbf qdisc holding them),
//! one chain in ten malformed, a clean reconnect every 20,000 frames, the
//! memory table sent again and a region added and removed mid-traffic.
//! No chain lost, duplicated or returned early; every valid frame arrives
//! byte for byte; zcnet's descriptors back at their count after warm-up
//! and its RSS within the stated tolerance (see `zcnet_harness::soak`).
//!
//! The seed is fresh each run and printed; `ZCNET_SOAK_SEED=N` replays one.

use zcnet_harness::daemon::ZcnetBin;
use zcnet_harness::soak::{self, SoakConfig};

#[test]
fn soak_short() {
    let seed = match std::env::var("ZCNET_SOAK_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("ZCNET_SOAK_SEED={s:?} is not a u64 seed")),
        Err(_) => fastrand::u64(..),
    };
    eprintln!("soak seed {seed} (replay: ZCNET_SOAK_SEED={seed})");
    let reports = soak::run(
        &ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet")),
        &SoakConfig {
            frames: 50_000,
            reconnect_every: 20_000,
            seed,
        },
    );
    for r in &reports {
        eprintln!("{r}");
        assert!(r.reconnects >= 2 && r.mem_tables > 0 && r.regions_added_and_removed > 0);
    }
}
