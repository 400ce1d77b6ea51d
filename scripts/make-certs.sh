#!/usr/bin/env bash
# Makes a local CA and a server certificate for the compose setup into certs/:
#   certs/ca.pem          give to clients (GATEWAY_CA for scripts/llm, --cacert for curl)
#   certs/server.pem      certificate chain (GATEWAY_TLS_CERT=/certs/server.pem in .env)
#   certs/server-key.pem  its key          (GATEWAY_TLS_KEY=/certs/server-key.pem)
# Names: localhost, 127.0.0.1, ::1, gateway, this host's name, plus any arguments
# (e.g. scripts/make-certs.sh gpu-box.lan 10.0.0.5). --force replaces existing files.
#
# By default it runs the gateway image (so the key belongs to the container's user), with
# the Compose plugin or docker-compose 1.29+ (see compose.sh); MAKE_CERTS_LOCAL=1 uses a
# locally built binary instead (for `cargo run` setups).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=compose.sh
source "$root/scripts/compose.sh"
cd "$root"
force=()
names=(localhost 127.0.0.1 ::1 gateway "$(hostname)")
for arg in "$@"; do
  if [[ "$arg" == "--force" ]]; then force=(--force); else names+=("$arg"); fi
done
name_args=()
for n in "${names[@]}"; do name_args+=(--name "$n"); done
mkdir -p certs

if [[ "${MAKE_CERTS_LOCAL:-0}" == "1" ]]; then
  bin="$(command -v ollama-gateway || true)"
  for candidate in target/release/ollama-gateway target/debug/ollama-gateway; do
    [[ -z "$bin" && -x "$candidate" ]] && bin="$candidate"
  done
  if [[ -z "$bin" ]]; then
    echo "error: no ollama-gateway binary; run cargo build --release first" >&2
    exit 1
  fi
  "$bin" certs new --out certs "${name_args[@]}" "${force[@]}"
else
  find_compose
  compose build gateway
  compose run --rm --no-deps --user 0 -v "$root/certs:/out" --entrypoint sh gateway -c '
    set -e
    ollama-gateway certs new --out /out "$@"
    chown 10001:10001 /out/server.pem /out/server-key.pem
    chmod 0644 /out/ca.pem /out/server.pem' sh "${name_args[@]}" "${force[@]}"
fi
echo "done: set GATEWAY_TLS_CERT=/certs/server.pem and GATEWAY_TLS_KEY=/certs/server-key.pem in .env, and GATEWAY_CA=certs/ca.pem for the scripts"
