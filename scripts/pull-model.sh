#!/usr/bin/env bash
# Pulls models into the compose Ollama: scripts/pull-model.sh [MODEL...]
# Without arguments: DEFAULT_MODEL and EXTRA_MODELS (from the environment or .env).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# A value from .env (read as data, never run), unless the environment has it.
from_env_file() {
  local name="$1" line
  if [[ -z "${!name:-}" && -r .env ]]; then
    line="$(grep -E "^${name}=" .env | tail -n 1 || true)"
    printf -v "$name" '%s' "${line#*=}"
  fi
}
models=("$@")
if [[ ${#models[@]} -eq 0 ]]; then
  from_env_file DEFAULT_MODEL
  from_env_file EXTRA_MODELS
  read -r -a models <<<"${DEFAULT_MODEL:-llama3:instruct} ${EXTRA_MODELS:-}"
fi
for model in "${models[@]}"; do
  echo "pulling $model"
  docker compose exec ollama ollama pull "$model"
done
