#!/usr/bin/env bash
# The image tests build and run the container image with Debian's podman
# (runc, cgroupfs) and assemble its base with mmdebstrap. Installs them when
# missing and we may (root, as on CI); otherwise says how.
set -euo pipefail
if command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc mmdebstrap uidmap >/dev/null
  exit 0
fi
echo "error: the image tests need podman, runc and mmdebstrap: sudo apt-get install podman runc mmdebstrap" >&2
exit 1
