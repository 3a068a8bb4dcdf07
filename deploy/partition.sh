#!/usr/bin/env bash
# Cuts or heals the link between the two universities of the compose fleet:
# an internet shutdown for real processes in real containers.
#
#   partition.sh cut      disconnect every uni-a and uni-b node from the internet network
#   partition.sh heal     reconnect them (with their service name as DNS alias)
#   partition.sh status   print each node and whether it is on the internet network
#
# During a cut each node still reaches the nodes of its own university (its
# uni-a or uni-b network) and none of the other's; Docker isolates networks
# from each other. Nodes started while cut (`fleet.sh up` rescaling) join the
# internet network; run `cut` again. COMPOSE_PROJECT_NAME as for fleet.sh.
set -euo pipefail
project="${COMPOSE_PROJECT_NAME:-starling}"
internet="${project}_internet"

nodes() {
  for service in uni-a uni-b; do
    docker ps -q --filter "label=com.docker.compose.project=$project" \
      --filter "label=com.docker.compose.service=$service" \
      | sed "s/\$/ $service/"
  done
}

on_internet() {
  docker inspect --format "{{with index .NetworkSettings.Networks \"$internet\"}}yes{{end}}" "$1"
}

docker network inspect "$internet" >/dev/null 2>&1 \
  || { echo "error: no network $internet; is the fleet $project up?" >&2; exit 1; }
list="$(nodes)"
[ -n "$list" ] || { echo "error: fleet $project has no running nodes" >&2; exit 1; }

case "${1:-}" in
  cut)
    while read -r id service; do
      [ "$(on_internet "$id")" = yes ] && docker network disconnect "$internet" "$id"
    done <<<"$list"
    echo "cut: uni-a and uni-b no longer reach each other"
    ;;
  heal)
    while read -r id service; do
      [ "$(on_internet "$id")" = yes ] || docker network connect --alias "$service" "$internet" "$id"
    done <<<"$list"
    echo "healed: uni-a and uni-b reach each other again"
    ;;
  status)
    while read -r id service; do
      name="$(docker inspect --format '{{.Name}}' "$id")"
      echo "${name#/} $service internet=$( [ "$(on_internet "$id")" = yes ] && echo connected || echo cut)"
    done <<<"$list"
    ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
