#!/usr/bin/env bash
# Build a local Python 3.11 base image from Debian packages, for machines that cannot pull
# python:3.11.14-slim-bookworm (no access to public container registries, only to Debian's
# package mirror). The images build on it with --build-arg BASE_IMAGE=<tag>.
#
#   images/build-base-image.sh [TAG]        (default TAG: mushroom-base:3.11-bookworm)
#
# Needs root (debootstrap and chroot), debootstrap and a running Docker daemon.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (bookworm,
# whose python3.11 is 3.11.2 with Debian's security fixes).
#
# The image has python3.11 plus `python` and `python3` links to it (Debian names only
# python3.11; the Dockerfiles run `python -m venv`), venv support (ensurepip) and CA
# certificates, in a minbase Debian of the same release and glibc as the official image.
set -euo pipefail

tag="${1:-mushroom-base:3.11-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

# debootstrap does not resolve virtual packages: python3.11-venv depends on
# python3.11-distutils, which only python3-distutils provides, so it is named here.
packages=python3.11,python3.11-venv,python3-distutils,ca-certificates

if [[ $(id -u) -ne 0 ]]; then
  echo "error: $0 needs root (debootstrap, chroot); run it with sudo" >&2
  exit 2
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is missing: apt-get install -y debootstrap" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "error: no Docker daemon answers (docker info)" >&2; exit 2; }

rootfs="$(mktemp -d /tmp/mushroom-base-rootfs.XXXXXX)"
chmod 755 "$rootfs"  # it becomes /: apt's _apt user must traverse it
trap 'rm -rf --one-file-system "$rootfs"' EXIT

echo "debootstrap $suite ($mirror) with $packages into $rootfs"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror"

# Security and point-release updates, as the official image has them.
cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
chroot "$rootfs" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
  'apt-get update -qq && apt-get upgrade -y -qq && apt-get clean'

ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"
[[ -e "$rootfs/usr/bin/python3" ]] || ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python3"
python_version="$(chroot "$rootfs" /usr/bin/python3.11 -c 'import platform; print(platform.python_version())')"
chroot "$rootfs" /usr/local/bin/python -c 'import venv, ensurepip, ssl, sqlite3'  # what the builds use

# Nothing a container needs: apt lists, caches, docs, man pages, locales.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +

tar --numeric-owner --xattrs -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.opencontainers.image.title=mushroom-base org.opencontainers.image.description=\"Python $python_version from Debian $suite packages (debootstrap, images/build-base-image.sh)\" org.opencontainers.image.version=$python_version" \
  --change 'CMD ["python3.11"]' \
  --message "debootstrap $suite $packages" \
  - "$tag" >/dev/null

docker run --rm "$tag" python -c 'import sys; print("base image ok:", sys.version.split()[0])'
docker image ls "$tag"
