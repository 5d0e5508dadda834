#!/usr/bin/env bash
# kill -9 at N seeded random moments of backup, prune, restore and (on the lab's two Docker sites)
# failover/failback, all against one local repository. After each kill `repo check` must pass and
# no snapshot may be lost (only `forget`, run unkilled between rounds, removes snapshots); a killed
# failover or failback is resumed by running the same command again, which must finish, and at no
# moment may the app run on both sites. At the end every snapshot is restored.
# Prints: damaged repositories, lost snapshots, snapshots that do not restore, moments with two
# active sites, and the side effects of the failovers (traffic switch requests received by a
# webhook receiver, post_restore hook runs counted in the app's own volume) against the number
# of operations (each expected 0 / equal).
# Usage: bench/kill9.sh [N=200] [SEED=1]     (LIFEBOAT_BIN: the binary, default: a release build;
#        KILL9_LAB=0: no failover rounds, no lab needed; else the lab's Docker sites are started)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"; SEED="${2:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}"
LB="${LIFEBOAT_BIN:-}"
if [ -z "$LB" ]; then cargo build -q --release -p lifeboat; LB="$CARGO_TARGET_DIR/release/lifeboat"; fi
W="$(mktemp -d /var/tmp/lifeboat-kill9.XXXXXX)"
R="$W/repo"; export LIFEBOAT_PASSWORD=kill9; unset LIFEBOAT_REPO
lb() { "$LB" --repo "$R" "$@"; }
LAB="${KILL9_LAB:-1}"
RECEIVER=""
cleanup() {
  [ -n "$RECEIVER" ] && kill "$RECEIVER" 2>/dev/null
  if [ "$LAB" = 1 ]; then
    for h in "$LAB_A_DOCKER_HOST" "$LAB_B_DOCKER_HOST"; do
      docker -H "$h" rm -f k9-web >/dev/null 2>&1 || true; docker -H "$h" volume rm -f k9-www >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$W"
}
trap cleanup EXIT
lb repo init >/dev/null
mkdir -p "$W/src"
RANDOM="$SEED"
for f in $(seq 20); do head -c $((RANDOM * 64)) /dev/urandom > "$W/src/f$f"; done
lb backup files "$W/src" >/dev/null
snaps() { lb --json snapshots | python3 -c 'import json,sys; print("\n".join(s["id"] for s in json.load(sys.stdin)))' | sort; }

