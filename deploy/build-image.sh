#!/usr/bin/env bash
# Builds the axeq-server image with podman (no Docker engine needed). Without a reachable
# registry it first makes a Debian 12 base image with debootstrap from this machine's own apt
# mirror (../shared/NOTES.md). Usage: deploy/build-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/axeq-server:dev}
BASE=${AXEQ_IMAGE_BASE:-localhost/debian:bookworm-local}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
for p in podman buildah runc debootstrap; do
  command -v "$p" >/dev/null || { $SUDO apt-get update; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y podman buildah runc debootstrap; break; }
done
if ! podman image exists "$BASE"; then
  mirror=$( (grep -rhoE 'https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) | grep -v -e security -e snapshot | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  root=$(mktemp -d)
  $SUDO debootstrap --variant=minbase bookworm "$root" "$mirror"
  $SUDO tar -C "$root" -c . | podman import - "$BASE"
  $SUDO rm -rf "$root"
fi
podman build --isolation=chroot --runtime runc --build-arg BASE="$BASE" -t "$TAG" .
echo "built $TAG"
