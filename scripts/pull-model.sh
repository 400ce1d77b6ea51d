#!/usr/bin/env bash
# Pulls models into the compose Ollama: scripts/pull-model.sh [MODEL...]
# Without arguments: DEFAULT_MODEL and EXTRA_MODELS (from the environment or .env).
# Uses the Compose plugin or docker-compose 1.29+ (see compose.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=compose.sh
source "$root/scripts/compose.sh"
cd "$root"
find_compose
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
# A terminal shows the pull's progress bars; elsewhere (CI, a pipe) no TTY is asked for,
# which docker-compose 1.x would refuse.
tty=()
[[ -t 0 && -t 1 ]] || tty=(-T)
for model in "${models[@]}"; do
  echo "pulling $model"
  compose exec "${tty[@]}" ollama ollama pull "$model"
done
