#!/usr/bin/env bash
# The report tests render pages in a real headless Chromium (Debian's package).
# Installs it when missing and we may (root, as on CI); otherwise says how.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  exit 0
fi
echo "error: the tests need Debian's chromium: sudo apt-get install chromium" >&2
exit 1
