#!/usr/bin/env bash
# Installs what building, testing and the demo need, if missing. Idempotent:
# on a machine that has everything it only checks.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root (or sudo) to run: $*" >&2; exit 1
  fi
}

missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v git >/dev/null || missing+=(git)
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v python3 >/dev/null || missing+=(python3)
# Lints deploy/*.sh in tests/deploy.rs.
command -v shellcheck >/dev/null || missing+=(shellcheck)
# Network namespaces, veth pairs and bridges for tests/discovery.rs.
command -v ip >/dev/null || missing+=(iproute2)
# Runs daemons with clocks a day apart in tests/clock_skew.rs.
command -v faketime >/dev/null || missing+=(faketime)
# promtool checks the daemon's /metrics in tests/events.rs.
command -v promtool >/dev/null || missing+=(prometheus)
# starling-sim draws its report plots with this font (read at run time).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found. Install a Rust toolchain (1.85 or newer) with rustup, then rerun." >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
