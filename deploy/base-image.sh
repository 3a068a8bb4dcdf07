#!/usr/bin/env bash
# Makes sure the Docker image `debian:bookworm-slim` exists locally.
#
# deploy/Dockerfile starts FROM the standard base users expect. Where no
# registry can be reached, this builds that base from Debian's package mirror
# instead: debootstrap a minimal bookworm (variant minbase) into a temporary
# directory and `docker import` it under the same name, so the Dockerfile
# builds unmodified. Idempotent: an existing image is reused, whichever way it
# got there (pulled or imported). Installs debootstrap if it is missing.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian) and
# DEBIAN_SECURITY_MIRROR (default: DEBIAN_MIRROR with debian-security for debian).
set -euo pipefail

image="debian:bookworm-slim"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image is present; reusing it"
  exit 0
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root (or sudo) to run: $*" >&2; exit 1
  fi
}

if ! command -v debootstrap >/dev/null && [ ! -x /usr/sbin/debootstrap ]; then
  echo "installing debootstrap"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends debootstrap
fi

rootfs="$(mktemp -d -t starling-bookworm.XXXXXX)"
trap 'as_root rm -rf "$rootfs"' EXIT

echo "debootstrapping a minimal bookworm from $mirror (takes a minute or two)"
as_root env PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" \
  >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# Like the official slim image: the same apt sources (release, updates,
# security), no documentation installed by later packages, no caches.
as_root rm -f "$rootfs/etc/apt/sources.list"
as_root tee "$rootfs/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/log/*.log "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*

as_root tar --numeric-owner -C "$rootfs" -c . \
  | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase bookworm $mirror" \
    - "$image" >/dev/null
echo "imported $image ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%d MB", $1/1e6}'))"
