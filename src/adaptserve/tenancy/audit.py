"""The audit trail: every admin mutation and every attempt at one, kept in the
database. Entries are written by the gateway (`server/audit.py` records each request)
and only ever read through the API: no route changes or deletes one."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from adaptserve.db import AuditRow, Database, utcnow

MAX_ENTRIES = 1000  # one listing at most


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    target: str
    status: int
    address: str
    tenant: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, entry: AuditEntry) -> None:
        with self._db.session() as s:
            s.add(AuditRow(at=utcnow(), **vars(entry)))

    def query(
        self,
        *,
        tenant: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; `action` matches a prefix (e.g. "DELETE" or "POST /admin/adapters")."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(min(limit, MAX_ENTRIES))
        if tenant is not None:
            query = query.where(AuditRow.tenant == tenant)
        if actor is not None:
            query = query.where(AuditRow.actor == actor)
        if action is not None:
            query = query.where(AuditRow.action.startswith(action, autoescape=True))
        if since is not None:
            query = query.where(AuditRow.at >= _utc(since))
        with self._db.session() as s:
            return [_entry(row) for row in s.scalars(query)]


def _utc(moment: dt.datetime) -> dt.datetime:
    """Naive UTC, as stored."""
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _entry(row: AuditRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat() + "Z",
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "tenant": row.tenant or None,
        "status": row.status,
        "address": row.address,
        "detail": row.detail,
    }
