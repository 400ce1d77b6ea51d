#!/usr/bin/env bash
# The load harness in one command: builds with --release, then runs scripts/bench.py, which
# starts the mock, nginx and the gateway, runs scenarios S1-S7 and writes BENCHMARKS.md.
#   scripts/bench.sh                 # full run (about 15 minutes on 2 cores)
#   scripts/bench.sh --quick         # a few seconds: checks the harness, not the figures
#   scripts/bench.sh --rounds 5 --duration 15 --out /tmp/bench.md
# Needs nginx, wrk and taskset (Debian: apt-get install nginx-light wrk util-linux).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ " $* " != *" --debug "* ]]; then
  cargo build --release --bin ollama-gateway --example mock_upstream --example bench_client --example bare_proxy
fi
exec python3 scripts/bench.py "$@"
