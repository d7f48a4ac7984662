#!/usr/bin/env bash
# Install what the tests need beyond Python packages: Debian's chromium for browser tests.
# PostgreSQL 15 server binaries (initdb, pg_ctl) are expected on the machine; the tests
# start their own cluster. Never downloads a browser build: Playwright drives /usr/bin/chromium.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped (fail under CI=true)"
else
  echo "note: chromium not found; install Debian's 'chromium' package to run the browser tests"
fi
