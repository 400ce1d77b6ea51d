#!/usr/bin/env bash
# OpenAI, whole answer: scripts/llm/openai.sh ["prompt"]  (model: $OPENAI_MODEL)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chat_once "$OPENAI_MODEL" "${1:-$DEFAULT_PROMPT}"
