//! Guest tests for zcnet live in `tests/`: they build a guest image from
//! Debian packages (`image/build-image.sh`), boot it under QEMU with
//! `-netdev vhost-user` connected to the real `zcnet` binary, and run
//! iperf3 in the guest against a server in a network namespace. The
//! harness they use is `zcnet-harness` (`harness/`).
//!
//! `src/bin/zcnet-bench` is the benchmark command: the real `zcnet` binary
//! fed by the fake guest of `zcnet-harness` (no VM), against the raw tap
//! limit.

pub mod results;
