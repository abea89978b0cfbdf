"""Secrets at rest and in logs. Named to run last: it searches every log the test run
wrote (the pytest log file with every in-process gateway's records at DEBUG, and the
integration server's gateway and vLLM logs) for the keys the run used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from adaptserve.tenancy.auth import hash_key
from tests.integration.conftest import ADMIN_KEY as INTEGRATION_ADMIN_KEY
from tests.integration.conftest import API_KEY as INTEGRATION_API_KEY
from tests.unit.conftest import ADMIN_KEY, API_KEY

GENERATED_KEY = re.compile(rb"sk-as-[A-Za-z0-9_-]{40,}")
USED_KEYS = [API_KEY, ADMIN_KEY, INTEGRATION_API_KEY, INTEGRATION_ADMIN_KEY]


def test_keys_are_stored_only_as_hashes(start_gateway):
    gw = start_gateway()
    assert gw.admin("POST", "/tenants", json={"name": "acme"}).status_code == 201
    key = gw.admin("POST", "/tenants/acme/keys").json()["key"]
    assert gw.client(api_key=key).models.list().data == []
    if gw.settings.database_url is None:  # SQLite: read the database files byte for byte
        stored = b"".join(p.read_bytes() for p in gw.settings.data_dir.glob("adaptserve.db*"))
        assert hash_key(key).encode() in stored
        for secret in (key, API_KEY, ADMIN_KEY):
            assert secret.encode() not in stored


def _run_logs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    logs = [Path(request.config.getini("log_file")).resolve()]
    logs += sorted(tmp_path_factory.getbasetemp().glob("**/*.log"))
    return [p for p in logs if p.is_file()]


def test_no_key_appears_in_any_log_of_the_run(request, tmp_path_factory):
    logs = _run_logs(request, tmp_path_factory)
    text = {path: path.read_bytes() for path in logs}
    assert sum(len(t) for t in text.values()) > 10_000  # the run did log: the search means something
    assert any(b"POST /v1/chat/completions" in t or b"/v1/chat/completions" in t for t in text.values())
    for path, content in text.items():
        for key in USED_KEYS:
            assert key.encode() not in content, f"{key} appears in {path}"
        found = GENERATED_KEY.search(content)
        assert found is None, f"a generated key appears in {path}: {found.group()[:12]}..."
