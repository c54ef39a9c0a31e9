#!/usr/bin/env bash
# The whole test suite of zcnet, as CI runs it (README's test command).
# Installs what it needs on a fresh Debian 12 machine (root), builds the
# guest image (cached under target/), then: format, lints, unit and
# integration tests through a real tap, and the guest tests under QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s ====\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "ci/test.sh: run as root: the tests create network namespaces and taps" >&2
    exit 1
fi
if [[ -n "${ZCNET_SKIP_GUEST_TESTS:-}" && -n "${CI:-}" ]]; then
    echo "ci/test.sh: ZCNET_SKIP_GUEST_TESTS is set in CI; guest tests must run" >&2
    exit 1
fi
if [[ ! -c /dev/net/tun ]]; then
    echo "ci/test.sh: /dev/net/tun is missing; the tap tests need it" >&2
    exit 1
fi

step "host packages and guest image (QEMU 10, iperf3, busybox, nftables, cloud kernel)"
bash guest-tests/image/build-image.sh target/guest-image

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

step "build"
cargo build --workspace --release --all-targets

step "unit and integration tests (real tap, real vhost-user socket, memfd guest memory)"
cargo test --workspace --release --exclude guest-tests

step "fuzz targets (corpus replay on stable; 20 s per target when nightly is installed)"
bash ci/fuzz.sh

step "benchmark command, --quick (shows it runs; timing is never asserted)"
cargo run --release -p zcnet-bench -- --quick

step "guest tests (QEMU TCG guest, -netdev vhost-user on zcnet, iperf3)"
ZCNET_BIN="$PWD/target/release/zcnet" \
    cargo test --release -p guest-tests -- --nocapture --test-threads=1 2>&1 |
    tee target/guest-tests.log
grep -h "GUEST-RESULT" -A2 target/guest-tests.log || true

step "all tests passed"
