#!/usr/bin/env bash
# Build the fleetwatch image without a registry or network inside the build:
#   1. the Debian 12 bases, from debootstrap --variant=minbase and docker import (once per machine);
#   2. the wheels of fleetwatch and its dependencies, built here with pip;
#   3. docker build --network=none from deploy/Dockerfile.
# Needs root, a running dockerd, debootstrap, and Debian's mirror (or DEBIAN_MIRROR).
# Usage: deploy/build-image.sh [TAG]   (default fleetwatch:dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-fleetwatch:dev}
work=${FLEETWATCH_BUILD_DIR:-$root/build/image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$work"
started=$SECONDS

if ! docker image inspect fleetwatch-base:build fleetwatch-base:runtime >/dev/null 2>&1; then
    rm -rf "$work/rootfs"
    echo "build-image: debootstrap bookworm (minbase + python3)" >&2
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log"
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -c . | docker import - fleetwatch-base:build >/dev/null
    # the runtime base: no venv module, no bundled pip or setuptools wheels
    chroot "$work/rootfs" dpkg --purge python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl >/dev/null
    tar -C "$work/rootfs" -c . | docker import - fleetwatch-base:runtime >/dev/null
    rm -rf "$work/rootfs"
    echo "build-image: bases imported after $((SECONDS - started)) s" >&2
fi

rm -rf "$work/context"
mkdir -p "$work/context/wheels"
python3 -m pip wheel --quiet --wheel-dir "$work/context/wheels" "$root"
cp "$root/deploy/Dockerfile" "$work/context/Dockerfile"
docker build --quiet --network=none --tag "$tag" "$work/context" >/dev/null
echo "build-image: built $tag in $((SECONDS - started)) s" >&2
