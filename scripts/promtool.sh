#!/usr/bin/env bash
# Prints the path of a promtool binary (Prometheus's rule checker and rule unit-test
# runner): the one on PATH if there is one, else the one from Debian's `prometheus`
# package, downloaded and unpacked once into .cache/prometheus/ (never installed, so no
# service starts). Used by tests/unit/test_deploy.py and, to fetch it up front, .ci/run.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi

case "$0" in */*) HERE=${0%/*} ;; *) HERE=. ;; esac
ROOT=$(cd "$HERE/.." && pwd)
CACHE="$ROOT/.cache/prometheus"
BIN="$CACHE/usr/bin/promtool"

if [ ! -x "$BIN" ]; then
    mkdir -p "$ROOT/.cache"
    WORK=$(mktemp -d)
    PARTIAL="$CACHE.partial.$$"
    trap 'rm -rf "$WORK" "$PARTIAL"' EXIT
    chmod 755 "$WORK"  # apt's unprivileged downloader writes here too
    # The package lists may be missing or stale on a fresh machine: update once and retry.
    if ! (cd "$WORK" && apt-get download -qq prometheus >/dev/null 2>&1); then
        apt-get update -qq >&2
        (cd "$WORK" && apt-get download -qq prometheus >&2)
    fi
    # Unpacked beside the cache, then renamed into place: a half-unpacked cache is never seen.
    dpkg -x "$WORK"/prometheus_*.deb "$PARTIAL"
    rm -rf "$CACHE"
    mv "$PARTIAL" "$CACHE"
fi

"$BIN" --version >/dev/null
echo "$BIN"
