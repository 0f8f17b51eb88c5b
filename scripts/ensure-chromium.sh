#!/usr/bin/env bash
# The console's browser tests drive the system's Chromium (/usr/bin/chromium) through
# Playwright: `playwright install` cannot download browsers here, Debian's package can be
# installed. Run by `make test` (and so by CI) before pytest; a machine without it and
# without root fails here, in one line, rather than skipping the browser tests.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: $CHROMIUM is missing; install Debian's chromium package (apt-get install chromium)" >&2
  exit 1
fi
echo "ensure-chromium: installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
[ -x "$CHROMIUM" ] || { echo "ensure-chromium: chromium installed but $CHROMIUM is not there" >&2; exit 1; }
