#!/usr/bin/env bash
# Llama (Ollama), streamed: scripts/llm/llama-stream.sh ["prompt"]  (model: $LLAMA_MODEL)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chat_stream "$LLAMA_MODEL" "${1:-$DEFAULT_PROMPT}"
