#!/usr/bin/env bash
# zcnet's fuzz targets (backend/fuzz/, cargo-fuzz).
#
# Always: the committed corpus (seeds and crash-* regressions) is replayed
# on stable through the functions the targets call
# (backend/tests/fuzz_corpus.rs).
# With a nightly toolchain: each target also runs under libFuzzer for
# ZCNET_FUZZ_SECONDS (default 20) seconds, starting from the committed
# corpus; what it finds is kept in target/fuzz-corpus/ (not committed). A
# crash fails the script and leaves its input in
# backend/fuzz/artifacts/<target>/: make it a regression (copy it to
# backend/fuzz/corpus/<target>/crash-<what>) and fix it.
# Which mode ran is printed loudly at the start and at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${ZCNET_FUZZ_SECONDS:-20}"
targets=(descriptor_chains vnet_hdr records vxlan vhost_messages vhost_daemon)
banner() { printf '\n==== %s ====\n' "$*"; }

banner "fuzz corpus replay on stable (cargo test --release -p zcnet --test fuzz_corpus)"
# --release: the profile ci/test.sh builds, so nothing is built twice.
cargo test --release -p zcnet --test fuzz_corpus

if ! nightly=$(cargo +nightly --version 2>/dev/null); then
    banner "MODE: CORPUS REPLAY ONLY -- no nightly toolchain ('cargo +nightly --version' failed), so the fuzz targets did NOT run"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    banner "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
banner "MODE: FUZZING on nightly ($nightly, $(cargo fuzz --version)): ${#targets[@]} targets, ${seconds} s each"
work="$PWD/target/fuzz-corpus"
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    banner "fuzzing $t for ${seconds} s"
    # The first corpus directory takes what the fuzzer finds; the
    # committed one is only read. -timeout: a single input taking a
    # minute is a hang (the vhost_daemon target waits at most 30 s for
    # the daemon).
    (cd backend/fuzz &&
        cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
            -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1)
done
banner "MODE: FUZZING ran: ${#targets[@]} targets, ${seconds} s each, no crash"