if [ "$LAB" = 1 ]; then
  # The app: busybox httpd over a volume (lab image), restart=always, on a; cold standby b. Its
  # post_restore hook appends a line to a file in that volume, which every failover carries over,
  # so the file counts the hook's runs. Traffic: a webhook to a receiver on loopback that logs
  # each request's body.
  lab/lab up --docker 2 >/dev/null; eval "$(lab/lab env)"
  da() { docker -H "$LAB_A_DOCKER_HOST" "$@"; }
  dbb() { docker -H "$LAB_B_DOCKER_HOST" "$@"; }
  for d in da dbb; do $d rm -f k9-web >/dev/null 2>&1 || true; $d volume rm -f k9-www >/dev/null 2>&1 || true; done
  da run --rm -v k9-www:/www lifeboat-lab/web:1 sh -c 'echo ok > /www/healthz; : > /www/hooks' >/dev/null
  da run -d --name k9-web --label app=k9 --restart always -p 8391:8080 -v k9-www:/www lifeboat-lab/web:1 >/dev/null
  head -c 32 /dev/urandom | base64 > "$W/secret"; chmod 600 "$W/secret"
  python3 - "$W/switches" "$W/port" <<'PY' & RECEIVER=$!
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[1], "ab") as f:
            f.write(body + b"\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[2], "w").write(str(s.server_port))
s.serve_forever()
PY
  for _ in $(seq 50); do [ -s "$W/port" ] && break; sleep 0.1; done
  : > "$W/switches"
  cat > "$W/k9.yaml" <<PLAN
apiVersion: lifeboat.dev/v1
kind: DRPlan
metadata: {name: k9}
repository: $R
sites:
  a: {docker: {host: "$LAB_A_DOCKER_HOST", address: $LAB_A_ADDR}}
  b: {docker: {host: "$LAB_B_DOCKER_HOST", address: $LAB_B_ADDR}}
apps:
  - name: k9
    primary: a
    standby: b
    standby_mode: cold
    select: {labels: {app: k9}}
    health:
      - http: {url: "http://{site}:8391/healthz"}
        interval: 1s
        timeout: 1s
        failure_threshold: 3
    hooks:
      post_restore: [{exec: {container: k9-web, command: [sh, -c, "echo run >> /www/hooks"]}}]
    traffic:
      webhook: {url: "http://127.0.0.1:$(cat "$W/port")/switch", secret_file: $W/secret}
PLAN
  lb backup --plan "$W/k9.yaml" >/dev/null 2>&1
fi
running() { docker -H "$1" ps -q --filter label=app=k9 | grep -c . || true; }

damaged=0; lost=0; kills=0; two_active=0; unfinished=0; ops=0
declare -A counts=([backup]=0 [prune]=0 [restore]=0 [failover]=0)
declare -A killed=([backup]=0 [prune]=0 [restore]=0 [failover]=0)
active=a
expected="$(snaps)"
for i in $(seq "$N"); do
  pause="0.$(printf '%03d' $((RANDOM % 1000)))"
  case $((RANDOM % (LAB == 1 ? 4 : 3))) in
    0) op=backup; head -c $((RANDOM * 128)) /dev/urandom > "$W/src/f$((RANDOM % 30))"
       args=(backup files "$W/src");;
    1) op=prune; lb forget --keep-last 3 >/dev/null; expected="$(snaps)"
       args=(prune --min-age 0s);;
    2) op=restore; rm -rf "$W/out"; args=(restore latest --to "files:$W/out");;
    3) op=failover; pause="$((RANDOM % 12)).$(printf '%03d' $((RANDOM % 1000)))"
       if [ "$active" = a ]; then args=(failover "$W/k9.yaml"); else args=(failback "$W/k9.yaml"); fi;;
  esac
  counts[$op]=$((counts[$op] + 1))
  "$LB" --repo "$R" "${args[@]}" >/dev/null 2>&1 & pid=$!   # the binary itself, not a subshell
  if [ "$op" = failover ]; then
    # Watch both sites while it runs, until the kill: never may both run the app.
    end=$(python3 -c "import time; print(time.time() + $pause)")
    while python3 -c "import sys, time; sys.exit(0 if time.time() < $end else 1)"; do
      if [ "$(running "$LAB_A_DOCKER_HOST")" -gt 0 ] && [ "$(running "$LAB_B_DOCKER_HOST")" -gt 0 ]; then
        two_active=$((two_active + 1)); echo "round $i: the app runs on both sites" >&2
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
  else
    sleep "$pause"
  fi
  if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); killed[$op]=$((killed[$op] + 1)); fi
  wait "$pid" 2>/dev/null || true
  if [ "$op" = failover ]; then
    if [ "$(running "$LAB_A_DOCKER_HOST")" -gt 0 ] && [ "$(running "$LAB_B_DOCKER_HOST")" -gt 0 ]; then
      two_active=$((two_active + 1)); echo "round $i: after the kill, the app runs on both sites" >&2
    fi
    # The same command resumes the operation (or finds it finished).
    if ! out="$("$LB" --repo "$R" "${args[@]}" 2>&1)"; then
      unfinished=$((unfinished + 1)); echo "round $i (${args[0]}): the resume failed:" >&2; echo "$out" | tail -3 >&2
    else
      ops=$((ops + 1))
      if [ "$active" = a ]; then active=b; else active=a; fi
    fi
    on_a="$(running "$LAB_A_DOCKER_HOST")"; on_b="$(running "$LAB_B_DOCKER_HOST")"
    if [ "$on_a" -gt 0 ] && [ "$on_b" -gt 0 ]; then
      two_active=$((two_active + 1)); echo "round $i: after the resume, the app runs on both sites" >&2
    fi
  fi
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
echo "kill9: seed $SEED, $N rounds (backup ${counts[backup]}, prune ${counts[prune]}, restore ${counts[restore]}, failover/failback ${counts[failover]}), $kills killed mid-run (backup ${killed[backup]}, prune ${killed[prune]}, restore ${killed[restore]}, failover/failback ${killed[failover]})"
echo "kill9: damaged repositories $damaged, lost snapshots $lost, snapshots that do not restore $unrestorable (of $(snaps | grep -c .))"
ok=1
[ "$damaged" = 0 ] && [ "$lost" = 0 ] && [ "$unrestorable" = 0 ] || ok=0
if [ "$LAB" = 1 ]; then
  site=$([ "$active" = a ] && echo "$LAB_A_DOCKER_HOST" || echo "$LAB_B_DOCKER_HOST")
  hooks="$(docker -H "$site" run --rm -v k9-www:/www lifeboat-lab/web:1 cat /www/hooks | grep -c run || true)"
  read -r requests repeated < <(python3 - "$W/switches" <<'PY'
import collections, json, sys
ops = collections.Counter(json.loads(l)["operation"] for l in open(sys.argv[1]) if l.strip())
print(sum(ops.values()), sum(n - 1 for n in ops.values()))
PY
)
  echo "kill9: failovers/failbacks finished $ops (resumes that failed: $unfinished), moments with the app on both sites $two_active"
  echo "kill9: traffic switch requests $requests, of them repeats of an operation's request $repeated (a receiver knows them by the operation id);" \
       "post_restore hook runs $hooks (a hook killed while it ran runs again: $((hooks - ops)))"
  [ "$two_active" = 0 ] && [ "$unfinished" = 0 ] || ok=0
fi
[ "$ok" = 1 ]
