#!/usr/bin/env bash
# DR benchmark on the two-site Docker lab with its DNS server: how long failover takes, and what RPO
# a one-minute backup schedule achieves. Targets (issue 5):
#   hot standby, stateless app: trigger to healthy traffic on the standby < 5 s
#   the same under `watch` (1 s probes, threshold 3): failure to traffic switched < 10 s
#   hot standby, database with 1 GiB: < 30 s;  cold standby from the repository: reported
#   backups every minute: achieved RPO <= 60 s + the backup's own duration
# and the same app shape on the two Kubernetes sites (a Deployment with BENCH_KUBE_MIB in its claim).
#
#   bash bench/dr.sh            (BENCH_DB_MIB=1024 and BENCH_KUBE_MIB=1024 by default; BENCH_RPO=0 skips
#                                the 2-minute RPO run, BENCH_KUBE=0 the Kubernetes runs)
# Environment: BENCH_DIR [/var/tmp/lifeboat-bench], LIFEBOAT_BIN [$CARGO_TARGET_DIR/release/lifeboat]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/lifeboat-bench}
DB_MIB=${BENCH_DB_MIB:-1024}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}/release/lifeboat}
[ -x "$LIFEBOAT_BIN" ] || { echo "bench: no lifeboat binary at $LIFEBOAT_BIN (cargo build --release -p lifeboat)" >&2; exit 1; }
KUBE_MIB=${BENCH_KUBE_MIB:-1024}
if [ "${BENCH_KUBE:-1}" = 1 ]; then
  "$HERE/../lab/lab" up --docker 2 --kube 2 --dns >/dev/null
else
  "$HERE/../lab/lab" up --docker 2 --dns >/dev/null
fi
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
ka() { kubectl --kubeconfig "$LAB_A_KUBECONFIG" "$@"; }
kb() { kubectl --kubeconfig "$LAB_B_KUBECONFIG" "$@"; }
clean() { [ "${BENCH_KUBE:-1}" = 1 ] && for k in ka kb; do $k delete namespace bdr-kube --wait=false --ignore-not-found >/dev/null 2>&1; done
  # One id per word: the lists are split on purpose.
  # shellcheck disable=SC2046
  for d in da db; do $d rm -f -v $($d ps -aq --filter "label=bench-dr") >/dev/null 2>&1 || true; \
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

steps() { # steps FILE: how long each step of the operation took
  python3 - "$1" >&2 <<'PY' || true
import json, sys
from datetime import datetime
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
o = json.load(open(sys.argv[1]))["operations"][0]
print("   steps: " + ", ".join("%s %.1f s" % (s["name"], (t(s["finished"]) - t(s["started"])).total_seconds()) for s in o["steps"] if s.get("finished")))
PY
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
steps "$W/bdb.json"
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

# 6. Kubernetes: a Deployment serving KUBE_MIB MiB in its claim, hot standby on the second cluster.
#    Planned failover (final backup after scaling a to zero), then the app dead on a (scaled to zero
#    behind Lifeboat's back, no final backup).
if [ "${BENCH_KUBE:-1}" = 1 ]; then
  for k in ka kb; do
    for _ in $(seq 300); do $k get namespace bdr-kube >/dev/null 2>&1 || break; sleep 1; done
  done
  ka apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: bdr-kube}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: www, namespace: bdr-kube, labels: {app: bkube}}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 2Gi}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: bdr-kube, labels: {app: bkube}}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: bkube}}
  template:
    metadata: {labels: {app: bkube}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: lifeboat-lab/web:1
          imagePullPolicy: Never
          command: [sh, -c, "echo ok > /www/index.html; exec httpd -f -p 8080 -h /www"]
          ports: [{containerPort: 8080, hostPort: 8286}]
          volumeMounts: [{name: www, mountPath: /www}]
      volumes: [{name: www, persistentVolumeClaim: {claimName: www}}]
YAML
  for _ in $(seq 120); do curl -fs -m 1 "http://$LAB_A_ADDR:8286/index.html" >/dev/null && break; sleep 1; done
  ka -n bdr-kube exec deploy/web -- sh -c "busybox head -c $((KUBE_MIB * 1024 * 1024)) /dev/urandom > /www/blob"
  L --repo "$W/bkube-repo" repo init >/dev/null
  ksite() { echo "{kubernetes: {kubeconfig: $1, context: $2, address: $3, helper_image: \"lifeboat-lab/web:1\"}}"; }
  cat > "$W/bkube.yaml" <<PLAN
apiVersion: lifeboat.dev/v1
kind: DRPlan
metadata: {name: bkube}
repository: $W/bkube-repo
sites:
  a: $(ksite "$LAB_A_KUBECONFIG" "$LAB_A_KUBE_CONTEXT" "$LAB_A_ADDR")
  b: $(ksite "$LAB_B_KUBECONFIG" "$LAB_B_KUBE_CONTEXT" "$LAB_B_ADDR")
apps:
  - name: bkube
    primary: a
    standby: b
    standby_mode: hot
    select: {namespaces: [bdr-kube], labels: {app: bkube}}
    objectives: {rto: 30s, rpo: 1m}
    health:
      - http: {url: "http://{site}:8286/index.html"}
        interval: 1s
        timeout: 1s
        failure_threshold: 3
    traffic:
      dns: {server: "127.0.0.1:5353", zone: lab.test., name: bkube, ttl: 5, tsig_key: $LAB_DNS_KEY, primary: $LAB_A_ADDR, standby: $LAB_B_ADDR}
PLAN
  point bkube "$LAB_A_ADDR"
  /usr/bin/time -f "%e" -o "$W/bkube.backup.time" "$LIFEBOAT_BIN" backup --plan "$W/bkube.yaml" >/dev/null 2>"$W/bkube.backup.err"
  printf '%-58s %9s %9s %s\n' "kube: first backup and staging of b, ${KUBE_MIB} MiB claim" "$(cat "$W/bkube.backup.time")" "-" ""
  ka -n bdr-kube exec deploy/web -- sh -c 'echo changed > /www/changed'
  L --json failover "$W/bkube.yaml" > "$W/bkube.json" 2>"$W/bkube.err"
  read -r st t rp < <(rto "$W/bkube.json")
  printf '%-58s %9s %9s %s\n' "kube, hot, ${KUBE_MIB} MiB claim, planned: trigger -> b ($st)" "$t" "$rp" "< 30 s"
  steps "$W/bkube.json"
  L failback "$W/bkube.yaml" >/dev/null 2>&1
  L backup --plan "$W/bkube.yaml" >/dev/null 2>&1
  ka -n bdr-kube scale deployment web --replicas=0 >/dev/null
  L --json failover "$W/bkube.yaml" --no-final-backup > "$W/bkube2.json" 2>"$W/bkube2.err"
  read -r st t rp < <(rto "$W/bkube2.json")
  printf '%-58s %9s %9s %s\n' "kube, hot, ${KUBE_MIB} MiB claim, app dead on a: trigger -> b ($st)" "$t" "$rp" "< 30 s"
fi
