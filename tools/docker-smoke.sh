#!/usr/bin/env bash
# tools/docker-smoke.sh — build the Dockerfile's `smoke` target: a CPU-only build on plain Debian that
# runs the test suite and a short `megacpp train recipes/smoke.yaml`, checking its receipt (the image
# build fails when the smoke fails). Uses `docker` when an engine answers, else `podman build
# --isolation chroot`. When no registry can be reached, first makes a local Debian base with
# debootstrap (localhost/debian:bookworm). Prints the time of each stage.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${SMOKE_BASE:-}
stage() { echo "docker-smoke: $1: $2 s"; }
t_all=$(date +%s)

if docker info >/dev/null 2>&1; then
  ENGINE=(docker build)
else
  if ! command -v podman >/dev/null; then
    echo "docker-smoke: no Docker engine; installing podman and debootstrap (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap >/dev/null
  fi
  ENGINE=(podman build --isolation chroot)
fi
echo "docker-smoke: engine: ${ENGINE[*]}"

if [[ -z $BASE ]]; then
  t0=$(date +%s)
  if "${ENGINE[0]}" pull -q docker.io/library/debian:bookworm >/dev/null 2>&1; then
    BASE=docker.io/library/debian:bookworm
  else
    BASE=localhost/debian:bookworm
    if ! podman image exists "$BASE" 2>/dev/null; then
      command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
      root=$(mktemp -d /tmp/megacpp-debian.XXXXXX)
      echo "docker-smoke: no registry; making $BASE with debootstrap in $root"
      debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/tmp/megacpp-debootstrap.log 2>&1 \
        || { tail -20 /tmp/megacpp-debootstrap.log; exit 1; }
      tar -C "$root" -c . | podman import - "$BASE" >/dev/null
      rm -rf "$root"
    fi
  fi
  stage "base image ($BASE)" $(( $(date +%s) - t0 ))
fi

t0=$(date +%s)
"${ENGINE[@]}" --target smoke --build-arg SMOKE_BASE="$BASE" -t megacpp-smoke:latest -f Dockerfile . 2>&1 \
  | while IFS= read -r line; do
      printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$line"
    done
rc=${PIPESTATUS[0]}
stage "smoke image build (CPU build, tests, smoke train)" $(( $(date +%s) - t0 ))
stage "total" $(( $(date +%s) - t_all ))
exit "$rc"
