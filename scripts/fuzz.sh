#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a short, fixed budget each, keeping the corpora in
# $FUZZ_CORPUS/TARGET (default fuzz/corpus, the committed corpora minimized with `cargo fuzz cmin`):
# inputs libFuzzer finds are added there. `scripts/test.sh` keeps its corpora in
# ~/.cache/lifeboat-fuzz-corpus, seeded from the committed ones, so they grow from run to run.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
# Installs cargo-fuzz with `cargo install` when it is missing (cached in ~/.cargo/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/lifeboat-fuzz-target}"
# cargo-fuzz needs nightly flags: the nightly toolchain when there is one or it can be installed,
# else the stable one with RUSTC_BOOTSTRAP=1 (same flags, on a machine that can fetch no toolchain).
if rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
  tc=+nightly
else
  tc=+stable; export RUSTC_BOOTSTRAP=1
  echo "fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1"
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=$(cd fuzz && cargo "$tc" fuzz list)
# Built once up front, so a build problem is reported as such and not as a target's crash.
(cd fuzz && cargo "$tc" fuzz build)
corpus="$(realpath -m "${FUZZ_CORPUS:-fuzz/corpus}")"
failed=()
for t in $targets; do
  mkdir -p "$corpus/$t"
  echo "fuzz: $t for ${secs}s"
  # -max_total_time bounds the run; a crash exits non-zero and leaves the input in fuzz/artifacts/$t.
  if ! (cd fuzz && cargo "$tc" fuzz run "$t" "$corpus/$t" -- -max_total_time="$secs" -max_len=65536 -print_final_stats=1 2>&1 \
        | grep -E '^(stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|Done)' ); then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/)" >&2; exit 1; fi
echo "fuzz: every target ran ${secs}s without a crash"
