#!/usr/bin/env bash
# proto <- runtimes <- server: runtimes and proto never depend on a web server.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in switchyard-runtimes switchyard-proto; do
  for banned in axum tower-http hyper-util; do
    if [[ -n "$(cargo tree --locked -e normal -p "$crate" -i "$banned" 2>/dev/null)" ]]; then
      echo "error: $crate depends on $banned" >&2
      status=1
    fi
  done
done
exit $status
