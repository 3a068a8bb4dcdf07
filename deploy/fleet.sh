#!/usr/bin/env bash
# Runs the compose fleet (deploy/compose.yaml) with whichever compose tool
# this machine has: the `docker compose` plugin, else the v1 `docker-compose`.
#
#   fleet.sh up [NODES_PER_UNIVERSITY]   start or rescale (default 2), wait until healthy
#   fleet.sh down                        stop and remove containers, networks, the nodes' volumes
#   fleet.sh ps | logs [SERVICE] | compose ARGS...
#
# COMPOSE_PROJECT_NAME (default starling) names the fleet; partition.sh uses
# the same. STARLING_TAG picks the images (default local).
# STARLING_HEALTHY_TIMEOUT_SECONDS bounds the wait for health (default 120).
set -euo pipefail
deploy="$(cd "$(dirname "$0")" && pwd)"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-starling}"
# Bound for `up` to see every container healthy.
healthy_timeout_seconds="${STARLING_HEALTHY_TIMEOUT_SECONDS:-120}"

compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -f "$deploy/compose.yaml" "$@"
  elif command -v docker-compose >/dev/null; then
    docker-compose -f "$deploy/compose.yaml" "$@"
  else
    echo "error: neither \`docker compose\` nor \`docker-compose\` is installed" >&2; exit 1
  fi
}

containers() {
  docker ps -a -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
}

wait_healthy() {
  local deadline=$((SECONDS + healthy_timeout_seconds)) pending
  while :; do
    pending=""
    for id in $(containers); do
      status="$(docker inspect --format '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")"
      case "$status" in *" healthy") ;; *) pending="$pending ${status#/}," ;; esac
    done
    [ -z "$pending" ] && { echo "every container of $COMPOSE_PROJECT_NAME is healthy"; return 0; }
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: not healthy after ${healthy_timeout_seconds}s:${pending%,}" >&2; return 1
    fi
    sleep 2
  done
}

case "${1:-}" in
  up)
    per_uni="${2:-2}"
    # Nothing can be pulled: say what to run instead of a registry error.
    for image in "starling:${STARLING_TAG:-local}" "starling-prometheus:${STARLING_TAG:-local}"; do
      docker image inspect "$image" >/dev/null 2>&1 \
        || { echo "error: no image $image; run deploy/build-images.sh first" >&2; exit 1; }
    done
    compose up -d --scale "uni-a=$per_uni" --scale "uni-b=$per_uni"
    wait_healthy
    ;;
  down)
    # `down --volumes` removes only volumes a container created itself; a
    # recreated container (an upgrade) mounts its predecessor's, which would
    # be left behind. So note every volume the fleet mounts and remove what
    # is left of them afterwards.
    volumes="$(for id in $(containers); do
      docker inspect --format '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}}{{"\n"}}{{end}}{{end}}' "$id"
    done | sort -u)"
    compose down --volumes --remove-orphans --timeout 20
    for volume in $volumes; do
      if docker volume inspect "$volume" >/dev/null 2>&1; then docker volume rm "$volume" >/dev/null; fi
    done
    ;;
  ps) compose ps ;;
  logs) shift; compose logs --no-color "$@" ;;
  compose) shift; compose "$@" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
