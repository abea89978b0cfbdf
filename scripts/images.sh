#!/usr/bin/env bash
# Builds the container images with buildah and smoke-tests the gateway image, where no
# base image can be pulled (CI; .ci/run calls it through `make image`):
#   1. installs Debian's buildah and mmdebstrap if missing (apt-get, as scripts/chromium.sh);
#   2. makes Debian bookworm's root file system (python3 3.11, venv, ca-certificates) with
#      mmdebstrap from the host's apt sources, once, into .cache/images/rootfs.tar, and
#      imports it as the image adaptserve-ci-base (FROM scratch + ADD rootfs.tar);
#   3. builds deploy/images/gateway.Containerfile on it (and engine-cpu.Containerfile with
#      --engine), with pip reaching the package index through the host's CA bundle,
#      mounted read-only; layers are cached, so a second run rebuilds only what changed;
#   4. runs the fake engine (src/adaptserve/bench/fake_engine.py) on the host and the
#      gateway image's entrypoint in front of it (`buildah run`, host network), and checks
#      /ready, one chat completion with the API key and one admin call with the admin key;
#   5. prints each image's size. Any failure exits non-zero, saying which step failed.
# PYTHON (default .venv/bin/python) runs the fake engine; it needs the project's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=false
for arg in "$@"; do
    case "$arg" in
        --engine) engine=true ;;
        *) echo "usage: scripts/images.sh [--engine]" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-.venv/bin/python}
cache=.cache/images
base=localhost/adaptserve-ci-base:bookworm
gateway=localhost/adaptserve-gateway:ci
engine_image=localhost/adaptserve-cpu:ci
buildah=(buildah --storage-driver vfs)
start=$SECONDS

fail() {
    echo "scripts/images.sh: $*" >&2
    exit 1
}

