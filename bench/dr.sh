#!/usr/bin/env bash
# DR benchmark on the two-site Docker lab with its DNS server: how long failover takes, and what RPO
# a one-minute backup schedule achieves. Targets (issue 5):
#   hot standby, stateless app: trigger to healthy traffic on the standby < 5 s
#   the same under `watch` (1 s probes, threshold 3): failure to traffic switched < 10 s
#   hot standby, database with 1 GiB: < 30 s;  cold standby from the repository: reported
#   backups every minute: achieved RPO <= 60 s + the backup's own duration
#
#   bash bench/dr.sh            (BENCH_DB_MIB=1024 by default; BENCH_RPO=0 skips the 2-minute RPO run)
# Environment: BENCH_DIR [/var/tmp/lifeboat-bench], LIFEBOAT_BIN [$CARGO_TARGET_DIR/release/lifeboat]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/lifeboat-bench}
DB_MIB=${BENCH_DB_MIB:-1024}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}/release/lifeboat}
[ -x "$LIFEBOAT_BIN" ] || { echo "bench: no lifeboat binary at $LIFEBOAT_BIN (cargo build --release -p lifeboat)" >&2; exit 1; }
"$HERE/../lab/lab" up --docker 2 --dns >/dev/null
eval "$("$HERE/../lab/lab" env)"
W=$BENCH_DIR/dr
rm -rf "$W"; mkdir -p "$W"
export LIFEBOAT_PASSWORD=bench
L() { "$LIFEBOAT_BIN" "$@"; }
da() { docker -H "$LAB_A_DOCKER_HOST" "$@"; }
db() { docker -H "$LAB_B_DOCKER_HOST" "$@"; }
now() { date +%s.%N; }
resolve() { dig +short -p 5353 @127.0.0.1 "$1.lab.test." A; }
point() {
  printf 'server 127.0.0.1 5353\nzone lab.test.\nupdate delete %s.lab.test. A\nupdate add %s.lab.test. 5 A %s\nsend\n' "$1" "$1" "$2" \
    | nsupdate -k "$LAB_DNS_KEY"
}
clean() { for d in da db; do $d rm -f -v $($d ps -aq --filter "label=bench-dr") >/dev/null 2>&1 || true; \
  $d volume rm -f $($d volume ls -q --filter name=bdr-) >/dev/null 2>&1 || true; done; }
trap clean EXIT

plan() { # plan NAME MODE PORT [DBPORT]: a plan for app NAME (containers labelled app=NAME); $EXTRA: more app lines
  local name=$1 mode=$2 port=$3 dbp=${4:-}
  L --repo "$W/$name-repo" repo init >/dev/null
  {
    echo "apiVersion: lifeboat.dev/v1"
    echo "kind: DRPlan"
    echo "metadata: {name: $name}"
    echo "repository: $W/$name-repo"
    echo "sites:"
    echo "  a: {docker: {host: \"$LAB_A_DOCKER_HOST\", address: $LAB_A_ADDR}}"
    echo "  b: {docker: {host: \"$LAB_B_DOCKER_HOST\", address: $LAB_B_ADDR}}"
    echo "apps:"
    echo "  - name: $name"
    echo "    primary: a"
    echo "    standby: b"
    echo "    standby_mode: $mode"
    echo "    select: {labels: {app: $name}}"
    echo "    objectives: {rto: 30s, rpo: 1m}"
    echo "    health:"
    echo "      - http: {url: \"http://{site}:$port/index.html\"}"
    echo "        interval: 1s"
    echo "        timeout: 1s"
    echo "        failure_threshold: 3"
    [ -n "$dbp" ] && echo "      - tcp: {address: \"{site}:$dbp\"}"
    echo "    traffic:"
    echo "      dns: {server: \"127.0.0.1:5353\", zone: lab.test., name: $name, ttl: 5, tsig_key: $LAB_DNS_KEY, primary: $LAB_A_ADDR, standby: $LAB_B_ADDR}"
    [ -n "${EXTRA:-}" ] && printf '%s\n' "$EXTRA"
  } > "$W/$name.yaml"
  point "$name" "$LAB_A_ADDR"
}

web() { # web NAME PORT: a stateless web app on a
  da run -d --name "bdr-$1-web" --label bench-dr=1 --label "app=$1" -p "$2:8080" lifeboat-lab/web:1 >/dev/null
}

rto() { # rto FILE: the operation's RTO and RPO from failover --json
  python3 -c "import json,sys; o=json.load(open(sys.argv[1]))['operations'][0]; print(o['status'], '%.2f' % o['rto_seconds'], '%.2f' % (o['rpo_seconds'] or 0))" "$1"
}

clean
printf '%-58s %9s %9s %s\n' "scenario" "seconds" "RPO s" "target"

# 1. Stateless, hot, the primary's app dies; failover by hand (no final backup: nothing to save).
web bs1 8281
plan bs1 hot 8281
L backup --plan "$W/bs1.yaml" >/dev/null 2>&1
da kill "bdr-bs1-web" >/dev/null
L --json failover "$W/bs1.yaml" --no-final-backup > "$W/bs1.json" 2>"$W/bs1.err"
read -r st t rp < <(rto "$W/bs1.json")
printf '%-58s %9s %9s %s\n' "hot, stateless: failover trigger -> traffic on b ($st)" "$t" "$rp" "< 5 s"

