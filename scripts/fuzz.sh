#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a short, fixed budget each, keeping the corpora in
# fuzz/corpus/TARGET (inputs libFuzzer finds are added there; commit them to keep them).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20; needs the nightly toolchain)
# Installs cargo-fuzz with `cargo +nightly install` when it is missing (cached in ~/.cargo/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/lifeboat-fuzz-target}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
targets=$(cd fuzz && cargo +nightly fuzz list)
# Built once up front, so a build problem is reported as such and not as a target's crash.
(cd fuzz && cargo +nightly fuzz build)
failed=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  echo "fuzz: $t for ${secs}s"
  # -max_total_time bounds the run; a crash exits non-zero and leaves the input in fuzz/artifacts/$t.
  if ! (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 -print_final_stats=1 2>&1 \
        | grep -E '^(stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|Done)' ); then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/)" >&2; exit 1; fi
echo "fuzz: every target ran ${secs}s without a crash"
