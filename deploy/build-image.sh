#!/usr/bin/env bash
# Build the fleetwatch image without a registry or network inside the build:
#   1. the Debian 12 bases, from debootstrap --variant=minbase and docker import (once per machine and
#      architecture; another architecture's through debootstrap --foreign and qemu-user-static);
#   2. the wheels: every dependency from deploy/requirements.lock, checked against its sha256, for the
#      image's architecture, and fleetwatch's own, built here;
#   3. docker build --network=none from deploy/Dockerfile, which installs them with --require-hashes.
# Needs root, a running dockerd, debootstrap, a package index and Debian's mirror (or DEBIAN_MIRROR);
# for arm64 on amd64 also qemu-user-static with binfmt_misc (update-binfmts --enable qemu-aarch64).
# Usage: deploy/build-image.sh [TAG] [ARCH]   (default fleetwatch:dev, this machine's architecture)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-fleetwatch:dev}
host=$(dpkg --print-architecture)
arch=${2:-$host}
case $arch in
    amd64) plat=manylinux2014_x86_64 ;;
    arm64) plat=manylinux2014_aarch64 ;;
    *) echo "build-image: unsupported architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
work=${FLEETWATCH_BUILD_DIR:-$root/build/image}/$arch
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$work"
started=$SECONDS

if ! docker image inspect "fleetwatch-base:build-$arch" "fleetwatch-base:runtime-$arch" >/dev/null 2>&1; then
    rm -rf "$work/rootfs"
    echo "build-image: debootstrap bookworm $arch (minbase + python3)" >&2
    if [ "$arch" = "$host" ]; then
        debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" "$mirror" \
            >"$work/debootstrap.log"
    else  # unpack here, then run the second stage under qemu (binfmt_misc runs the foreign binaries)
        debootstrap --arch="$arch" --foreign --variant=minbase --include=python3,python3-venv bookworm \
            "$work/rootfs" "$mirror" >"$work/debootstrap.log"
        chroot "$work/rootfs" /debootstrap/debootstrap --second-stage >>"$work/debootstrap.log"
    fi
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -c . | docker import --platform "linux/$arch" - "fleetwatch-base:build-$arch" >/dev/null
    # the runtime base: no venv module, no bundled pip or setuptools wheels
    chroot "$work/rootfs" dpkg --purge python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl >/dev/null
    tar -C "$work/rootfs" -c . | docker import --platform "linux/$arch" - "fleetwatch-base:runtime-$arch" >/dev/null
    rm -rf "$work/rootfs"
    echo "build-image: bases imported after $((SECONDS - started)) s" >&2
fi

rm -rf "$work/context"
mkdir -p "$work/context/wheels"
# the dependencies: exactly the locked wheels, their hashes checked as they arrive
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes --dest "$work/context/wheels" \
    --platform "$plat" --platform "${plat/manylinux2014/manylinux_2_28}" --python-version 3.11 --implementation cp \
    -r "$root/deploy/requirements.lock"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/context/wheels" "$root"
cp "$root/deploy/Dockerfile" "$root/deploy/requirements.lock" "$work/context/"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
# no --platform: the legacy builder would refuse its own build stage (it records the daemon's platform);
# the bases carry theirs, and the final image inherits it
docker build --quiet --network=none --tag "$tag" \
    --build-arg "BUILD_BASE=fleetwatch-base:build-$arch" --build-arg "BASE=fleetwatch-base:runtime-$arch" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" "$work/context" >/dev/null
if [ "$arch" != "$host" ]; then  # the builder recorded its own platform: record the layers' instead
    docker save "$tag" | python3 "$root/deploy/set-image-arch.py" "$arch" | docker load --quiet >/dev/null
fi
echo "build-image: built $tag ($arch) in $((SECONDS - started)) s" >&2
