#!/usr/bin/env bash
# Fetch libtorch 2.11.0 (what tch 0.24.0 needs) from PyPI, the only source
# reachable here, into .cache/libtorch. The lean set — the torch wheel without
# its dependencies plus the CUDA runtime and CUPTI wheels its libraries name —
# builds the `torch` feature and runs it on CPU (the CUDA runtime headers and
# their crt/ part let the CUDA stream shim compile); CUDA machines use their own
# torch 2.11 install at run time (see README). Idempotent; verifies sha256.
# The wheels (~540 MiB) are deleted once unpacked: CI machines have little disk.
# Prints the LIBTORCH folder on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.cache/libtorch
WHEELS=.cache/libtorch-wheels
# name==version sha256 (manylinux x86_64, CPython 3.11)
PINS=(
  "torch==2.11.0 7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a"
  "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-cupti==13.0.85 4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8"
  "nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
)
# Changes with the pins, so a cache unpacked from other wheels is redone.
MARKER="$DEST/.complete-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-12)"

if [[ -f "$MARKER" ]]; then
  echo "$(pwd)/$DEST/torch"
  exit 0
fi

mkdir -p "$WHEELS"
wheels=()
for pin in "${PINS[@]}"; do
  read -r spec sha <<<"$pin"
  name=${spec%%==*}
  version=${spec##*==}
  pattern="$WHEELS/${name//-/_}-${version}-*.whl"
  if ! compgen -G "$pattern" >/dev/null; then
    # pip matches only the platform tags it is given: list every one these wheels use.
    python3 -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --python-version 3.11 --implementation cp -d "$WHEELS" "$spec"
  fi
  wheel=$(compgen -G "$pattern" | head -n1)
  echo "${sha}  ${wheel}" | sha256sum --check --quiet
  wheels+=("$wheel")
done

rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
python3 - "$DEST.tmp" "${wheels[@]}" <<'PY'
import os, sys, zipfile
dest, *wheels = sys.argv[1:]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, dest)
            # zipfile drops permission bits; keep executables and libraries usable.
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
PY
version=$(sed -n "s/^__version__ = '\(.*\)'$/\1/p" "$DEST.tmp/torch/version.py")
if [[ "$version" != 2.11.0* ]]; then
  echo "unexpected torch version '$version' in the wheel (tch 0.24.0 needs 2.11.0)" >&2
  exit 1
fi
# tch's build script checks the version against this file, which libtorch
# archives have and the wheel lacks.
printf '%s' "$version" >"$DEST.tmp/torch/build-version"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
touch "$MARKER"
rm -rf "$WHEELS"
echo "libtorch ${version} ready in ${DEST}/torch" >&2
echo "$(pwd)/$DEST/torch"
