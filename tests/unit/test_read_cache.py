"""The gateway's cache of per-request database reads (`read_cache.py`): a change made
through a gateway takes effect on its very next request, however long the cache keeps
reads; another replica sharing the database sees it within `read_cache_ttl_s`; and the
cache itself (a read that raced a write is not kept, writes elsewhere keep it, it is
bounded, a hit takes no thread hop)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from adaptserve.db import ApiKeyRow, Database, TenantRow, UsageRow
from adaptserve.read_cache import ReadCache
from tests.helpers import CONTACT, new_tenant, run_template

Q = {"messages": [{"role": "user", "content": "hi"}]}
FOREVER = 3600.0  # a cache that never expires during a test: only invalidation can refresh it


def chat(gw, key: str, model: str = "support") -> int:
    return gw.post("/v1/chat/completions", Q | {"model": model}, key=key).status_code


def test_a_revoked_key_or_deleted_tenant_is_refused_on_the_very_next_request(start_gateway):
    gw = start_gateway(read_cache_ttl_s=FOREVER)
    new_tenant(gw, "acme", {"base": True})
    first, second = (gw.admin("POST", "/tenants/acme/keys").json() for _ in range(2))
    assert chat(gw, first["key"]) == chat(gw, first["key"]) == 200  # the second from the cache
    assert gw.admin("DELETE", f"/tenants/acme/keys/{first['id']}").status_code == 204
    assert chat(gw, first["key"]) == 401
    assert chat(gw, second["key"]) == 200
    assert gw.admin("DELETE", "/tenants/acme").status_code == 204
    assert chat(gw, second["key"]) == 401


def test_a_quota_or_pii_change_applies_to_the_very_next_request(start_gateway, fake):
    gw = start_gateway(read_cache_ttl_s=FOREVER)
    new_tenant(gw, "acme", {"base": True})
    key = gw.admin("POST", "/tenants/acme/keys").json()["key"]
    assert chat(gw, key) == 200
    assert gw.admin("PUT", "/tenants/acme/quotas", json={"requests_per_minute": 1}).status_code == 200
    assert chat(gw, key) == 429  # one request in this minute already
    assert gw.admin("PUT", "/tenants/acme/quotas", json={"requests_per_minute": 100}).status_code == 200
    body = {"messages": [{"role": "user", "content": "write to ada@example.com"}], "model": "support"}
    assert gw.post("/v1/chat/completions", body, key=key).status_code == 200
    assert "ada@example.com" in str(fake.requests[-1]["messages"])
    assert gw.admin("PUT", "/tenants/acme/pii", json={"mode": "mask"}).status_code == 200
    assert gw.post("/v1/chat/completions", body, key=key).status_code == 200
    assert "ada@example.com" not in str(fake.requests[-1]["messages"])


def test_a_repointed_alias_answers_from_its_new_target_on_the_next_request(start_gateway, adapters, fake):
    gw = start_gateway(adapters=adapters, read_cache_ttl_s=FOREVER)
    key = gw.settings.api_key.get_secret_value()
    assert gw.admin("PUT", "/tenants/default/models/m", json={"adapter": "alpha"}).status_code == 200
    assert chat(gw, key, "m") == chat(gw, key, "m") == 200
    assert fake.requests[-1]["model"].startswith("alpha--")
    assert gw.admin("PUT", "/tenants/default/models/m", json={"adapter": "beta"}).status_code == 200
    assert chat(gw, key, "m") == 200
    assert fake.requests[-1]["model"].startswith("beta--")
    assert gw.admin("DELETE", "/tenants/default/models/m").status_code == 204
    assert chat(gw, key, "m") == 404


def test_a_changed_or_deleted_template_applies_to_the_very_next_call(start_gateway, fake):
    gw = start_gateway(read_cache_ttl_s=FOREVER)
    fake.json_reply = {"email": "kim@example.com"}

    def call() -> httpx.Response:
        return run_template(gw, "contact", {"inputs": {"message": "Kim, kim@example.com"}})

    assert gw.admin("PUT", "/templates/contact", content=json.dumps(CONTACT)).status_code == 201
    assert call().json()["version"] == call().json()["version"] == 1
    changed = CONTACT | {"instruction": "Extract the e-mail address."}
    assert gw.admin("PUT", "/templates/contact", content=json.dumps(changed)).status_code == 201
    assert call().json()["version"] == 2
    assert "e-mail address" in str(fake.requests[-1]["messages"])
    assert gw.admin("DELETE", "/templates/contact").status_code == 204
    assert call().status_code == 404


def test_another_replica_refuses_a_revoked_key_within_the_ttl(start_gateway, database_url):
    if database_url is None:
        pytest.skip("SQLite: one gateway per database")
    ttl = 1.0
    one = start_gateway(read_cache_ttl_s=ttl)
    two = start_gateway(read_cache_ttl_s=ttl, data_dir=one.settings.data_dir.parent / "second")
    new_tenant(one, "acme", {"base": True})
    created = one.admin("POST", "/tenants/acme/keys").json()
    assert chat(two, created["key"]) == 200  # now in the second replica's cache
    cached = time.monotonic()  # the entry was read before this: it expires by cached + ttl
    assert one.admin("DELETE", f"/tenants/acme/keys/{created['id']}").status_code == 204
    assert chat(one, created["key"]) == 401  # the replica that revoked it: at once
    # Judged by when each request was sent, not by how long it took, so a loaded machine's
    # slow requests cannot fail it; a cache that outlives its TTL still fails at once.
    while True:
        sent = time.monotonic()
        if (status := chat(two, created["key"])) != 200:
            break
        assert sent < cached + ttl, "the other replica still serves a revoked key past its TTL"
        time.sleep(0.05)
    assert status == 401  # refused, not failing some other way


@pytest.fixture
def db(database_url, tmp_path: Path) -> Database:
    database = Database.for_data_dir(database_url, tmp_path)
    database.migrate()
    return database


def counting(value: object) -> tuple[list[int], object]:
    calls: list[int] = []

    def load() -> object:
        calls.append(1)
        return value

    return calls, load


def test_a_read_that_raced_a_write_is_not_kept(db):
    cache = ReadCache.over(db, FOREVER)

    def racing_read() -> str:
        value = "read before the write"
        with db.session() as s:  # another request's write commits while this read runs
            s.add(TenantRow(name="raced"))
        return value

    assert cache.get("k", racing_read) == "read before the write"
    calls, load = counting("fresh")
    assert cache.get("k", load) == "fresh" and cache.get("k", load) == "fresh"
    assert len(calls) == 1  # read again once (the raced read was not kept), then cached


def test_only_writes_to_the_read_tables_empty_the_cache(db):
    cache = ReadCache.over(db, FOREVER)
    calls, load = counting("v")
    cache.get("k", load)
    with db.session() as s:  # metering: written every second, never read per request
        s.add(UsageRow(tenant="t", tenant_uid="u", alias="m", hour=dt.datetime(2026, 1, 1)))
    cache.get("k", load)
    assert len(calls) == 1
    with db.session() as s:
        s.add(TenantRow(name="t"))
    cache.get("k", load)
    assert len(calls) == 2
    with db.session() as s:  # a bulk statement, no row loaded
        s.execute(delete(ApiKeyRow).where(ApiKeyRow.tenant == "nobody"))
    cache.get("k", load)
    assert len(calls) == 3
    with pytest.raises(ValueError), db.session() as s:  # rolled back: nothing changed
        s.add(TenantRow(name="u"))
        s.flush()
        raise ValueError
    cache.get("k", load)
    assert len(calls) == 3
    with db.session() as s:  # a savepoint rolled back inside: the transaction's own write still commits
        s.add(TenantRow(name="v"))
        s.flush()
        with contextlib.suppress(IntegrityError), s.begin_nested():
            s.add(TenantRow(name="t"))  # exists: the savepoint fails
            s.flush()
    cache.get("k", load)
    assert len(calls) == 4


def test_the_cache_expires_is_bounded_and_can_be_off():
    now = [100.0]
    cache = ReadCache(ttl_s=2.0, max_entries=2, clock=lambda: now[0])
    calls, load = counting("v")
    cache.get("a", load)
    now[0] += 1.9
    cache.get("a", load)
    assert len(calls) == 1
    now[0] += 0.2
    cache.get("a", load)
    assert len(calls) == 2  # expired
    cache.get("b", load), cache.get("c", load)  # "a", least recently used, is dropped
    cache.get("c", load), cache.get("b", load)
    assert len(calls) == 4
    cache.get("a", load)
    assert len(calls) == 5
    off = ReadCache(ttl_s=0)
    off.get("a", load), off.get("a", load)
    assert len(calls) == 7


def test_a_hit_runs_on_the_event_loop_and_a_miss_in_a_worker_thread():
    cache = ReadCache(ttl_s=FOREVER)
    threads: list[str] = []

    def read(key: str) -> str:
        value = cache.get(key, lambda: threading.current_thread().name)
        threads.append(threading.current_thread().name)
        return value

    async def twice() -> None:
        loop_thread = threading.current_thread().name
        loaded_in = await cache.in_loop_or_thread(read, "k")
        assert loaded_in != loop_thread  # the miss: the database read left the loop
        assert await cache.in_loop_or_thread(read, "k") == loaded_in
        assert threads == [loaded_in, loop_thread]  # the hit: no hop

    asyncio.run(twice())


def test_a_name_no_alias_can_have_is_neither_read_nor_kept(db):
    """A client's `model` may be megabytes long: a 404 for it must not pin it in memory."""
    from adaptserve.tenancy.tenants import TenantRegistry

    cache = ReadCache.over(db, FOREVER)
    keys: list[object] = []
    get = cache.get
    cache.get = lambda key, load: keys.append(key) or get(key, load)  # type: ignore[method-assign]
    tenants = TenantRegistry(db, None, cache)
    tenants.create("acme")
    assert tenants.alias("acme", "x" * 100_000) is None and tenants.alias("acme", "a--b") is None
    assert keys == []
    assert tenants.alias("acme", "chat") is None and keys == [("alias", "acme", "chat")]
