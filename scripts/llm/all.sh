#!/usr/bin/env bash
# All four: Llama and OpenAI, whole and streamed. scripts/llm/all.sh ["prompt"]
# Runs every one even if one fails; exits non-zero if any failed.
set -euo pipefail
dir="$(dirname "${BASH_SOURCE[0]}")"
prompt="${1:-用一句話介紹你自己}"
failed=0
for name in llama llama-stream openai openai-stream; do
  printf '== %s ==\n' "$name"
  bash "$dir/$name.sh" "$prompt" || failed=1
done
exit "$failed"
