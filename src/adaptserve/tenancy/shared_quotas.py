"""Quotas shared by gateway replicas on one PostgreSQL database.

Each replica counts its own traffic (`QuotaGate`) and, about once a second, writes its
live counts per tenant in one upsert (`quota_shares`, a row per tenant and replica)
and reads the sum of the other replicas' rows into the gate (`QuotaGate.set_others`). Admission adds
the others' counts to its own, so a tenant's limits hold across replicas. What one
replica cannot see is what the others admitted since their last sync: the overshoot is
at most about one sync interval of each other replica's traffic (plus the sync's own
latency). A replica that stops syncing (gone, or cut off from the database) drops out
of the others' sums after `STALE_S` (by the writers' clocks: replicas' clocks are
assumed within a few seconds, as NTP keeps them), and one that cannot read the others
for that long goes by its own counts alone; a replica that stops cleanly removes its
rows. Only tenants with activity (and, once, those that just went idle) are written.
SQLite deployments (one gateway) do not sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert

from adaptserve.db import Database, QuotaShareRow
from adaptserve.tenancy.quotas import QuotaGate, Share

log = logging.getLogger(__name__)

STALE_S = 10.0  # a replica's row older than this is not counted
FORGET_S = 3600.0  # rows older than this are deleted


class QuotaSync:
    def __init__(self, db: Database, gate: QuotaGate, interval_s: float) -> None:
        self._db, self._gate, self._interval_s = db, gate, interval_s
        self.replica = secrets.token_hex(8)
        self._task: asyncio.Task[None] | None = None
        self._sent: set[str] = set()  # tenants last written with activity: written once more at zero

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="quota sync")

    async def stop(self) -> None:
        """Stop syncing and take this replica's counts out (a rolling restart does not
        leave its in-flight counts holding the others back for STALE_S)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.to_thread(self._withdraw)
        except Exception:
            log.warning("could not remove this replica's quota counts; they expire in %.0f s", STALE_S)

    def _withdraw(self) -> None:
        with self._db.session() as session:
            session.execute(delete(QuotaShareRow).where(QuotaShareRow.replica == self.replica))

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # the database is down: keep the last view and try again
                log.exception("syncing quotas with the other gateway replicas failed; will retry")
            await asyncio.sleep(self._interval_s)

    async def sync(self) -> None:
        live = {t: s for t, s in self._gate.shares().items() if s != Share() or t in self._sent}
        self._gate.set_others(await asyncio.to_thread(self._exchange, live, time.time()))
        self._sent = {t for t, s in live.items() if s != Share()}

    def _exchange(self, mine: dict[str, Share], now: float) -> dict[str, Share]:
        """Write this replica's counts, read the others' sums: one transaction."""
        with self._db.session() as session:
            if mine:
                rows = [
                    {"tenant_uid": t, "replica": self.replica, **vars(s), "updated_at": now} for t, s in mine.items()
                ]
                upsert = insert(QuotaShareRow).values(rows)
                columns = {c: upsert.excluded[c] for c in ("requests", "tokens", "active", "updated_at")}
                session.execute(upsert.on_conflict_do_update(index_elements=["tenant_uid", "replica"], set_=columns))
            session.execute(delete(QuotaShareRow).where(QuotaShareRow.updated_at < now - FORGET_S))
            found = session.execute(
                select(
                    QuotaShareRow.tenant_uid,
                    func.sum(QuotaShareRow.requests),
                    func.sum(QuotaShareRow.tokens),
                    func.sum(QuotaShareRow.active),
                )
                .where(QuotaShareRow.replica != self.replica, QuotaShareRow.updated_at > now - STALE_S)
                .group_by(QuotaShareRow.tenant_uid)
            ).all()
        return {uid: Share(int(r), int(t), int(a)) for uid, r, t, a in found}
