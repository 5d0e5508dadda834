#!/usr/bin/env bash
# The fast tier's time after the build: every test binary of `cargo test --workspace` (no lab
# feature), run one after another from its package directory as `cargo test` runs them, with the
# total of passed and ignored tests and the seconds they took (target: under 60 s).
#   bench/fast-tier.sh          as the current user
#   bench/fast-tier.sh USER     as USER (run as root; USER must be able to read the target directory)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lifeboat-target}
user=${1:-}
list=$(mktemp)
trap 'rm -f "$list"' EXIT
(cd "$ROOT" && cargo test --workspace --no-run --message-format=json 2>/dev/null) \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null)
           | "\(.executable) \(.manifest_path)"' > "$list"
passed=0 ignored=0 failed=0
start=$(date +%s.%N)
while read -r exe manifest; do
  dir=$(dirname "$manifest")
  if [ -n "$user" ]; then
    out=$(cd "$dir" && runuser -u "$user" -- env CARGO_MANIFEST_DIR="$dir" "$exe" 2>&1) || failed=1
  else
    out=$(cd "$dir" && CARGO_MANIFEST_DIR="$dir" "$exe" 2>&1) || failed=1
  fi
  r=$(grep "^test result" <<< "$out" | tail -1 || true)
  p=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<< "$r"); i=$(sed -n 's/.* \([0-9]*\) ignored.*/\1/p' <<< "$r")
  passed=$((passed + ${p:-0})); ignored=$((ignored + ${i:-0}))
done < "$list"
end=$(date +%s.%N)
echo "fast tier${user:+ as $user}: $passed passed, $ignored ignored, $(echo "$end - $start" | bc) s (target: 60 s)"
[ "$failed" = 0 ] || { echo "fast tier: a test binary failed" >&2; exit 1; }
