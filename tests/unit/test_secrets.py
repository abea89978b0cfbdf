"""Secrets at rest: keys are stored only as hashes. (Secrets in logs are checked once
the whole run is over, by the session fixture in `tests/conftest.py`; the search it
uses is tested here.)"""

from __future__ import annotations

from adaptserve.tenancy.auth import hash_key
from tests.helpers import ADMIN_KEY, API_KEY, leaked_keys


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


def test_the_log_search_finds_a_configured_or_generated_key(tmp_path):
    # .txt, not .log: the run's own search (tests/conftest.py) would find these keys
    clean, leaky, generated = (tmp_path / f"{name}.txt" for name in ("clean", "leaky", "generated"))
    clean.write_text(f"POST /v1/chat/completions 200 key={hash_key(API_KEY)}\n")
    leaky.write_text(f"Authorization: Bearer {ADMIN_KEY}\n")
    generated.write_text("created key sk-as-" + "x" * 43 + "\n")
    assert leaked_keys([clean], [API_KEY, ADMIN_KEY]) == []
    found = leaked_keys([clean, leaky, generated], [API_KEY, ADMIN_KEY])
    assert len(found) == 2 and str(leaky) in found[0] and "generated" in found[1]
