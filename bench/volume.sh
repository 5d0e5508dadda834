#!/usr/bin/env bash
# Volume benchmark: a named Docker volume backed up and restored through the Engine API by
# lifeboat, side by side with `docker cp` of the same volume to a local directory and back.
#
#   bash bench/volume.sh                  # 1 GiB volume on lab site a (started if needed)
#   BENCH_VOLUME_MIB=128 bash bench/volume.sh
#
# Environment (defaults in brackets):
#   BENCH_DIR [/var/tmp/lifeboat-bench]   repository, docker cp copy, results
#   BENCH_VOLUME_MIB [1024]   volume size: 3/4 random bytes, 1/4 text, in 4 MiB files plus 2000 small files
#   BENCH_DOCKER_HOST [lab site a]        engine to run on
#   BENCH_RUNS [3]            runs of every step; the medians are reported
#   LIFEBOAT_BIN [/root/.cache/lifeboat-target/release/lifeboat]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/lifeboat-bench}
MIB=${BENCH_VOLUME_MIB:-1024}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-/root/.cache/lifeboat-target/release/lifeboat}
[ -x "$LIFEBOAT_BIN" ] || { echo "bench: no lifeboat binary at $LIFEBOAT_BIN (cargo build --release)" >&2; exit 1; }
if [ -z "${BENCH_DOCKER_HOST:-}" ]; then
  eval "$("$HERE/../lab/lab" env)"
  case " $LAB_SITES " in *" a "*) ;; *) "$HERE/../lab/lab" up --docker 1 >/dev/null; eval "$("$HERE/../lab/lab" env)";; esac
  BENCH_DOCKER_HOST=$LAB_A_DOCKER_HOST
fi
export DOCKER_HOST=$BENCH_DOCKER_HOST LIFEBOAT_PASSWORD=bench
IMG=lifeboat-lab/web:1
W=$BENCH_DIR/volume
REPO=$W/repo
mkdir -p "$W"

cleanup() {
  docker rm -f bench_owner r1-bench_owner r1-r1-bench_owner bench_cp_src bench_cp_dst >/dev/null 2>&1 || true
  docker volume rm -f bench_vol r1-bench_vol r1-r1-bench_vol bench_cp_vol >/dev/null 2>&1 || true
}
cleanup
rm -rf "$REPO" "$W/cp"

# Seconds taken by a command (wall clock, 3 decimals).
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >"$W/last.log" 2>&1 || { cat "$W/last.log" >&2; exit 1; }; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l | xargs printf '%.3f'; }
# A checksum of every file's path and content in a volume (not timed).
vsum() { docker run --rm -v "$1":/v "$IMG" /bin/busybox sh -c 'cd /v && find . -type f | sort | while read -r f; do echo "$f $(/bin/busybox md5sum < "$f")"; done | /bin/busybox md5sum' | cut -d' ' -f1; }
command -v bc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bc >/dev/null

echo "== filling volume bench_vol with $MIB MiB"
docker volume create bench_vol >/dev/null
big=$(( MIB / 4 ))
docker run --rm -v bench_vol:/v "$IMG" /bin/busybox sh -c "
  mkdir -p /v/big /v/small
  i=0; while [ \$i -lt $big ]; do
    if [ \$((i % 4)) -eq 3 ]; then /bin/busybox seq \$((i*100000)) \$((i*100000+560000)) | /bin/busybox head -c 4194304 > /v/big/f\$i
    else /bin/busybox head -c 4194304 /dev/urandom > /v/big/f\$i; fi
    i=\$((i+1)); done
  i=0; while [ \$i -lt 2000 ]; do echo \"small file \$i\" > /v/small/s\$i; i=\$((i+1)); done"
SUM=$(vsum bench_vol)
BYTES=$(docker run --rm -v bench_vol:/v "$IMG" /bin/busybox du -sb /v | cut -f1)
# The application container that owns the volume (created, never started).
docker create --name bench_owner --label lifeboat.bench=1 -v bench_vol:/data "$IMG" >/dev/null

