#!/usr/bin/env bash
# The status API and dashboard with 200 apps in the plan (no site to reach; a 400 MiB backup runs
# into the same repository meanwhile, again and again), printed against the issue's targets:
#   GET /metrics and GET /api/v1/status, 300 requests each over one TLS connection: p99 < 50 ms
#   the dashboard in headless Chromium (Debian's chromium), 200 rows drawn: < 1 s
# Usage: bench/api.sh        (needs chromium for the dashboard figure; no root, no lab)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}"
cargo test -q -p lifeboat --test api_bench -- --ignored --nocapture 2>&1 | grep '^bench:' | sed 's/^bench: //'
