#!/usr/bin/env bash
# Runs the `decode` fuzz target (riskpipe's JSON input decoders) for a while.
#
#   fuzz/run.sh [SECONDS]          default 60; extra libFuzzer flags via FUZZ_ARGS, e.g.
#   FUZZ_ARGS="-runs=10000000" fuzz/run.sh 0     (0 = no time limit)
#
# Sanitizer: none by default (riskpipe forbids unsafe code; the oracle is panics, debug
# assertions, overflow checks and the target's invariants); FUZZ_SANITIZER=address for ASan
# (about half the speed, and a separate build).
# One job, lowest CPU priority, build jobs from CARGO_BUILD_JOBS (default 1). Builds into
# fuzz/target (never the workspace's target/). New inputs go to fuzz/corpus/decode (ignored by
# git); the checked-in seeds in fuzz/seeds/decode are read, never written; crashes land in
# fuzz/artifacts/decode.
set -euo pipefail

secs="${1:-60}"
fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."   # cargo fuzz looks for ./fuzz

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    nice -n 19 cargo install cargo-fuzz --locked -j "${CARGO_BUILD_JOBS:-1}"
fi

# The fuzz binary links riskpipe-pipeline, hence riskpipe-models, whose build script otherwise
# downloads the ONNX Runtime wheel with pip. The decoders never load ONNX Runtime: name a path
# so the download is skipped (a path you set yourself is kept).
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-/nonexistent/libonnxruntime.so.unused-by-fuzz}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

corpus="fuzz/corpus/decode"
mkdir -p "$corpus" fuzz/artifacts/decode
cp -n fuzz/seeds/decode/* "$corpus"/
# fuzz/seeds/regressions holds the reproducers of fixed findings: they seed every run too (replay
# them alone with `cargo +nightly fuzz run decode --sanitizer none fuzz/seeds/regressions/*`).
cp -n fuzz/seeds/regressions/* "$corpus"/

time_flag=()
if [ "$secs" != 0 ]; then
    time_flag=("-max_total_time=$secs")
fi
# shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
exec nice -n 19 cargo +nightly fuzz run decode --sanitizer "${FUZZ_SANITIZER:-none}" "$corpus" fuzz/seeds/decode \
    -- -max_len=4096 -print_final_stats=1 "${time_flag[@]}" ${FUZZ_ARGS:-}
