#!/usr/bin/env bash
# proto <- runtimes <- server: runtimes and proto never pull in a web server
# (axum, tower-http) or tonic's server side; the remote runtime is a client only.
# Inside server/src, scripts/check-layers.py checks the layers' rules.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in switchyard-runtimes switchyard-proto; do
  if [[ -n "$(cargo tree --locked -e normal -p "$crate" -i axum 2>/dev/null)" ]]; then
    echo "error: $crate depends on axum" >&2
    status=1
  fi
  # reqwest (the remote runtime's HTTP client) uses tower-http's client-side
  # middleware; a direct dependency would be server-side use.
  if cargo tree --locked -e normal -p "$crate" --depth 1 2>/dev/null | grep -q ' tower-http '; then
    echo "error: $crate depends on tower-http directly" >&2
    status=1
  fi
  if cargo tree --locked -e features -p "$crate" -i tonic 2>/dev/null | grep -qE 'tonic feature "(server|router)"'; then
    echo "error: $crate enables tonic's server side" >&2
    status=1
  fi
done
# Inside the server: layers as folders, imports one way, no folder cycle.
python3 scripts/check-layers.py || status=1
exit $status
