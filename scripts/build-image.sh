#!/usr/bin/env bash
# Builds the switchyard image with podman from binaries built here, on a base
# assembled from Debian packages (no registry needed):
#   scripts/build-image.sh [--profile release|debug] [--tag NAME]
#   scripts/build-image.sh --python-base   # the tests' model-server base (Debian python3)
# Prints the image name. The base (localhost/switchyard-base:bookworm) is made
# once with mmdebstrap and reused. Podman runs with runc and cgroupfs, and no
# default ulimits (these machines refuse podman's), from scripts/containers.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
tag=""
python_base=false
while [[ $# -gt 0 ]]; do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --python-base) python_base=true; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
suffix=""
if [[ $profile == debug ]]; then suffix=-debug; fi
tag=${tag:-localhost/switchyard:$version$suffix}
base=localhost/switchyard-base:bookworm
for tool in podman mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing (scripts/ensure-podman.sh installs it)" >&2; exit 1; }
done
# A base image from Debian packages, made once: ensure_base NAME PACKAGES.
ensure_base() {
  if ! podman image exists "$1"; then
    local work
    work=$(mktemp -d)
    mmdebstrap --quiet --variant=essential --include="$2" bookworm "$work/base.tar" >&2
    podman import --quiet "$work/base.tar" "$1" >/dev/null
    rm -rf "$work"
  fi
}
if $python_base; then
  # For running a model server from a venv's site-packages (Python 3.11, as Debian's).
  ensure_base localhost/switchyard-python-base:bookworm ca-certificates,libstdc++6,python3
  echo localhost/switchyard-python-base:bookworm
  exit 0
fi
ensure_base "$base" ca-certificates,libstdc++6
if [[ $profile == release ]]; then
  cargo build --locked --release -p switchyard >&2
fi
scripts/fetch-onnxruntime.sh >/dev/null
context=target/image-$profile
rm -rf "$context"
mkdir -p "$context"
cp "target/$profile/switchyard" "$context/switchyard"
cp -L .cache/onnxruntime/lib/libonnxruntime.so "$context/libonnxruntime.so"
podman build --quiet --target prebuilt --build-arg RUNTIME_IMAGE="$base" \
  -f Containerfile -t "$tag" "$context" >/dev/null
echo "$tag"
