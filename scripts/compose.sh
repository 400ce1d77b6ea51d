# shellcheck shell=bash
# Sourced by scripts/make-certs.sh and scripts/pull-model.sh: runs Docker Compose as this
# machine has it, the plugin (`docker compose`: Docker 23+, or the docker-compose-plugin
# package) or the standalone `docker-compose` (1.29 or newer: Debian's docker-compose).
# No docker, neither Compose, an older standalone one, or an engine that does not answer
# stops the script with what is missing (docker-compose 1.x would end in a Python traceback).

compose_cmd=()

# Sets compose_cmd, or says what is missing and fails.
find_compose() {
  local version why
  if ! command -v docker >/dev/null 2>&1; then
    echo "error: Docker is not installed: there is no 'docker' command here (install Docker Engine with the Compose plugin, or Debian's docker.io and docker-compose packages)" >&2
    return 1
  fi
  if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
  elif version="$(docker-compose version --short 2>/dev/null)"; then
    # docker-compose.yaml needs 1.29 (depends_on: service_completed_successfully).
    if [[ "$version" =~ ^1\.([0-9]+)\. ]] && (( BASH_REMATCH[1] < 29 )); then
      echo "error: docker-compose $version is too old: docker-compose.yaml needs 1.29 or newer, or the Compose plugin (docker compose)" >&2
      return 1
    fi
    compose_cmd=(docker-compose)
  else
    echo "error: Docker Compose is missing: neither 'docker compose' (the Compose plugin: Docker 23+ or the docker-compose-plugin package) nor 'docker-compose' (1.29 or newer; Debian: apt-get install docker-compose) runs here" >&2
    return 1
  fi
  if ! why="$(docker info 2>&1 >/dev/null)"; then
    echo "error: the Docker engine is not running (or this user cannot reach it): 'docker info' failed${why:+: ${why%%$'\n'*}}" >&2
    echo "start it (systemctl start docker), or add this user to the docker group" >&2
    return 1
  fi
}

# Runs a Compose command with whichever Compose find_compose found.
compose() {
  "${compose_cmd[@]}" "$@"
}
