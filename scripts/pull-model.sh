#!/usr/bin/env bash
# Pulls models into the compose Ollama: scripts/pull-model.sh [MODEL...]
# Without arguments: DEFAULT_MODEL and EXTRA_MODELS (from the environment or .env).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
models=("$@")
if [[ ${#models[@]} -eq 0 ]]; then
  if [[ -r .env ]]; then
    set -a
    # shellcheck disable=SC1091
    . ./.env
    set +a
  fi
  read -r -a models <<<"${DEFAULT_MODEL:-llama3:instruct} ${EXTRA_MODELS:-}"
fi
for model in "${models[@]}"; do
  echo "pulling $model"
  docker compose exec ollama ollama pull "$model"
done
