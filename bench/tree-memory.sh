#!/usr/bin/env bash
# Memory of a Docker volume backup with many files: lifeboat (through the Engine API's tar stream)
# beside restic backing up the same volume's directory on the host, at two file counts, so that
# the growth from the smaller to the larger count shows whether memory is bounded.
#
#   bash bench/tree-memory.sh                       # 100,000 and 1,000,000 empty files on lab site a
#   BENCH_TREE_FILES="20000 200000" bash bench/tree-memory.sh
#
# Environment (defaults in brackets):
#   BENCH_DIR [/var/tmp/lifeboat-bench]   repositories and logs (under tree-memory/)
#   BENCH_TREE_FILES ["100000 1000000"]   file counts, in directories of 1,000 files
#   BENCH_DOCKER_HOST [lab site a]        engine to run on (its volumes must be on this host)
#   LIFEBOAT_BIN [/root/.cache/lifeboat-target/release/lifeboat]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/lifeboat-bench}
COUNTS=${BENCH_TREE_FILES:-100000 1000000}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-/root/.cache/lifeboat-target/release/lifeboat}
[ -x "$LIFEBOAT_BIN" ] || { echo "bench: no lifeboat binary at $LIFEBOAT_BIN (cargo build --release)" >&2; exit 1; }
if [ -z "${BENCH_DOCKER_HOST:-}" ]; then
  eval "$("$HERE/../lab/lab" env)"
  case " $LAB_SITES " in *" a "*) ;; *) "$HERE/../lab/lab" up --docker 1 >/dev/null; eval "$("$HERE/../lab/lab" env)";; esac
  BENCH_DOCKER_HOST=$LAB_A_DOCKER_HOST
fi
export DOCKER_HOST=$BENCH_DOCKER_HOST LIFEBOAT_PASSWORD=bench RESTIC_PASSWORD=bench
command -v restic >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null
IMG=lifeboat-lab/web:1
W=$BENCH_DIR/tree-memory
mkdir -p "$W"

cleanup() {
  docker rm -f bench_tree_owner >/dev/null 2>&1 || true
  docker volume rm -f bench_tree_vol >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Peak RSS (KiB) and wall seconds of a command, from GNU time.
measure() {
  /usr/bin/time -f '%M %e' -o "$W/time.out" "$@" >"$W/last.log" 2>&1 || { cat "$W/last.log" >&2; exit 1; }
  cat "$W/time.out"
}

"$LIFEBOAT_BIN" --repo "$W/warm" repo init >/dev/null 2>&1 || true
"$LIFEBOAT_BIN" --repo "$W/warm" backup docker --label nothing=x >/dev/null   # imports the helper image (untimed)
rm -rf "$W/warm"

results=()
for n in $COUNTS; do
  cleanup
  echo "== $n empty files in $((n / 1000)) directories (made on the host, untimed)"
  docker volume create bench_tree_vol >/dev/null
  mnt=$(docker volume inspect -f '{{.Mountpoint}}' bench_tree_vol)
  [ -d "$mnt" ] || { echo "bench: volume directory $mnt is not on this host" >&2; exit 1; }
  python3 - "$mnt" "$n" <<'PY'
import os, sys
top, n = sys.argv[1], int(sys.argv[2])
for d in range((n + 999) // 1000):
    p = os.path.join(top, f"d{d:05}")
    os.mkdir(p)
    for f in range(min(1000, n - d * 1000)):
        open(os.path.join(p, f"f{f:04}"), "w").close()
PY
  docker create --name bench_tree_owner --label lifeboat.bench=tree -v bench_tree_vol:/data "$IMG" >/dev/null
  rm -rf "$W/lb" "$W/restic"
  "$LIFEBOAT_BIN" --repo "$W/lb" repo init >/dev/null
  restic init --repo "$W/restic" >/dev/null 2>&1
  sync
  read -r lb_kib lb_s < <(measure "$LIFEBOAT_BIN" --repo "$W/lb" backup docker --label lifeboat.bench=tree)
  sync
  read -r rs_kib rs_s < <(measure restic --repo "$W/restic" backup --quiet "$mnt")
  echo "   lifeboat: $((lb_kib / 1024)) MiB peak, ${lb_s} s; restic: $((rs_kib / 1024)) MiB peak, ${rs_s} s"
  results+=("$n $lb_kib $lb_s $rs_kib $rs_s")
done

python3 - "${results[@]}" <<'PY'
import sys
rows = [list(map(float, r.split())) for r in sys.argv[1:]]
print(f"\n{'files':>10}{'lifeboat MiB':>14}{'s':>8}{'restic MiB':>12}{'s':>8}{'RSS ratio (restic/lifeboat)':>30}")
for n, lk, ls, rk, rs in rows:
    print(f"{int(n):>10}{lk/1024:>14.0f}{ls:>8.1f}{rk/1024:>12.0f}{rs:>8.1f}{rk/lk:>29.2f}x")
if len(rows) > 1:
    (n0, l0, _, r0, _), (n1, l1, _, r1, _) = rows[0], rows[-1]
    print(f"growth of peak RSS from {int(n0)} to {int(n1)} files ({n1/n0:.0f}x the files): "
          f"lifeboat {l1/l0:.2f}x, restic {r1/r0:.2f}x")
PY
