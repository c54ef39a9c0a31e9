//! Guest tests for zcnet live in `tests/`: they build a guest image from
//! Debian packages (`image/build-image.sh`), boot it under QEMU with
//! `-netdev vhost-user` connected to the real `zcnet` binary, and run
//! iperf3 in the guest against a server in a network namespace.
//!
//! `src/bin/zcnet-bench` is the benchmark command: the real `zcnet` binary
//! fed by the backend's fake guest (no VM), against the raw tap limit.
