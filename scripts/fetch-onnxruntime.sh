#!/usr/bin/env bash
# Fetch ONNX Runtime's shared library from the official PyPI wheel (the only
# source reachable here) into .cache/onnxruntime/lib. Idempotent; verifies sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.31.1
SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
DEST=.cache/onnxruntime/lib
LIB=libonnxruntime.so.${VERSION}

if [[ -f "$DEST/$LIB" && -L "$DEST/libonnxruntime.so" ]]; then
  exit 0
fi

mkdir -p .cache/wheels "$DEST"
if ! ls .cache/wheels/onnxruntime-${VERSION}-*.whl >/dev/null 2>&1; then
  python3 -m pip download --quiet --no-cache-dir --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
    -d .cache/wheels "onnxruntime==${VERSION}"
fi
wheel=$(ls .cache/wheels/onnxruntime-${VERSION}-*.whl | head -n1)
echo "${SHA256}  ${wheel}" | sha256sum --check --quiet

python3 - "$wheel" "$DEST" "$LIB" <<'PY'
import sys, zipfile, os
wheel, dest, lib = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    data = z.read(f"onnxruntime/capi/{lib}")
tmp = os.path.join(dest, lib + ".tmp")
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, os.path.join(dest, lib))
PY
ln -sf "$LIB" "$DEST/libonnxruntime.so.1"
ln -sf "$LIB" "$DEST/libonnxruntime.so"
echo "ONNX Runtime ${VERSION} ready in ${DEST}"
