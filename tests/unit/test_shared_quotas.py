"""Quotas shared by gateway replicas: the other replicas' counts add to this one's at
admission, and two gateways on one PostgreSQL enforce a tenant's limits together; and
replicas that start together on one database migrate it one at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

from adaptserve.db import Database, QuotaShareRow
from adaptserve.errors import InvalidRequestError, QuotaExceededError
from adaptserve.tenancy.quotas import Limits, QuotaGate, Share
from tests.helpers import wait_for


def test_the_other_replicas_counts_are_added_at_admission() -> None:
    gate = QuotaGate()
    gate.set_others({"t": Share(requests=4, tokens=0, active=0)})
    gate.admit("t", Limits(requests_per_minute=5))
    with pytest.raises(QuotaExceededError) as refused:
        gate.admit("t", Limits(requests_per_minute=5))
    assert refused.value.limit == "requests_per_minute"
    gate.set_others({"u": Share(requests=9)})  # nothing here yet: the wait is a second, not an error
    with pytest.raises(QuotaExceededError) as refused:
        gate.admit("u", Limits(requests_per_minute=9))
    assert refused.value.headers == {"Retry-After": "1"}

    gate.set_others({"c": Share(active=2)})
    with pytest.raises(QuotaExceededError):
        gate.admit("c", Limits(max_concurrent=2))
    gate.set_others({"k": Share(tokens=90)})
    gate.admit("k", Limits(tokens_per_minute=100), reserve=10)
    with pytest.raises(QuotaExceededError):
        gate.admit("k", Limits(tokens_per_minute=100), reserve=1)
    with pytest.raises(InvalidRequestError):  # alone over the limit: a 400 whatever the others do
        gate.admit("k", Limits(tokens_per_minute=100), reserve=101)


def test_a_stale_view_of_the_others_is_not_trusted(monkeypatch) -> None:
    """The database unreachable for long: a replica goes by its own counts."""
    gate = QuotaGate()
    gate.set_others({"t": Share(requests=5)})
    with pytest.raises(QuotaExceededError):
        gate.admit("t", Limits(requests_per_minute=5))
    later = time.monotonic() + 11
    monkeypatch.setattr(time, "monotonic", lambda: later)
    gate.admit("t", Limits(requests_per_minute=5))


def test_a_replica_reports_its_live_counts() -> None:
    gate = QuotaGate()
    gate.admit("t", Limits(), reserve=30)
    gate.admit("t", Limits(), reserve=20)
    gate.release("t", 20, 7)
    assert gate.shares() == {"t": Share(requests=2, tokens=30 + 7, active=1)}


def test_two_gateways_on_postgresql_enforce_one_quota(start_gateway, database_url) -> None:
    if database_url is None:
        pytest.skip("SQLite: one gateway per database, no sharing")
    one = start_gateway(quota_sync_interval_s=0.1)
    two = start_gateway(quota_sync_interval_s=0.1, data_dir=one.settings.data_dir.parent / "second")
    one.admin("POST", "/tenants", json={"name": "shared"})
    one.admin("PUT", "/tenants/shared/models/chat", json={"base": True})
    assert one.admin("PUT", "/tenants/shared/quotas", json={"requests_per_minute": 6}).status_code == 200
    key = one.admin("POST", "/tenants/shared/keys").json()["key"]
    body = {"model": "chat", "messages": [{"role": "user", "content": "q"}]}
    db = Database(database_url)
    answers = []
    for i in range(12):
        answers.append((one, two)[i % 2].post("/v1/chat/completions", body, key=key).status_code)
        _until_synced(db, replicas=min(i + 1, 2))
    db.dispose()
    assert answers.count(200) == 6 and set(answers[6:]) == {429}, answers  # each alone would admit 6


def _until_synced(db: Database, replicas: int) -> None:
    """Until each replica that counts the tenant has written its counts, then read the
    others' (their rows stamped after all were written), then applied what it read (a
    third stamp): what a fixed sleep assumed, however slow a loaded machine's syncs are."""
    for _ in range(3):
        since = time.time()  # the replicas stamp their rows with time.time() too
        wait_for(lambda s=since: _stamped_after(db, s, replicas), 30, "a replica stopped syncing", every_s=0.02)


def _stamped_after(db: Database, since: float, replicas: int) -> bool:
    with db.session() as session:
        rows = session.execute(select(QuotaShareRow.updated_at).where(QuotaShareRow.requests > 0)).all()
    return len(rows) == replicas and all(at > since for (at,) in rows)


def test_replicas_starting_together_migrate_one_at_a_time(database_url, tmp_path) -> None:
    """Two replicas migrate a fresh database at once: both succeed and the schema is at
    head. On PostgreSQL the advisory lock makes the second wait (without it the two
    create the same tables and block or fail); on SQLite `BEGIN IMMEDIATE` does (without
    it one fails: "table alembic_version already exists"), and turning the new file to WAL is
    retried (SQLite answers that conflict at once, without its busy timeout)."""
    from alembic.script import ScriptDirectory

    from adaptserve import db as db_module

    replicas = [Database.for_data_dir(database_url, tmp_path) for _ in range(2)]
    start, failures = threading.Barrier(len(replicas)), []

    def migrate(db: Database) -> None:
        start.wait()
        try:
            db.migrate()
        except Exception as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=migrate, args=(db,), daemon=True) for db in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)  # a migration of an empty database takes about a second
    assert not any(t.is_alive() for t in threads), "the replicas deadlocked"
    assert failures == []
    scripts = ScriptDirectory(str(Path(db_module.__file__).parent / "migrations"))
    with replicas[0].engine.connect() as connection:
        versions = [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
    assert versions == [scripts.get_current_head()]
    for db in replicas:
        db.dispose()