work=$(mktemp -d)
engine_pid="" gateway_pid="" container=""
cleanup() {
    for pid in $gateway_pid $engine_pid; do
        kill -- "-$pid" 2>/dev/null || true
    done
    for pid in $gateway_pid $engine_pid; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$container" ]; then
        "${buildah[@]}" rm "$container" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() {
    echo "== [$((SECONDS - start))s] $*"
}

if ! command -v buildah >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    step "installing buildah and mmdebstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah mmdebstrap >/dev/null
fi

if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    mkdir -p "$cache"
    if [ ! -f "$cache/rootfs.tar" ]; then
        step "making Debian's root file system with mmdebstrap"
        # No mirror given: the host's apt sources are used, whatever mirror they name.
        sources=""
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources; do
            if [ -f "$f" ]; then
                sources=$f
                break
            fi
        done
        [ -n "$sources" ] || fail "no apt sources on this host for mmdebstrap"
        rm -rf "$cache/rootfs.tar.part"
        mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-venv,ca-certificates \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            bookworm "$cache/rootfs.tar.part" "$sources" || fail "mmdebstrap failed"
        mv "$cache/rootfs.tar.part" "$cache/rootfs.tar"
    fi
    step "importing it as $base"
    cp deploy/images/ci-base.Containerfile "$cache/Containerfile"
    "${buildah[@]}" bud --isolation chroot --quiet -t "$base" "$cache" >/dev/null || fail "importing the root file system failed"
fi

# pip in the build reaches the package index through the host's CA bundle (a TLS-inspecting
# proxy's CA is in it where there is one), mounted read-only.
# Docker's format keeps the gateway's HEALTHCHECK (OCI's has none).
build=(--isolation chroot --layers --format docker --build-arg "BASE=$base")
bundle=/etc/ssl/certs/ca-certificates.crt
if [ -f "$bundle" ]; then
    build+=(--volume /etc/ssl/certs:/etc/ssl/certs:ro --build-arg "PIP_CERT=$bundle")
fi

step "building $gateway"
t=$SECONDS
"${buildah[@]}" bud "${build[@]}" -f deploy/images/gateway.Containerfile -t "$gateway" . \
    || fail "building the gateway image failed"
echo "gateway image built in $((SECONDS - t))s"
check='import importlib.util, os
assert os.getuid() == 1000, os.getuid()
found = [m for m in ("torch", "vllm", "transformers", "peft") if importlib.util.find_spec(m)]
assert not found, found'
container=$("${buildah[@]}" from --pull-never "$gateway")
"${buildah[@]}" run --isolation chroot "$container" -- python3 -c "$check" \
    || fail "the gateway image runs as root or carries torch/vllm/transformers/peft"
"${buildah[@]}" rm "$container" >/dev/null
container=""
if $engine; then
    step "building $engine_image"
    # The CPU build of torch is not on the default index: pip's local wheel folder (as
    # scripts/lock.sh finds it), mounted read-only.
    links=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
    wheels=()
    for folder in $links; do
        if [ -d "$folder" ]; then
            wheels=(--volume "$folder:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
            break
        fi
    done
    # No layer cache here: vfs stores each cached layer as a full copy of the file system,
    # and the engine's is 4 GB (with --layers its build took 65 GB of disk). The previous
    # run's image goes first, or each run would leave 4 GB behind.
    "${buildah[@]}" rmi "$engine_image" >/dev/null 2>&1 || true
    t=$SECONDS
    "${buildah[@]}" bud "${build[@]}" --layers=false "${wheels[@]}" -f deploy/images/engine-cpu.Containerfile \
        -t "$engine_image" . || fail "building the engine image failed"
    echo "engine image built in $((SECONDS - t))s"
    container=$("${buildah[@]}" from --pull-never "$engine_image")
    "${buildah[@]}" run --isolation chroot "$container" -- \
        python3 -c 'import vllm, adaptserve.engine_plugin, adaptserve.upstream.vllm_main' \
        || fail "the engine image cannot import vllm and adaptserve's engine plugin"
    "${buildah[@]}" rm "$container" >/dev/null
    container=""
fi

step "smoke test: the gateway image in front of the fake engine"
[ -x "$PYTHON" ] || fail "no $PYTHON to run the fake engine (set PYTHON)"
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
engine_port=$(free_port)
gateway_port=$(free_port)
api_key="sk-images-smoke-$RANDOM$RANDOM"
admin_key="admin-images-smoke-$RANDOM$RANDOM"

PYTHONPATH=$PWD/src setsid "$PYTHON" -c "
import uvicorn
from adaptserve.bench.fake_engine import FakeState, create_fake_vllm
uvicorn.run(create_fake_vllm(FakeState()), host='127.0.0.1', port=$engine_port, log_level='warning')
" >"$work/engine.log" 2>&1 &
engine_pid=$!

# The image's own entrypoint, its user and its environment, plus the settings below.
container=$("${buildah[@]}" from --pull-never "$gateway")
mapfile -t entrypoint < <("${buildah[@]}" inspect --type image "$gateway" \
    | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["OCIv1"]["config"]["Entrypoint"]))')
setsid "${buildah[@]}" run --isolation chroot --network host \
    --env ADAPTSERVE_UPSTREAMS="http://127.0.0.1:$engine_port" \
    --env ADAPTSERVE_MODEL=tiny-base \
    --env ADAPTSERVE_HOST=127.0.0.1 \
    --env ADAPTSERVE_PORT="$gateway_port" \
    --env ADAPTSERVE_API_KEY="$api_key" \
    --env ADAPTSERVE_ADMIN_KEY="$admin_key" \
    "$container" -- "${entrypoint[@]}" >"$work/gateway.log" 2>&1 &
gateway_pid=$!

url="http://127.0.0.1:$gateway_port"
ready=""
for _ in $(seq 120); do
    if ready=$(curl -sf "$url/ready"); then
        break
    fi
    if ! kill -0 "$gateway_pid" 2>/dev/null; then
        cat "$work/gateway.log" >&2
        fail "the gateway container exited before /ready answered"
    fi
    sleep 1
done
[ -n "$ready" ] || { cat "$work/gateway.log" "$work/engine.log" >&2; fail "/ready did not answer 200 in 120s"; }
echo "/ready: $ready"

chat=$(curl -sS --fail-with-body "$url/v1/chat/completions" -H "Authorization: Bearer $api_key" \
    -H 'Content-Type: application/json' \
    -d '{"model": "tiny-base", "messages": [{"role": "user", "content": "hello from the image"}]}') \
    || { cat "$work/gateway.log" >&2; fail "the chat completion failed: $chat"; }
echo "chat: $chat"
python3 -c 'import json, sys
answer = json.loads(sys.argv[1])["choices"][0]["message"]["content"]
assert answer.endswith("echo: hello from the image"), answer' "$chat" \
    || fail "the chat completion is not the fake engine's echo"

tenants=$(curl -sS --fail-with-body "$url/admin/tenants" -H "Authorization: Bearer $admin_key") \
    || { cat "$work/gateway.log" >&2; fail "the admin call failed: $tenants"; }
echo "admin: $tenants"
python3 -c 'import json, sys
names = [t["name"] for t in json.loads(sys.argv[1])["data"]]
assert names == ["default"], names' "$tenants" || fail "GET /admin/tenants does not list the default tenant"
status=$(curl -s -o /dev/null -w '%{http_code}' "$url/admin/tenants" -H "Authorization: Bearer $api_key")
[ "$status" = 401 ] || [ "$status" = 403 ] || fail "the admin API took the tenant key (status $status)"
echo "smoke test passed"

step "image sizes"
"${buildah[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E 'adaptserve-(gateway|cpu|ci-base)'
echo "scripts/images.sh: done in $((SECONDS - start))s"
