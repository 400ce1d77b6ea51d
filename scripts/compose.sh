# shellcheck shell=bash
# Sourced by scripts/make-certs.sh and scripts/pull-model.sh: runs Docker Compose as this
# machine has it, the plugin (`docker compose`: Docker 23+, or the docker-compose-plugin
# package) or the standalone `docker-compose` (1.29 or newer: Debian's docker-compose).
# Neither, or an older standalone one, stops the script with what to install.

compose_cmd=()

# Sets compose_cmd, or says what is missing and fails.
find_compose() {
  local version
  if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
    return 0
  fi
  if version="$(docker-compose version --short 2>/dev/null)"; then
    # docker-compose.yaml needs 1.29 (depends_on: service_completed_successfully).
    if [[ "$version" =~ ^1\.([0-9]+)\. ]] && (( BASH_REMATCH[1] < 29 )); then
      echo "error: docker-compose $version is too old: docker-compose.yaml needs 1.29 or newer, or the Compose plugin (docker compose)" >&2
      return 1
    fi
    compose_cmd=(docker-compose)
    return 0
  fi
  echo "error: Docker Compose is missing: neither 'docker compose' (the Compose plugin: Docker 23+ or the docker-compose-plugin package) nor 'docker-compose' (1.29 or newer; Debian: apt-get install docker-compose) runs here" >&2
  return 1
}

# Runs a Compose command with whichever Compose find_compose found.
compose() {
  "${compose_cmd[@]}" "$@"
}
