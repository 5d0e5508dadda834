#!/usr/bin/env bash
# Runs Lifeboat's whole test suite on a fresh Debian machine: installs what the tests need, then
# formats, lints and tests the workspace. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}"

need_apt=()
command -v setfattr >/dev/null || need_apt+=(attr)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# The lab's traffic servers (BIND 9, HAProxy) and the DNS tools the traffic tests check with (dig, nsupdate).
command -v named >/dev/null || need_apt+=(bind9)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v dig >/dev/null && command -v nsupdate >/dev/null || need_apt+=(dnsutils)
# The shell scripts (the lab, these scripts, the benchmarks) are linted like the Rust code.
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
# The real Prometheus (and promtool) that scrapes `serve` and checks the alerting rules, and the
# headless Chromium that loads the dashboard.
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "scripts/test.sh: missing ${need_apt[*]}; install them or run as root" >&2; exit 1; fi
  # bind9 and haproxy would start machine-wide services when installed; the lab runs its own
  # (a policy-rc.d saying "no" for the time of the install, unless the machine has one).
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
# A real S3 server for the S3 backend tests: Garage, from crates.io (the tests start one per test on
# loopback). Built once and kept in ~/.cargo/bin: about 25 CPU-minutes, 15 to 55 minutes on 2 cores.
if ! command -v garage >/dev/null; then
  echo "scripts/test.sh: building Garage (once): cargo install garage"
  cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,lmdb \
    --target-dir "$HOME/.cache/garage-build" -q
fi
command -v garage >/dev/null || { echo "scripts/test.sh: garage is not on PATH after cargo install (is ~/.cargo/bin on PATH?)" >&2; exit 1; }

# Two real sites (each its own network namespace with a dockerd and Swarm, and a Kubernetes 1.20
# control plane with a kubelet on that dockerd) for the Docker and Kubernetes end-to-end tests, and the
# traffic servers (BIND 9 on 127.0.0.1:5353, HAProxy) for the traffic tests. lab/lab installs what it needs (docker.io, debootstrap, ...) and builds
# its images once (cached in /var/cache/lifeboat-lab); it needs root.
if [ "$(id -u)" != 0 ]; then echo "scripts/test.sh: run as root (the lab starts network namespaces and daemons)" >&2; exit 1; fi
# The lab's kubelets delete unused images (the lab's own among them) when the disk is nearly full.
free_kib=$(df -Pk /var/lib | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((5 << 20)) ]; then
  echo "scripts/test.sh: warning: only $((free_kib >> 20)) GiB free under /var/lib; the lab needs several (old cargo target directories?)" >&2
fi
lab/lab up --docker 2 --kube 2 --dns --haproxy >/dev/null

cargo fmt --all -- --check
shellcheck -S warning lab/lab lab/files/labrunc lab/files/lab-postgres scripts/*.sh .ci/run bench/*.sh
cargo clippy --workspace --all-targets -- -D warnings
# Every fuzz target for a fixed 10 s, its corpus kept between runs (seeded from fuzz/corpus).
fuzz_corpus="$HOME/.cache/lifeboat-fuzz-corpus"
mkdir -p "$fuzz_corpus" && cp -rn fuzz/corpus/. "$fuzz_corpus/"
FUZZ_CORPUS="$fuzz_corpus" scripts/fuzz.sh 10
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# `lab`: the tests that need the lab started above (plain `cargo test` lists them as ignored).
# The kill -9 test of the repository runs eight rounds here (four in the fast tier).
LIFEBOAT_KILL_ROUNDS=8 cargo test --workspace --all-targets --features lifeboat/lab,lifeboat-traffic/lab -- --test-threads 2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
