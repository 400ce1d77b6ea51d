#!/usr/bin/env bash
# Shared by the scripts in scripts/llm: where the gateway is, how to reach it, and the two
# ways of asking (a whole answer, or a stream printed token by token).
#
# Reads GATEWAY (default https://localhost:8443), GATEWAY_API_KEY, GATEWAY_CA (a CA or
# certificate file to trust; unset means the system store, and curl's CURL_CA_BUNDLE still
# works), GATEWAY_INSECURE=1 (skip verification: throwaway self-signed certificates only),
# DEFAULT_MODEL / LLAMA_MODEL / OPENAI_MODEL and SYSTEM_PROMPT. Values missing from the
# environment are taken from the repository's .env (or GATEWAY_ENV_FILE) when present.
set -euo pipefail

llm_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$llm_dir/../.." && pwd)"

env_file="${GATEWAY_ENV_FILE:-$repo_root/.env}"
fill_from_env_file() {
  local name="$1" line
  if [[ -n "${!name:-}" || ! -r "$env_file" ]]; then
    return 0
  fi
  line="$(grep -E "^${name}=" "$env_file" | tail -n 1 || true)"
  if [[ -n "$line" ]]; then
    printf -v "$name" '%s' "${line#*=}"
  fi
}
for name in GATEWAY GATEWAY_API_KEY GATEWAY_CA GATEWAY_INSECURE DEFAULT_MODEL; do
  fill_from_env_file "$name"
done

GATEWAY="${GATEWAY:-https://localhost:8443}"
GATEWAY="${GATEWAY%/}"
LLAMA_MODEL="${LLAMA_MODEL:-${DEFAULT_MODEL:-llama3:instruct}}"
OPENAI_MODEL="${OPENAI_MODEL:-openai/gpt-4o-mini}"
# shellcheck disable=SC2034 # used by the scripts that source this file
DEFAULT_PROMPT="用一句話介紹你自己"

for tool in curl jq; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is required" >&2
    exit 127
  fi
done

curl_args=(--silent --show-error --no-buffer -H 'Content-Type: application/json')
if [[ "${GATEWAY_INSECURE:-0}" == "1" ]]; then
  curl_args+=(--insecure)
elif [[ -n "${GATEWAY_CA:-}" ]]; then
  ca="$GATEWAY_CA"
  if [[ "$ca" != /* && ! -e "$ca" && -e "$repo_root/$ca" ]]; then
    ca="$repo_root/$ca"
  fi
  curl_args+=(--cacert "$ca")
fi

# request_body MODEL PROMPT STREAM(true|false)
request_body() {
  jq -cn --arg model "$1" --arg prompt "$2" --argjson stream "$3" --arg system "${SYSTEM_PROMPT:-}" '
    {model: $model, stream: $stream,
     messages: ((if $system == "" then [] else [{role: "system", content: $system}] end)
                + [{role: "user", content: $prompt}])}'
}

# gateway_curl ARGS...: curl to /api/chat with the shared options and the key header.
gateway_curl() {
  if [[ -n "${GATEWAY_API_KEY:-}" ]]; then
    curl "${curl_args[@]}" -H @<(printf 'Authorization: Bearer %s\n' "$GATEWAY_API_KEY") "$@" "$GATEWAY/api/chat"
  else
    curl "${curl_args[@]}" "$@" "$GATEWAY/api/chat"
  fi
}

# chat_once MODEL PROMPT: prints the whole answer; on failure prints the gateway's error
# and returns non-zero.
chat_once() {
  local out status
  if ! out="$(gateway_curl -w '\n%{http_code}' --data-binary "$(request_body "$1" "$2" false)")"; then
    echo "error: cannot reach the gateway at $GATEWAY" >&2
    return 1
  fi
  status="${out##*$'\n'}"
  out="${out%$'\n'*}"
  if [[ "$status" != 2* ]]; then
    printf 'error: HTTP %s: %s\n' "$status" "$(jq -r '.error // .' <<<"$out" 2>/dev/null || printf '%s' "$out")" >&2
    return 1
  fi
  jq -r '.message.content' <<<"$out"
}

# chat_stream MODEL PROMPT: prints tokens as they arrive; an error (before or during the
# stream) is printed and makes it return non-zero.
chat_stream() {
  gateway_curl --fail-with-body --data-binary "$(request_body "$1" "$2" true)" \
    | jq --unbuffered -j '
        if .error then ("\nerror: " + .error + "\n" | halt_error(1))
        else (.message.content // "") end'
  echo
}
