#!/usr/bin/env bash
# Lifeboat's main job on its embedded default: a local, encrypted repository.
# Builds the binary, backs up a directory (default: this project's own tree), backs it up again
# (incremental), restores it, compares, and verifies every byte of the repository.
# Usage: scripts/demo.sh [DIRECTORY]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}"
command -v cargo >/dev/null || { echo "demo: cargo is needed (https://rustup.rs)" >&2; exit 1; }
cargo build --release --quiet -p lifeboat
lb="$CARGO_TARGET_DIR/release/lifeboat"
src="$(realpath "${1:-.}")"
work="${LIFEBOAT_DEMO_DIR:-/tmp/lifeboat-demo}"
rm -rf "$work" && mkdir -p "$work"
export LIFEBOAT_REPO="$work/repo" LIFEBOAT_PASSWORD="${LIFEBOAT_PASSWORD:-demo-password}"
set -x
"$lb" repo init
"$lb" backup files "$src"
"$lb" backup files "$src"
"$lb" snapshots
"$lb" restore latest --to "files:$work/restore"
"$lb" repo check --read-data
{ set +x; } 2>/dev/null
diff -r --no-dereference "$src" "$work/restore$src" && echo "demo: restored tree is identical to $src"
