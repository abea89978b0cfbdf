#!/usr/bin/env bash
# Makes sure headless Chromium and its WebDriver are installed (Debian's `chromium` and
# `chromium-driver` packages), for the console's browser tests (tests/unit/test_console.py,
# tests/integration/test_console.py) and scripts/console_screenshots.py; then runs the
# command given, if any. Used by .ci/run. Without them the browser tests skip, saying why.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