# 2. The same, detected by watch: from the app's death to DNS answering b.
web bs2 8282
plan bs2 hot 8282
L backup --plan "$W/bs2.yaml" >/dev/null 2>&1
L watch "$W/bs2.yaml" > /dev/null 2>"$W/bs2.watch" &
WATCH=$!
sleep 3
t0=$(now)
da kill "bdr-bs2-web" >/dev/null
while [ "$(resolve bs2)" != "$LAB_B_ADDR" ]; do
  sleep 0.05
  if python3 -c "import sys; sys.exit(0 if $(now) - $t0 > 60 else 1)"; then echo "bench: watch did not fail over in 60 s" >&2; break; fi
done
t1=$(now)
kill "$WATCH" 2>/dev/null || true; wait "$WATCH" 2>/dev/null || true
printf '%-58s %9.2f %9s %s\n' "hot, stateless, watch (1 s, threshold 3): failure -> DNS b" "$(python3 -c "print($t1 - $t0)")" "-" "< 10 s"

# 3. Database with DB_MIB MiB, hot standby: planned failover (final backup of the delta after fencing)
#    and unplanned (the primary's database dies; the staged copy is current).
dbsetup() { # dbsetup NAME PORT
  da run -d --name "bdr-$1-db" --label bench-dr=1 --label "app=$1" -p "$2:5432" \
    -v "bdr-$1-pg:/var/lib/postgresql/data" lifeboat-lab/postgres:15 >/dev/null
  for _ in $(seq 60); do da exec "bdr-$1-db" psql -U postgres -qAtc 'select 1' >/dev/null 2>&1 && break; sleep 1; done
  # Rows of about 1 KiB of hex, half of it random-looking: DB_MIB MiB of table data.
  da exec "bdr-$1-db" psql -U postgres -qc "create table big as select g, md5(g::text) || repeat(md5((g*7)::text), 31) as v from generate_series(1, $((DB_MIB * 1024))) g" >/dev/null
}
web bdb 8283
dbsetup bdb 5443
# The web app (busybox httpd as PID 1) ignores SIGTERM: without stop_grace, fencing waits out
# Docker's 10 s before it kills it.
EXTRA="    stop_grace: 2s" plan bdb hot 8283 5443
echo "   (database: $(da exec bdr-bdb-db psql -U postgres -qAtc "select pg_size_pretty(pg_database_size('postgres'))"))" >&2
/usr/bin/time -f "%e" -o "$W/bdb.backup.time" "$LIFEBOAT_BIN" backup --plan "$W/bdb.yaml" >/dev/null 2>&1
printf '%-58s %9s %9s %s\n' "   first backup and staging of b (not a failover)" "$(cat "$W/bdb.backup.time")" "-" ""
da exec bdr-bdb-db psql -U postgres -qc "update big set v = 'changed' where g % 1000 = 0" >/dev/null
L --json failover "$W/bdb.yaml" > "$W/bdb.json" 2>"$W/bdb.err"
read -r st t rp < <(rto "$W/bdb.json")
printf '%-58s %9s %9s %s\n' "hot, ${DB_MIB} MiB database, planned (final backup, stop_grace 2s): trigger -> b ($st)" "$t" "$rp" "< 30 s"
python3 - "$W/bdb.json" >&2 <<'PY' || true
import json, sys
from datetime import datetime
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
o = json.load(open(sys.argv[1]))["operations"][0]
print("   steps: " + ", ".join("%s %.1f s" % (s["name"], (t(s["finished"]) - t(s["started"])).total_seconds()) for s in o["steps"] if s.get("finished")))
PY
L failback "$W/bdb.yaml" >/dev/null 2>&1
L backup --plan "$W/bdb.yaml" >/dev/null 2>&1
da kill bdr-bdb-db bdr-bdb-web >/dev/null
L --json failover "$W/bdb.yaml" --no-final-backup > "$W/bdb2.json" 2>"$W/bdb2.err"
read -r st t rp < <(rto "$W/bdb2.json")
printf '%-58s %9s %9s %s\n' "hot, ${DB_MIB} MiB database, primary dead: trigger -> b ($st)" "$t" "$rp" "< 30 s"

# 4. Cold standby: everything restored from the repository at failover.
clean
web bcold 8284
dbsetup bcold 5444
plan bcold cold 8284 5444
L backup --plan "$W/bcold.yaml" >/dev/null 2>&1
da kill bdr-bcold-db bdr-bcold-web >/dev/null
L --json failover "$W/bcold.yaml" --no-final-backup > "$W/bcold.json" 2>"$W/bcold.err"
read -r st t rp < <(rto "$W/bcold.json")
printf '%-58s %9s %9s %s\n' "cold, ${DB_MIB} MiB database from the repository: trigger -> b ($st)" "$t" "$rp" "reported"

# 5. RPO with a backup every minute (`serve` runs the plan's schedule): the primary dies at a
#    random moment of the second minute.
if [ "${BENCH_RPO:-1}" = 1 ]; then
  web brpo 8285
  EXTRA="    backup: {every: 1m, keep: {last: 5}}" plan brpo hot 8285
  L serve "$W/brpo.yaml" --no-watch --sync-every 0 >/dev/null 2>"$W/brpo.serve.err" &
  SCHED=$!
  sleep $((60 + RANDOM % 60))
  kill "$SCHED" 2>/dev/null || true; wait "$SCHED" 2>/dev/null || true
  da kill bdr-brpo-web >/dev/null
  L --json failover "$W/brpo.yaml" --no-final-backup > "$W/brpo.json" 2>"$W/brpo.err"
  read -r st t rp < <(rto "$W/brpo.json")
  printf '%-58s %9s %9s %s\n' "backups every 60 s, primary dies: achieved RPO ($st)" "$t" "$rp" "<= 60 s + backup time"
fi
