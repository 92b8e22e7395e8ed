#!/usr/bin/env bash
# The fleet-mode tests scrape three replicas with a real Prometheus (Debian's
# package). Installs it when missing and we may (root, as on CI); otherwise says how.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  # The package's post-install starts a service where systemd runs; none is needed here.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  exit 0
fi
echo "error: the tests need Debian's prometheus: sudo apt-get install prometheus" >&2
exit 1
