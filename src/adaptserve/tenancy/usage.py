"""Usage metering: requests and tokens per tenant × alias × template × hour (template
"" for plain OpenAI calls). Rows carry the tenant's uid as well as its name: a tenant
reads only its own incarnation's rows, never those of a deleted tenant of the same name.

Counts accumulate in memory on the event loop and are flushed to the database every
`interval` seconds in one transaction (and at shutdown), as increments, so several
gateway replicas can share one PostgreSQL without overwriting each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adaptserve.db import Database, UsageRow, utcnow

log = logging.getLogger(__name__)

Key = tuple[str, str, str, str, dt.datetime]  # tenant, tenant uid, alias, template, hour


class UsageMeter:
    def __init__(self, db: Database, interval_s: float = 1.0) -> None:
        self._db = db
        self._interval_s = interval_s
        self._pending: dict[Key, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._task: asyncio.Task[None] | None = None

    def record(
        self, tenant: str, uid: str, alias: str, prompt_tokens: int, completion_tokens: int, template: str = ""
    ) -> None:
        hour = utcnow().replace(minute=0, second=0, microsecond=0)
        counts = self._pending[(tenant, uid, alias, template, hour)]
        counts[0] += 1
        counts[1] += prompt_tokens
        counts[2] += completion_tokens

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except Exception:  # the database is down: keep the counts and try again
                log.exception("flushing usage failed; will retry")

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = dict(self._pending), defaultdict(lambda: [0, 0, 0])
        try:
            await asyncio.to_thread(self._write, batch)
        except BaseException:
            for key, counts in batch.items():  # put them back: no usage is lost
                pending = self._pending[key]
                for i in range(3):
                    pending[i] += counts[i]
            raise

    def _write(self, batch: dict[Key, list[int]]) -> None:
        with self._db.session() as s:
            for key, counts in batch.items():
                if _increment(s, key, counts):
                    continue
                try:
                    with s.begin_nested():
                        requests, prompt, completion = counts
                        s.add(
                            UsageRow(
                                tenant=key[0],
                                tenant_uid=key[1],
                                alias=key[2],
                                template=key[3],
                                hour=key[4],
                                requests=requests,
                                prompt_tokens=prompt,
                                completion_tokens=completion,
                            )
                        )
                except IntegrityError:  # another replica inserted the row first
                    _increment(s, key, counts)

    async def query(self, tenant: str | None, since: dt.datetime | None, uid: str | None = None) -> list[dict]:
        """Rows of `tenant` (every tenant of that name, for the admin), or of the one
        tenant `uid` (what a tenant reads of its own)."""
        await self.flush()
        return await asyncio.to_thread(self._read, tenant, since, uid)

    def _read(self, tenant: str | None, since: dt.datetime | None, uid: str | None) -> list[dict]:
        query = select(UsageRow).order_by(UsageRow.hour, UsageRow.tenant, UsageRow.alias, UsageRow.template)
        if tenant is not None:
            query = query.where(UsageRow.tenant == tenant)
        if uid is not None:
            query = query.where(UsageRow.tenant_uid == uid)
        if since is not None:
            query = query.where(UsageRow.hour >= since.replace(minute=0, second=0, microsecond=0))
        with self._db.session() as s:
            return [
                {
                    "tenant": r.tenant,
                    "model": r.alias,
                    "template": r.template or None,
                    "hour": r.hour.isoformat() + "Z",
                    "requests": r.requests,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                }
                for r in s.scalars(query)
            ]


def _increment(s: Session, key: Key, counts: list[int]) -> bool:
    """Add to an existing row in one UPDATE (safe with concurrent writers); False if none."""
    requests, prompt, completion = counts
    tenant, uid, alias, template, hour = key
    where = (
        UsageRow.tenant == tenant,
        UsageRow.tenant_uid == uid,
        UsageRow.alias == alias,
        UsageRow.template == template,
        UsageRow.hour == hour,
    )
    values = {
        "requests": UsageRow.requests + requests,
        "prompt_tokens": UsageRow.prompt_tokens + prompt,
        "completion_tokens": UsageRow.completion_tokens + completion,
    }
    result = s.execute(update(UsageRow).where(*where).values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]  # a CursorResult: UPDATE has a row count
