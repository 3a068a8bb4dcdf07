#!/usr/bin/env bash
# Builds the images the compose fleet runs:
#   starling:$STARLING_TAG             the node (deploy/Dockerfile)
#   starling-prometheus:$STARLING_TAG  Prometheus (deploy/prometheus/Dockerfile)
# after making sure the base image exists (deploy/base-image.sh).
#
# The node binary is built on the host (see the Dockerfile for why):
#   STARLING_BIN=PATH   use this binary instead of building one (tests pass theirs)
#   STARLING_PROFILE    cargo profile to build, default release
#   STARLING_TAG        image tag, default local
set -euo pipefail
deploy="$(cd "$(dirname "$0")" && pwd)"
tag="${STARLING_TAG:-local}"

bash "$deploy/base-image.sh"

bin="${STARLING_BIN:-}"
if [ -z "$bin" ]; then
  profile="${STARLING_PROFILE:-release}"
  echo "building starling ($profile profile)"
  (cd "$deploy/.." && cargo build --quiet --profile "$profile" -p starling-node --bin starling)
  target="$(cd "$deploy/.." && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  dir="$profile"; [ "$profile" = dev ] && dir=debug
  bin="$target/$dir/starling"
fi
[ -x "$bin" ] || { echo "error: no starling binary at $bin" >&2; exit 1; }

# Debug info is most of a debug binary's size and useless in the image.
mkdir -p "$deploy/.build"
if command -v strip >/dev/null; then
  strip -o "$deploy/.build/starling" "$bin"
else
  cp "$bin" "$deploy/.build/starling"
fi
chmod 0755 "$deploy/.build/starling"

# The legacy builder prints a deprecation notice on every build; keep the log
# and show it only when a build fails.
build() {
  local image="$1" context="$2" log
  log="$(mktemp)"
  if ! docker build --tag "$image" "$context" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "error: building $image failed" >&2; exit 1
  fi
  rm -f "$log"
  echo "built $image"
}
build "starling:$tag" "$deploy"
build "starling-prometheus:$tag" "$deploy/prometheus"
