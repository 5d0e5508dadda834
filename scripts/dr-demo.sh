#!/usr/bin/env bash
# Lifeboat's main job, end to end, on the local lab (as root): two Docker sites in network
# namespaces and a DNS server, a demo app (web app and PostgreSQL with data) on site a with a hot
# standby on b, then: preflight, failover with measured RTO and RPO, failback, and a drill with its
# reports, and the status it ends in. Everything it starts is torn down by `lab/lab down`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}
command -v cargo >/dev/null || { echo "dr-demo: needs Rust (cargo)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release -q -p lifeboat)
L="$CARGO_TARGET_DIR/release/lifeboat"
export LIFEBOAT_BIN=$L
"$ROOT/lab/lab" up --docker 2 --dns --demo >/dev/null
eval "$("$ROOT/lab/lab" env)"
export LIFEBOAT_PASSWORD_FILE=$LAB_DEMO_PASSWORD_FILE
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
name() { dig +short -p "${LAB_DNS_SERVER##*:}" @"${LAB_DNS_SERVER%:*}" "$LAB_DEMO_NAME" A; }

step "the plan: $LAB_DEMO_PLAN"
cat "$LAB_DEMO_PLAN"
step "lifeboat backup --plan (stages the hot standby on b)"
"$L" backup --plan "$LAB_DEMO_PLAN"
step "lifeboat plan check"
"$L" plan check "$LAB_DEMO_PLAN" || true
step "$LAB_DEMO_NAME resolves to $(name); the app there says:"
curl -s "http://$(name):8080/cgi-bin/items"
curl -s "http://$(name):8080/cgi-bin/add?written-before-failover" >/dev/null
step "lifeboat failover (fence a, final backup, data, start b, health, DNS, verify)"
"$L" failover "$LAB_DEMO_PLAN" 2>/dev/null
step "$LAB_DEMO_NAME now resolves to $(name); the app there says:"
curl -s "http://$(name):8080/cgi-bin/items"
step "lifeboat failback"
"$L" failback "$LAB_DEMO_PLAN" 2>/dev/null
step "lifeboat drill (an isolated copy on b, measured, torn down; reports in /tmp/lifeboat-drill/)"
"$L" drill "$LAB_DEMO_PLAN" --report /tmp/lifeboat-drill/report 2>/dev/null
ls /tmp/lifeboat-drill/
step "lifeboat status (where the app stands now: RPO, traffic, last drill, readiness)"
"$L" status "$LAB_DEMO_PLAN" || true
step "a runbook for doing it by hand: lifeboat runbook $LAB_DEMO_PLAN"
