#!/usr/bin/env bash
# Llama (Ollama), whole answer: scripts/llm/llama.sh ["prompt"]  (model: $LLAMA_MODEL)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chat_once "$LLAMA_MODEL" "${1:-$DEFAULT_PROMPT}"
