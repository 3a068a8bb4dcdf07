#!/usr/bin/env bash
# The whole test suite: unit, property, tidy and process-level tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo nextest run --workspace --no-fail-fast "$@"
