#!/usr/bin/env bash
# The load harness in one command: builds with --release, then runs scripts/bench.py, which
# starts the mock, nginx and the gateway, runs scenarios S1-S7 and writes BENCHMARKS.md.
#   scripts/bench.sh                 # full run (about 15 minutes on 2 cores)
#   scripts/bench.sh --quick         # a few seconds: checks the harness, not the figures
#   scripts/bench.sh --rounds 5 --duration 15 --out /tmp/bench.md
#   scripts/bench.sh --baseline-rev 3137717   # S2 also against that commit, in the same rounds
#   scripts/bench.sh --baseline-rev 5036308 --baseline-same-config   # a baseline that knows every
#                                    option: the same config, token budgets included
# Needs nginx, wrk and taskset (Debian: apt-get install nginx-light wrk util-linux).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

args=()
baseline_rev=""
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline-rev) baseline_rev="$2"; shift 2 ;;
    --baseline-rev=*) baseline_rev="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -n "$baseline_rev" ]; then
  # The baseline is built from a worktree of that commit into the same target directory
  # (the dependencies are built once), then copied aside before this commit's build.
  rev="$(git rev-parse --short "$baseline_rev")"
  baseline="$root/target/release/ollama-gateway-$rev"
  if [ ! -x "$baseline" ]; then
    tree="$(mktemp -d)"
    trap 'git -C "$root" worktree remove --force "$tree" 2>/dev/null || true' EXIT
    git worktree add --detach --force "$tree" "$rev" >/dev/null
    (cd "$tree" && CARGO_TARGET_DIR="$root/target" cargo build --release --bin ollama-gateway)
    cp "$root/target/release/ollama-gateway" "$baseline"
    # Make sure the next build links this commit's binary again.
    touch "$root/src/main.rs"
  fi
  args+=(--baseline "$baseline" --baseline-label "$rev")
fi

if [[ " ${args[*]-} " != *" --debug "* ]]; then
  cargo build --release --bin ollama-gateway --example mock_upstream --example bench_client --example bare_proxy
fi
exec python3 scripts/bench.py "${args[@]}"
