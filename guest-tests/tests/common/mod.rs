//! The guest-test harness: a namespace with a tap and iperf3 servers
//! (`lab`), the guest image (`image`), a QEMU process and its serial
//! console (`vm`), and the guest's result lines (`results`). The namespace
//! and the zcnet process come from the backend's own test harness.
#![allow(dead_code)] // shared with the backend's tests, which use more of it

#[path = "../../../backend/tests/common/daemon.rs"]
pub mod daemon;
#[path = "../../../backend/tests/common/netns.rs"]
pub mod netns;

pub mod image;
pub mod lab;
pub mod results;
pub mod vm;

use std::sync::{Mutex, MutexGuard};

/// Guests run one at a time: two TCG guests on two cores would only
/// measure each other.
pub fn one_guest_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// True when the developer asked to skip the guest tests. Says so loudly;
/// refuses (fails the test) when `CI` is set, so CI never passes by
/// skipping.
pub fn skip_requested(test: &str) -> bool {
    if std::env::var_os("ZCNET_SKIP_GUEST_TESTS").is_none() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ZCNET_SKIP_GUEST_TESTS is set while CI is set: CI must run the guest tests"
    );
    eprintln!(
        "\n!!!! SKIPPED {test}: ZCNET_SKIP_GUEST_TESTS is set. \
         This run does NOT show that a VM works through zcnet. !!!!\n"
    );
    true
}
