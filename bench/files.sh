#!/usr/bin/env bash
# Side-by-side file backup benchmark: lifeboat, restic, rustic and borg on one
# generated data set (see bench/README.md).
#
#   BENCH_SCALE=0.02 bash bench/files.sh        # quick trial (~50 MB)
#   bash bench/files.sh                         # full run (~2.2 GB data set)
#
# Environment (defaults in brackets):
#   BENCH_DIR [/var/tmp/lifeboat-bench]  data set, repositories, logs, results
#   BENCH_SCALE [1.0]   data set size factor      BENCH_SEED [1]  data set seed
#   BENCH_TOOLS ["lifeboat restic rustic borg"]   tools to run, in this order
#   BENCH_DROP_CACHES [0]  1: drop the page cache before every timed step
#   BENCH_VERIFY [1]    1: compare each restore with the data set (diff -r, untimed)
#   BENCH_INSTALL [0]   1: install rustic with `cargo install rustic-rs --locked`
#   LIFEBOAT_BIN [/root/.cache/lifeboat-target/release/lifeboat]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/lifeboat-bench}
BENCH_SCALE=${BENCH_SCALE:-1.0}
BENCH_SEED=${BENCH_SEED:-1}
BENCH_TOOLS=${BENCH_TOOLS:-lifeboat restic rustic borg}
BENCH_DROP_CACHES=${BENCH_DROP_CACHES:-0}
BENCH_VERIFY=${BENCH_VERIFY:-1}
BENCH_INSTALL=${BENCH_INSTALL:-0}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-/root/.cache/lifeboat-target/release/lifeboat}
export BENCH_DIR BENCH_SCALE BENCH_SEED BENCH_DROP_CACHES BENCH_VERIFY

DATA=$BENCH_DIR/data        # pristine v1/ and v2/, stamp, summary.json
SRC=$BENCH_DIR/src          # the path every tool backs up
REPOS=$BENCH_DIR/repos
RESTORE=$BENCH_DIR/restore
LOGS=$BENCH_DIR/logs
RESULTS=$BENCH_DIR/results-files.tsv   # one line per step; report.py turns it into JSON
TOOLINFO=$BENCH_DIR/tools.tsv          # tool, version, settings

# Passwords and non-interactive settings for all tools.
export LIFEBOAT_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_CHECK_I_KNOW_WHAT_I_AM_DOING=NO BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=NO
export BORG_DISPLAY_PASSPHRASE=no

NONET=()      # prefix that runs a tool without network (unshare -n) when possible
CMD=()        # command of the current step, set by the TOOL_cmd functions
RESTIC_INIT_FLAGS=()

