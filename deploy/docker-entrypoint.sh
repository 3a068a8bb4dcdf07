#!/bin/sh
# Container entrypoint: creates the node's account on first start, then runs
# the given starling subcommand (default `up`). The display name comes from
# STARLING_DISPLAY_NAME, else the container's hostname.
set -eu

if [ "${1:-up}" = "up" ] && ! starling account show >/dev/null 2>&1; then
  starling account create --display-name "${STARLING_DISPLAY_NAME:-$(hostname)}"
fi
exec starling "$@"