RUNS=${BENCH_RUNS:-3}
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
"$LIFEBOAT_BIN" --repo "$W/warm" repo init >/dev/null 2>&1 || true
"$LIFEBOAT_BIN" --repo "$W/warm" backup docker --label nothing=x >/dev/null   # imports the helper image (untimed)
rm -rf "$W/warm"
docker create --name bench_cp_src -v bench_vol:/v "$IMG" >/dev/null
t_cpb=() t_cpbs=() t_cpr=() t_lbb=() t_lbb2=() t_lbr=()
for run in $(seq 1 "$RUNS"); do
  echo "== run $run of $RUNS: docker cp volume -> directory (plain, then until durable) -> new volume"
  rm -rf "$W/cp"; sync; t_cpb+=("$(timed docker cp bench_cp_src:/v "$W/cp")")
  # docker cp returns before its copy is on disk; lifeboat returns once its packs are synced.
  rm -rf "$W/cp"; sync; t_cpbs+=("$(timed sh -c "docker cp bench_cp_src:/v '$W/cp' && sync")")
  docker rm -f bench_cp_dst >/dev/null 2>&1 || true; docker volume rm -f bench_cp_vol >/dev/null 2>&1 || true
  docker volume create bench_cp_vol >/dev/null
  docker create --name bench_cp_dst -v bench_cp_vol:/v "$IMG" >/dev/null
  sync; t_cpr+=("$(timed docker cp "$W/cp/." bench_cp_dst:/v)")
  [ "$(vsum bench_cp_vol)" = "$SUM" ] || { echo "bench: docker cp copy differs" >&2; exit 1; }

  echo "== run $run of $RUNS: lifeboat backup docker (new repository, then unchanged), restore --to docker"
  # The restored copy carries the same label: gone before the next backup.
  docker rm -f r1-bench_owner >/dev/null 2>&1 || true; docker volume rm -f r1-bench_vol >/dev/null 2>&1 || true
  rm -rf "$REPO"; "$LIFEBOAT_BIN" --repo "$REPO" repo init >/dev/null
  sync; t_lbb+=("$(timed "$LIFEBOAT_BIN" --repo "$REPO" backup docker --label lifeboat.bench=1)")
  sync; t_lbb2+=("$(timed "$LIFEBOAT_BIN" --repo "$REPO" backup docker --label lifeboat.bench=1)")
  sync; t_lbr+=("$(timed "$LIFEBOAT_BIN" --repo "$REPO" restore latest --to docker --name-prefix r1- --replicas 0)")
  [ "$(vsum r1-bench_vol)" = "$SUM" ] || { echo "bench: lifeboat's restored volume differs" >&2; exit 1; }
done
echo "times (s): cp ${t_cpb[*]} | cp+sync ${t_cpbs[*]} | cp restore ${t_cpr[*]} | lb ${t_lbb[*]} | lb unchanged ${t_lbb2[*]} | lb restore ${t_lbr[*]}"
cp_backup=$(median "${t_cpb[@]}"); cp_backup_sync=$(median "${t_cpbs[@]}"); cp_restore=$(median "${t_cpr[@]}")
lb_backup=$(median "${t_lbb[@]}"); lb_backup2=$(median "${t_lbb2[@]}"); lb_restore=$(median "${t_lbr[@]}")
repo_mib=$(du -sm "$REPO" | cut -f1)

python3 - "$BYTES" "$cp_backup" "$cp_restore" "$lb_backup" "$lb_restore" "$lb_backup2" "$repo_mib" "$cp_backup_sync" <<'PY'
import sys
b, cpb, cpr, lbb, lbr, lbb2, repo, cpbs = float(sys.argv[1]), *map(float, sys.argv[2:7]), sys.argv[7], float(sys.argv[8])
mb = b / 1e6
print(f"\nvolume: {mb:.0f} MB ({b/2**20:.0f} MiB), 3/4 random, 1/4 text; medians of the runs above")
print(f"{'step':<28}{'docker cp':>14}{'lifeboat':>14}{'ratio (cp/lifeboat)':>22}")
print(f"{'backup':<28}{cpb:>9.2f} s{lbb:>12.2f} s{cpb/lbb:>20.2f}x")
print(f"{'  MB/s':<28}{mb/cpb:>14.1f}{mb/lbb:>14.1f}")
print(f"{'backup, copy durable (sync)':<28}{cpbs:>9.2f} s{lbb:>12.2f} s{cpbs/lbb:>20.2f}x")
print(f"{'restore':<28}{cpr:>9.2f} s{lbr:>12.2f} s{cpr/lbr:>20.2f}x")
print(f"{'  MB/s':<28}{mb/cpr:>14.1f}{mb/lbr:>14.1f}")
print(f"{'backup again, unchanged':<28}{'':>14}{lbb2:>12.2f} s")
print(f"lifeboat repository: {repo} MiB (compressed, encrypted, deduplicated); docker cp copy: {mb:.0f} MB plain")
PY
cleanup
rm -rf "$W/cp"