say() { printf '%s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }

# ------------------------------------------------------------------ setup

check_settings() {
    [[ $BENCH_DIR == /*/* ]] || die "BENCH_DIR must be an absolute path below / (got '$BENCH_DIR')"
    python3 -c "import sys; s=float(sys.argv[1]); assert 0 < s <= 100" "$BENCH_SCALE" 2>/dev/null \
        || die "BENCH_SCALE must be a number in (0, 100] (got '$BENCH_SCALE')"
    [[ $BENCH_SEED =~ ^[0-9]+$ ]] || die "BENCH_SEED must be an integer"
    local tool
    for tool in $BENCH_TOOLS; do
        declare -F "${tool}_cmd" >/dev/null || die "unknown tool '$tool' in BENCH_TOOLS"
    done
}

install_packages() {
    local missing=()
    [[ -x /usr/bin/time ]] || missing+=(time)
    command -v rsync >/dev/null || missing+=(rsync)
    command -v python3 >/dev/null || missing+=(python3)
    ((${#missing[@]} == 0)) && return
    say "installing ${missing[*]} with apt-get"
    apt-get install -y "${missing[@]}" >/dev/null || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
}

setup_network_isolation() {
    if unshare -n true 2>/dev/null; then
        NONET=(unshare -n --)
        say "network: tools run in an empty network namespace (unshare -n); all repositories are local directories"
    else
        say "network: not isolated (unshare -n unavailable); all repositories are local directories"
    fi
}

setup_caches() {
    if [[ $BENCH_DROP_CACHES == 1 ]]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null \
            || die "BENCH_DROP_CACHES=1 but /proc/sys/vm/drop_caches is not writable (need root, not in a container)"
        say "page cache: dropped before every timed step (cold cache)"
    else
        say "page cache: warm (not dropped between steps; set BENCH_DROP_CACHES=1 for cold-cache runs)"
    fi
}

drop_caches() {
    sync
    [[ $BENCH_DROP_CACHES == 1 ]] && echo 3 >/proc/sys/vm/drop_caches
    return 0
}

# ------------------------------------------------------------------ data set

make_dataset() {
    local stamp gen_hash
    gen_hash=$(sha256sum "$HERE/gen_dataset.py" | cut -c1-16)
    stamp="scale=$BENCH_SCALE seed=$BENCH_SEED generator=$gen_hash"
    if [[ -f $DATA/stamp && $(cat "$DATA/stamp") == "$stamp" ]]; then
        say "data set: reusing $DATA ($stamp)"
        return
    fi
    say "data set: generating $DATA ($stamp)"
    rm -rf "$DATA" "$SRC"
    mkdir -p "$DATA"
    python3 "$HERE/gen_dataset.py" v1 --scale "$BENCH_SCALE" --seed "$BENCH_SEED" "$DATA/v1"
    cp -a --reflink=auto "$DATA/v1" "$DATA/v2"
    python3 "$HERE/gen_dataset.py" v2 --scale "$BENCH_SCALE" --seed "$BENCH_SEED" "$DATA/v2"
    python3 "$HERE/gen_dataset.py" plan --scale "$BENCH_SCALE" --seed "$BENCH_SEED" >"$DATA/summary.json"
    check_dataset v1
    check_dataset v2
    say "$stamp" >"$DATA/stamp"
}

# The files on disk must match the plan (files and bytes).
check_dataset() {
    local got want
    got=$(python3 "$HERE/gen_dataset.py" count "$DATA/$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["files"], d["bytes"])')
    want=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))[sys.argv[2]]; print(d["files"], d["bytes"])' "$DATA/summary.json" "$1")
    [[ $got == "$want" ]] || die "data set $1 has '$got' files/bytes, plan says '$want'"
}

# Make $SRC an exact copy of v1 or v2 (rsync keeps mtimes, so only files that
# differ between the versions are rewritten and look changed to the tools).
load_src() {
    mkdir -p "$SRC"
    rsync -a --delete "$DATA/$1/" "$SRC/"
}

# Rough need: v1, v2 and src copies, four repositories, one restore.
check_disk_space() {
    local bytes need avail
    bytes=$(python3 "$HERE/gen_dataset.py" plan --scale "$BENCH_SCALE" --seed "$BENCH_SEED" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["v2"]["bytes"])')
    need=$((bytes * 8))
    [[ -f $DATA/stamp ]] && need=$((bytes * 5))
    avail=$(df -B1 --output=avail "$BENCH_DIR" | tail -1)
    ((avail > need)) || say "warning: $((avail >> 20)) MiB free in $BENCH_DIR, about $((need >> 20)) MiB may be needed"
}

# ------------------------------------------------------------------ tools
# TOOL_check: set SKIP (via skip) and fail when the tool cannot run.
# TOOL_cmd ACTION REPO [ARG]: set CMD for init | backup NAME | restore DIR.

SKIP=
skip() { SKIP=$*; return 1; }

lifeboat_check() {
    [[ -x $LIFEBOAT_BIN ]] || skip "lifeboat binary not found at $LIFEBOAT_BIN (cargo build --release, or set LIFEBOAT_BIN)" || return
    tool_info lifeboat "$("$LIFEBOAT_BIN" --version 2>&1 | head -1 || true)" "defaults"
}

lifeboat_cmd() {
    case $1 in
        init) CMD=("$LIFEBOAT_BIN" --repo "$2" repo init) ;;
        backup) CMD=("$LIFEBOAT_BIN" --repo "$2" backup files "$SRC") ;;
        restore) CMD=("$LIFEBOAT_BIN" --repo "$2" restore latest --to "files:$3") ;;
    esac
}

restic_check() {
    command -v restic >/dev/null || skip "restic not installed (apt-get install restic)" || return
    local settings help
    help=$(restic init --help 2>&1) || true
    if grep -q -- '--repository-version' <<<"$help"; then
        RESTIC_INIT_FLAGS=(--repository-version 2)
        settings="repository format v2 (init --repository-version 2), compression auto (zstd)"
    else
        RESTIC_INIT_FLAGS=()
        settings="init has no --repository-version: default repository format (v1 = no compression)"
    fi
    say "restic: $settings"
    tool_info restic "$(restic version | head -1)" "$settings"
}

restic_cmd() {
    case $1 in
        init) CMD=(restic -r "$2" init "${RESTIC_INIT_FLAGS[@]}") ;;
        backup) CMD=(restic -r "$2" backup "$SRC") ;;
        restore) CMD=(restic -r "$2" restore latest --target "$3") ;;
    esac
}

RUSTIC=
rustic_check() {
    RUSTIC=$(command -v rustic || true)
    [[ -z $RUSTIC && -x $HOME/.cargo/bin/rustic ]] && RUSTIC=$HOME/.cargo/bin/rustic
    if [[ -z $RUSTIC && $BENCH_INSTALL == 1 ]]; then
        say "installing rustic: cargo install rustic-rs --locked"
        cargo install rustic-rs --locked >"$LOGS/rustic-install.log" 2>&1 \
            || skip "cargo install rustic-rs failed (see $LOGS/rustic-install.log)" || return
        RUSTIC=$HOME/.cargo/bin/rustic
    fi
    [[ -n $RUSTIC ]] || skip "rustic not installed (set BENCH_INSTALL=1 to cargo install rustic-rs)" || return
    local help sub
    help=$("$RUSTIC" --help 2>&1) || true
    grep -q -- '--password' <<<"$help" || skip "'$RUSTIC --help' shows no --password option" || return
    for sub in init backup restore; do
        grep -qE "^\s+$sub\b" <<<"$help" || skip "'$RUSTIC --help' lists no '$sub' command" || return
    done
    tool_info rustic "$("$RUSTIC" --version 2>&1 | head -1)" "defaults"
}

rustic_cmd() {
    local base=("$RUSTIC" -r "$2" --password bench)
    case $1 in
        init) CMD=("${base[@]}" init) ;;
        backup) CMD=("${base[@]}" backup "$SRC") ;;
        restore) CMD=("${base[@]}" restore latest "$3") ;;
    esac
}

borg_check() {
    command -v borg >/dev/null || skip "borg not installed (apt-get install borgbackup)" || return
    tool_info borg "$(borg --version)" "repokey-blake2, --compression zstd,1"
}

borg_cmd() {
    case $1 in
        init) CMD=(borg init -e repokey-blake2 "$2") ;;
        backup) CMD=(borg create --compression "zstd,1" "$2::$3" "$SRC") ;;
        restore) CMD=(borg extract "$2::a3") ;;  # run inside the restore directory
    esac
}

tool_info() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$TOOLINFO"; }

# ------------------------------------------------------------------ steps

# record TOOL STEP STATUS SECONDS RSS_KIB REPO_BYTES EXIT NOTE
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# timed TOOL STEP WORKDIR: run CMD under GNU time; sets SECS, RSS_KIB and RC.
timed() {
    local log=$LOGS/$1-$2.log tfile=$LOGS/$1-$2.time
    drop_caches
    RC=0
    (cd "$3" && /usr/bin/time -f '%e %M' -o "$tfile" "${NONET[@]}" "${CMD[@]}" </dev/null >"$log" 2>&1) || RC=$?
    read -r SECS RSS_KIB < <(tail -1 "$tfile" 2>/dev/null) || true
    [[ $SECS =~ ^[0-9.]+$ ]] || { SECS=0 RSS_KIB=0; }
}

ok_exit() { [[ $1 == 0 || ($2 == borg && $1 == 1) ]]; }  # borg exit 1 = warnings only

repo_bytes() { du -sb "$1" | cut -f1; }

# note TOOL STEP REPO ARCHIVE: what the tool says it found and stored (untimed).
note() {
    if [[ $1 == borg ]]; then
        borg info "$3::$4" 2>/dev/null | grep -m1 '^This archive:' | awk '{print "original " $3 $4 ", compressed " $5 $6 ", deduplicated " $7 $8}' || true
    else  # restic and rustic summaries
        grep -oE '(Files|Added to the repo[a-z]*):.*' "$LOGS/$1-$2.log" | head -2 | sed 's/\s\+/ /g' | paste -sd ';' | sed 's/;/; /g' || true
    fi
}

# step TOOL STEP ACTION REPO [ARG]: run one timed step and record it.
step() {
    local tool=$1 name=$2 action=$3 repo=$4 arg=${5:-} workdir=$BENCH_DIR size=
    "${tool}_cmd" "$action" "$repo" "$arg"
    [[ $action == restore ]] && workdir=$arg
    timed "$tool" "$name" "$workdir"
    if ! ok_exit "$RC" "$tool"; then
        say "  $name: FAILED (exit $RC), see $LOGS/$tool-$name.log"
        tail -5 "$LOGS/$tool-$name.log" | sed 's/^/    | /'
        record "$tool" "$name" failed "$SECS" "$RSS_KIB" "" "$RC" "see $LOGS/$tool-$name.log"
        return 1
    fi
    [[ $action == backup ]] && size=$(repo_bytes "$repo")
    local extra
    extra=$(note "$tool" "$name" "$repo" "$arg")
    [[ $action == restore ]] && extra=$(verify_restore "$tool" "$arg")
    say "  $name: ${SECS}s, peak RSS $((RSS_KIB / 1024)) MiB${size:+, repository $((size >> 20)) MiB}${extra:+ ($extra)}"
    record "$tool" "$name" ok "$SECS" "$RSS_KIB" "$size" "$RC" "$extra"
}

# The restored tree is DIR/<absolute source path> (restic, borg) or DIR itself.
restored_root() {
    if [[ -d $1$SRC ]]; then say "$1$SRC"; else say "$1"; fi
}

# verify_restore TOOL DIR: compare the restored tree with v2 (untimed).
verify_restore() {
    local out=$LOGS/$1-verify.diff
    [[ $BENCH_VERIFY == 1 ]] || { say "not verified"; return; }
    if diff -r -q --no-dereference "$DATA/v2" "$(restored_root "$2")" >"$out" 2>&1; then
        say "verified: identical to v2"
    else
        say "RESTORE DIFFERS from v2: $(wc -l <"$out") differences, see $out"
    fi
}

run_tool() {
    local tool=$1 repo=$REPOS/$1
    say ""
    say "== $tool"
    SKIP=
    if ! "${tool}_check"; then
        say "skipped: ${SKIP:-check failed}"
        record "$tool" - skipped "" "" "" "" "${SKIP:-check failed}"
        return 0
    fi
    rm -rf "$repo" "$RESTORE" "${BENCH_DIR:?}/home/$tool"
    mkdir -p "$REPOS" "$BENCH_DIR/home/$tool"
    # Fresh cache and config directories for each tool (not counted in repository size).
    export XDG_CACHE_HOME=$BENCH_DIR/home/$tool/cache XDG_CONFIG_HOME=$BENCH_DIR/home/$tool/config
    load_src v1
    "${tool}_cmd" init "$repo"
    "${NONET[@]}" "${CMD[@]}" </dev/null >"$LOGS/$tool-init.log" 2>&1 \
        || { say "  init: FAILED, see $LOGS/$tool-init.log"; record "$tool" init failed "" "" "" 1 ""; return 0; }
    step "$tool" backup_v1 backup "$repo" a1 || return 0
    load_src v2
    step "$tool" backup_v2 backup "$repo" a2 || return 0
    step "$tool" backup_unchanged backup "$repo" a3 || return 0
    mkdir -p "$RESTORE"
    step "$tool" restore restore "$repo" "$RESTORE" || true
    rm -rf "$RESTORE"
}

main() {
    check_settings
    install_packages
    mkdir -p "$BENCH_DIR" "$LOGS"
    rm -f "$LOGS"/*.log "$LOGS"/*.time "$LOGS"/*.diff
    : >"$RESULTS"
    : >"$TOOLINFO"
    python3 "$HERE/report.py" machine
    check_disk_space
    make_dataset
    python3 "$HERE/report.py" dataset
    setup_network_isolation
    setup_caches
    local tool
    for tool in $BENCH_TOOLS; do
        run_tool "$tool"
    done
    say ""
    python3 "$HERE/report.py" report
}

main "$@"
