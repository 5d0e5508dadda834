#!/usr/bin/env bash
# kill -9 at N seeded random moments of backup, prune and restore against one local repository;
# after each kill `repo check` must pass, and no snapshot may be lost (only `forget`, run unkilled
# between rounds, removes snapshots). At the end every snapshot is restored.
# Prints: damaged repositories, lost snapshots, snapshots that do not restore (each expected 0).
# Usage: bench/kill9.sh [N=200] [SEED=1]     (LIFEBOAT_BIN: the binary, default: a release build)
# Not covered here: kills inside failover (the lab's dr tests kill it after each journaled step).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"; SEED="${2:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}"
LB="${LIFEBOAT_BIN:-}"
if [ -z "$LB" ]; then cargo build -q --release -p lifeboat; LB="$CARGO_TARGET_DIR/release/lifeboat"; fi
W="$(mktemp -d /var/tmp/lifeboat-kill9.XXXXXX)"; trap 'rm -rf "$W"' EXIT
R="$W/repo"; export LIFEBOAT_PASSWORD=kill9; unset LIFEBOAT_REPO
lb() { "$LB" --repo "$R" "$@"; }
lb repo init >/dev/null
mkdir -p "$W/src"
RANDOM="$SEED"
for f in $(seq 20); do head -c $((RANDOM * 64)) /dev/urandom > "$W/src/f$f"; done
lb backup files "$W/src" >/dev/null
snaps() { lb --json snapshots | python3 -c 'import json,sys; print("\n".join(s["id"] for s in json.load(sys.stdin)))' | sort; }
damaged=0; lost=0; kills=0
declare -A counts=([backup]=0 [prune]=0 [restore]=0)
expected="$(snaps)"
for i in $(seq "$N"); do
  case $((RANDOM % 3)) in
    0) op=backup; head -c $((RANDOM * 128)) /dev/urandom > "$W/src/f$((RANDOM % 30))"
       args=(backup files "$W/src");;
    1) op=prune; lb forget --keep-last 3 >/dev/null; expected="$(snaps)"
       args=(prune --min-age 0s);;
    2) op=restore; rm -rf "$W/out"; args=(restore latest --to "files:$W/out");;
  esac
  counts[$op]=$((counts[$op] + 1))
  "$LB" --repo "$R" "${args[@]}" >/dev/null 2>&1 & pid=$!   # the binary itself, not a subshell
  sleep "$(printf '0.%03d' $((RANDOM % 1000)))"
  if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
  wait "$pid" 2>/dev/null || true
  if ! out="$(lb repo check 2>&1)"; then
    damaged=$((damaged + 1)); echo "round $i ($op): repo check fails:" >&2; echo "$out" | grep -v '^ok' | head -5 >&2
  fi
  now="$(snaps)"
  missing="$(comm -23 <(echo "$expected") <(echo "$now") | grep -c . || true)"
  lost=$((lost + missing))
  expected="$now"
done
unrestorable=0
for s in $(snaps); do
  rm -rf "$W/out"
  lb restore "$s" --to "files:$W/out" >/dev/null 2>&1 || { unrestorable=$((unrestorable + 1)); echo "snapshot $s does not restore" >&2; }
done
lb repo check --read-data >/dev/null 2>&1 || { damaged=$((damaged + 1)); echo "final check --read-data fails" >&2; }
echo "kill9: seed $SEED, $N rounds (backup ${counts[backup]}, prune ${counts[prune]}, restore ${counts[restore]}), $kills killed mid-run"
echo "kill9: damaged repositories $damaged, lost snapshots $lost, snapshots that do not restore $unrestorable (of $(snaps | grep -c .))"
[ "$damaged" = 0 ] && [ "$lost" = 0 ] && [ "$unrestorable" = 0 ]
