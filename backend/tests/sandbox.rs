//! The seccomp sandbox through the real daemon: every thread of a zcnet
//! serving a frontend (the main thread, control, metrics and its HTTP
//! threads, vhost-user-backend's request handler and queue worker, the
//! relays) runs under its filters, as the kernel reports them in
//! `/proc/PID/task/TID/status`; `--seccomp log` and `off` are accepted;
//! a bad value is refused with what to write instead. (Denials
//! themselves are tested in a child process: `sandbox::tests`.)

use std::collections::BTreeMap;
use std::process::Command;

use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::frames::PacketSock;
use zcnet_harness::guest::{FakeGuest, GuestOpts};
use zcnet_harness::roundtrip::{rx_roundtrip, tx_roundtrip};
use zcnet_harness::setup::{Setup, TAP};

fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

/// Each thread's name, seccomp mode and number of filters.
fn threads(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .trim()
                .parse()
                .unwrap()
        };
        out.push((
            comm.trim().to_owned(),
            field("Seccomp:"),
            field("Seccomp_filters:"),
        ));
    }
    out.sort();
    out
}

/// A zcnet with `extra` arguments, serving a fake guest that moved a
/// frame each way and scraped the metrics: every kind of thread exists
/// and has done its work.
fn serving(extra: &[&str]) -> (Setup, FakeGuest, Vec<(String, u32, u32)>) {
    let s = Setup::new(&zcnet(), extra);
    let host = PacketSock::open(&s.ns, TAP, true);
    let raw = PacketSock::open(&s.ns, TAP, false);
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 1);
    rx_roundtrip(&mut g, &raw, 2);
    let _ = Daemon::scrape(&s.ns);
    let t = threads(s.daemon.pid());
    (s, g, t)
}

fn check_filtered(t: &[(String, u32, u32)], log: &str) {
    // Seccomp 2 is filter mode. The main thread has its own filter and
    // the clone3 one; every other thread inherits both and adds its own.
    let mut kinds = BTreeMap::new();
    for (comm, mode, filters) in t {
        assert_eq!(*mode, 2, "thread {comm} is not filtered: {t:?}\n{log}");
        let want = if comm == "zcnet" { 2 } else { 3 };
        assert_eq!(
            *filters, want,
            "thread {comm} has {filters} filters, not {want}: {t:?}"
        );
        *kinds.entry(comm.as_str()).or_insert(0) += 1;
    }
    for kind in [
        "zcnet",
        "zcnet-control",
        "zcnet-metrics",
        "zcnet-vhost-use",
        "zcnet-relay-req",
        "zcnet-relay-rep",
        "vring_worker",
    ] {
        assert!(kinds.contains_key(kind), "no {kind} thread: {t:?}");
    }
}

#[test]
fn every_thread_of_a_serving_daemon_is_filtered_by_default() {
    let (s, _g, t) = serving(&[]);
    let log = s.daemon.log_text();
    check_filtered(&t, &log);
    assert!(log.contains("seccomp: enforced"), "{log}");
}

#[test]
fn log_mode_filters_every_thread_too_and_off_none() {
    let (s, _g, t) = serving(&["--seccomp", "log"]);
    check_filtered(&t, &s.daemon.log_text());
    assert!(s.daemon.log_text().contains("seccomp: logging"));

    let (s, _g, t) = serving(&["--seccomp", "off"]);
    assert!(
        t.iter()
            .all(|(_, mode, filters)| *mode == 0 && *filters == 0),
        "{t:?}"
    );
    assert!(s.daemon.log_text().contains("seccomp: off"));
}

#[test]
fn a_bad_seccomp_value_says_what_to_write() {
    let out = Command::new(env!("CARGO_BIN_EXE_zcnet"))
        .args(["--socket-path", "/tmp/zc-never.sock", "--tap", "zt9"])
        .args(["--seccomp", "strict"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--seccomp"), "{err}");
    assert!(err.contains("enforce, log, off"), "{err}");
}
