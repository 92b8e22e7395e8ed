#!/usr/bin/env bash
# Lints k8s/ and validates every overlay (and so every component) as rendered.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m yamllint -s -c .yamllint.yaml k8s/
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" > "$out/$name.yaml"
done
"$PY" scripts/validate_k8s.py "$out"/*.yaml
"$PY" scripts/check_k8s_semantics.py "$out"/*.yaml
