//! Guest tests for zcnet live in `tests/`: they build a guest image from
//! Debian packages (`image/build-image.sh`), boot it under QEMU with
//! `-netdev vhost-user` connected to the real `zcnet` binary, and run
//! iperf3 in the guest against a server in a network namespace. The
//! harness they use is `zcnet-harness` (`harness/`); this library holds
//! only what reads the guest's results.

pub mod results;
