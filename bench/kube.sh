#!/usr/bin/env bash
# Kubernetes object benchmark: N configmaps and secrets across 100 namespaces on lab site a,
# `lifeboat backup kube` of them and `lifeboat restore --to kube` into site b; objects per second
# and peak RSS. Targets (issue 4): backup >= 2,000 objects/s, restore >= 500 objects/s,
# peak RSS < 200 MiB at 100,000 objects.
#
#   bash bench/kube.sh                         # 10,000 objects
#   BENCH_KUBE_OBJECTS=100000 bash bench/kube.sh
#
# Environment: BENCH_DIR [/var/tmp/lifeboat-bench], BENCH_KUBE_OBJECTS [10000],
#   LIFEBOAT_BIN [/root/.cache/lifeboat-target/release/lifeboat]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/lifeboat-bench}
N=${BENCH_KUBE_OBJECTS:-10000}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-/root/.cache/lifeboat-target/release/lifeboat}
[ -x "$LIFEBOAT_BIN" ] || { echo "bench: no lifeboat binary at $LIFEBOAT_BIN (cargo build --release)" >&2; exit 1; }
eval "$("$HERE/../lab/lab" env)"
case " ${LAB_KUBE_SITES:-} " in *" a "*" b "*) ;; *) "$HERE/../lab/lab" up --kube 2 >/dev/null; eval "$("$HERE/../lab/lab" env)";; esac
W=$BENCH_DIR/kube
mkdir -p "$W"
export LIFEBOAT_PASSWORD=bench
NS=100
PER=$(( N / NS / 2 ))   # configmaps and secrets per namespace

ka() { kubectl --kubeconfig "$LAB_A_KUBECONFIG" "$@"; }
kb() { kubectl --kubeconfig "$LAB_B_KUBECONFIG" "$@"; }
cleanup() {
  for k in ka kb; do
    $k delete ns -l lifeboat-bench=1 --wait=false >/dev/null 2>&1 || true
  done
}

echo "== creating $((PER * 2 * NS)) objects in $NS namespaces on site a (not timed)"
cleanup
for k in ka kb; do
  while [ -n "$($k get ns -l lifeboat-bench=1 -o name 2>/dev/null)" ]; do sleep 2; done
done
python3 - "$NS" "$PER" > "$W/objects.json" <<'PY'
import json, sys
ns, per = int(sys.argv[1]), int(sys.argv[2])
items = []
for n in range(ns):
    name = f"bench-{n:03d}"
    items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"lifeboat-bench": "1"}}})
    for i in range(per):
        items.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i:05d}", "namespace": name, "labels": {"lifeboat-bench": "1"}},
                      "data": {"index": str(i), "payload": f"value-{n}-{i}-" + "x" * 200}})
        items.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"secret-{i:05d}", "namespace": name, "labels": {"lifeboat-bench": "1"}},
                      "type": "Opaque", "stringData": {"password": f"pw-{n}-{i}"}})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
t0=$(date +%s.%N)
ka create -f "$W/objects.json" >/dev/null
t1=$(date +%s.%N)
echo "   kubectl create took $(echo "$t1 - $t0" | bc -l | xargs printf '%.1f') s"

rm -rf "$W/repo"; "$LIFEBOAT_BIN" --repo "$W/repo" repo init >/dev/null
run() { # run NAME CMD...: wall seconds and peak RSS (KiB) into $W/NAME.time
  /usr/bin/time -f "%e %M" -o "$W/$1.time" "${@:2}" > "$W/$1.json"
}
echo "== lifeboat backup kube -l lifeboat-bench=1"
run backup "$LIFEBOAT_BIN" --repo "$W/repo" --json backup kube --kubeconfig "$LAB_A_KUBECONFIG" -l lifeboat-bench=1 --no-volumes
echo "== lifeboat backup kube again (nothing changed)"
run backup2 "$LIFEBOAT_BIN" --repo "$W/repo" --json backup kube --kubeconfig "$LAB_A_KUBECONFIG" -l lifeboat-bench=1 --no-volumes
echo "== lifeboat restore --to kube (site b, empty)"
run restore "$LIFEBOAT_BIN" --repo "$W/repo" --json restore latest --to kube --kubeconfig "$LAB_B_KUBECONFIG"
restored=$(kb get cm,secret -A -l lifeboat-bench=1 --no-headers 2>/dev/null | wc -l)

python3 - "$W" "$restored" <<'PY'
import json, sys
w, restored = sys.argv[1], int(sys.argv[2])
def t(name):
    secs, kib = open(f"{w}/{name}.time").read().split()[-2:]
    return float(secs), int(kib) / 1024
b = json.load(open(f"{w}/backup.json")); r = json.load(open(f"{w}/restore.json"))
objs = b["objects"]
(bs, bm), (b2s, b2m), (rs, rm) = t("backup"), t("backup2"), t("restore")
done = sum(1 for i in r["items"] if i["status"] == "done")
print(f"\nobjects backed up: {objs} (configmaps, secrets, namespaces); restored on b: {done} created, {r['failed']} failed; kubectl sees {restored} configmaps and secrets on b")
print(f"{'step':<30}{'seconds':>10}{'objects/s':>12}{'peak RSS MiB':>15}{'target':>22}")
print(f"{'backup':<30}{bs:>10.2f}{objs/bs:>12.0f}{bm:>15.1f}{'>= 2000 obj/s':>22}")
print(f"{'backup again, unchanged':<30}{b2s:>10.2f}{objs/b2s:>12.0f}{b2m:>15.1f}")
print(f"{'restore':<30}{rs:>10.2f}{done/rs:>12.0f}{rm:>15.1f}{'>= 500 obj/s':>22}")
print(f"repository: {b['bytes_added']/2**20:.1f} MiB added by the first backup, {json.load(open(f'{w}/backup2.json'))['bytes_added']/1024:.1f} KiB by the second")
PY
cleanup
