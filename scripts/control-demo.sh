#!/usr/bin/env bash
# The control plane on the local lab (as root): three Docker sites, each with a member of a
# 3-member etcd cluster in its network namespace, and the lab's demo app on site a with a hot
# standby on b. Three `lifeboat serve` instances run the same plan, one inside each site's
# namespace (a and b guard their sites, c is the witness). Then: the leader on a, its first
# scheduled drill, the readiness level, `lab/lab kill a`, the failover by the new leader on a
# majority verdict, and, after `lab/lab up` brings a back, the failback by hand.
# Usage: scripts/control-demo.sh        (logs of the three instances: /tmp/lifeboat-control-demo/)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}
[ "$(id -u)" = 0 ] || { echo "control-demo: run as root (the lab)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "control-demo: needs Rust (cargo)" >&2; exit 1; }
# LIFEBOAT_BIN: a lifeboat binary already built (default: a release build made here).
if [ -z "${LIFEBOAT_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p lifeboat)
  LIFEBOAT_BIN="$CARGO_TARGET_DIR/release/lifeboat"
fi
L=$LIFEBOAT_BIN
export LIFEBOAT_BIN=$L
UP=(up --docker 3 --dns --etcd --demo)
"$ROOT/lab/lab" "${UP[@]}" >/dev/null
eval "$("$ROOT/lab/lab" env)"
export LIFEBOAT_PASSWORD_FILE=$LAB_DEMO_PASSWORD_FILE
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
name() { dig +short -p "${LAB_DNS_SERVER##*:}" @"${LAB_DNS_SERVER%:*}" "$LAB_DEMO_NAME" A; }
# Waits up to $2 seconds for the text $3 in the log of instance $1.
wait_log() {
  local i
  for i in $(seq "$2"); do grep -q "$3" "$D/$1.log" 2>/dev/null && return 0; sleep 1; done
  echo "control-demo: no \"$3\" in $D/$1.log after $2 s" >&2; return 1
}

# The demo's plan with coordination instead of a witness (the instances reach the DNS server at
# the lab's service address), a drill every 10 minutes, and a repository of its own.
D=/tmp/lifeboat-control-demo
rm -rf "$D" && mkdir -p "$D"
eps=$(printf '"%s", ' ${LAB_COORD_ETCD//,/ }); eps=${eps%, }
sed -e "s|^witness: .*|coordination: {etcd: {endpoints: [$eps], ttl: 10s}, instances: 3}|" \
    -e "s|^repository: .*|repository: $D/repo|" \
    -e "s|server: \"127.0.0.1:[0-9]*\"|server: \"$LAB_DNS_SERVICE\"|" \
    -e "s|^    backup: .*|&\n    drill: {every: 10m, keep: 5}|" \
    "$LAB_DEMO_PLAN" > "$D/plan.yaml"
P=$D/plan.yaml
"$L" --repo "$D/repo" repo init >/dev/null
pids=()
serve() { # instance, extra args...
  local i=$1; shift
  ip netns exec "lifeboat-$i" "$L" serve "$P" --sync-every 0 --instance "$i" "$@" > "$D/$i.log" 2>&1 &
  pids+=($!)
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop_all EXIT

step "the plan: $P (coordination, drill schedule)"
grep -E '^coordination|drill:' "$P"
step "lifeboat backup --plan (stages the hot standby on b)"
"$L" backup --plan "$P"
step "three serve instances, each in its site's namespace: a (guards a), b (guards b), c (witness)"
serve a --site a
wait_log a 30 "leading (term"
serve b --site b
serve c
wait_log b 30 "following a"
wait_log c 30 "following a"
grep -h "leading\|following" "$D"/[abc].log
step "the leader's first scheduled drill (none was run yet, so it is due at once)"
wait_log a 240 "drill .* on b \(passed\|FAILED\)"
grep -h "drill" "$D/a.log"
"$L" drills "$P"
step "lifeboat plan check: the coordination as etcd holds it, the drill, the readiness level"
"$L" plan check "$P" | grep -E "coordination|drill|readiness|plan check" || true
step "lab/lab kill a: site a dies with the leader, its etcd member and its serve instance"
start=$(date +%s.%N)
kill -9 "${pids[0]}" 2>/dev/null || true
"$ROOT/lab/lab" kill a >/dev/null
for i in $(seq 120); do
  grep -q "demo: failed over\|failover failed" "$D/b.log" "$D/c.log" && break
  sleep 0.5
done
end=$(date +%s.%N)
grep -h "leading\|DOWN\|failed over\|failover failed\|fenced" "$D/b.log" "$D/c.log" || true
awk -v s="$start" -v e="$end" 'BEGIN { printf "site a killed to the failover done: %.1f s\n", e - s }' 
step "$LAB_DEMO_NAME now resolves to $(name); the app there says:"
curl -s "http://$(name):8080/cgi-bin/items"
step "the new leader keeps the drill schedule (placed by the last drill)"
grep -h "drill every" "$D/b.log" "$D/c.log" | tail -1
stop_all
step "lab/lab up brings a back (the app stays fenced there); lifeboat failback returns to a"
# (without --demo: its set-up would back up the lab's own demo plan, whose app now runs on b)
"$ROOT/lab/lab" up --docker 3 --dns --etcd >/dev/null
"$L" failback "$P" 2>/dev/null
echo "$LAB_DEMO_NAME resolves to $(name) again"
echo
echo "logs: $D/a.log $D/b.log $D/c.log; lab/lab down removes it all"
