#!/usr/bin/env bash
# Runs the client's tests (tests/unit/test_client.py) against the oldest `openai` and `httpx`
# that clients/python/pyproject.toml declares, then the newest ones their ranges allow, each in a
# throwaway venv layered over the project's (.venv): the venv sees every package of the
# project's, and pip installs into it only that `openai` and whatever that version needs
# in other versions. What passes here is what the declared range promises.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
declared() { grep -o "\"$1[>=<][^\"]*\"" clients/python/pyproject.toml | tr -d '"'; }
lowest() {
    local bound
    bound=$(declared "$1" | grep -o '>=[0-9.]*' | cut -c3-)
    [ -n "$bound" ] || { echo "no lower bound for $1 in clients/python/pyproject.toml" >&2; exit 2; }
    echo "$1==$bound"
}
oldest="$(lowest openai) $(lowest httpx)"
newest="$(declared openai) $(declared httpx)"
base_site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
root=$(mktemp -d /tmp/adaptserve-compat.XXXXXX)
trap 'rm -rf "$root"' EXIT
for want in "$oldest" "$newest"; do
    venv="$root/venv"
    rm -rf "$venv"
    "$VENV/bin/python" -m venv "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # addsitedir (not a bare path) so the project's editable installs, themselves .pth files, load too.
    echo "import site; site.addsitedir('$base_site')" > "$site/adaptserve_base.pth"
    # shellcheck disable=SC2086  # two requirements, split on purpose
    "$venv/bin/pip" install -q --upgrade $want
    got=$("$venv/bin/python" -c 'import openai, httpx; print(f"openai {openai.__version__}, httpx {httpx.__version__}")')
    echo "== $want: $got"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit/test_client.py
done
