//! A daemon serves frontend after frontend without running out of file
//! descriptors: after each connection ends, it holds exactly what it held
//! before. vhost-user-backend 0.24 leaks one eventfd per worker thread per
//! connection (see `backend/src/exit_events.rs`); the `vhost_daemon` fuzz
//! target found it when it stopped on EMFILE.

use std::time::{Duration, Instant};

use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::guest::{FakeGuest, GuestOpts};
use zcnet_harness::setup::Setup;

/// Waits (bounded) until the daemon has logged the end of `n` connections.
fn wait_disconnects(d: &Daemon, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let needle = "frontend disconnected; waiting for the next connection";
    while d.log_text().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "{n} disconnects never logged:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10)); // polling a condition, with a deadline
    }
}

fn open_fds(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    fds.sort();
    fds
}

#[test]
fn reconnecting_frontends_leave_no_descriptor_behind() {
    for pairs in [1usize, 2] {
        let s = Setup::new(
            &ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet")),
            &["--queue-pairs", &pairs.to_string()],
        );
        let opts = GuestOpts {
            pairs,
            ..GuestOpts::default()
        };
        let pid = s.daemon.pid();
        // One connection first: whatever the daemon keeps for its life
        // (the tap queues, listeners) is open after it.
        drop(FakeGuest::connect(&s.daemon.socket, &opts));
        wait_disconnects(&s.daemon, 1);
        let after_one = open_fds(pid);
        for n in 2..=21 {
            drop(FakeGuest::connect(&s.daemon.socket, &opts));
            wait_disconnects(&s.daemon, n);
        }
        assert_eq!(
            open_fds(pid),
            after_one,
            "{pairs} pair(s): descriptors left behind by 20 connections"
        );
    }
}
