"""The audit trail: every authenticated admin mutation and every authenticated attempt
at one, kept in the database. Entries are written by the gateway (`server/audit.py`
records each request; keyless and bad-key attempts are only counted there) and only
ever read through the API: no route changes or deletes one.

An entry is tied to the tenant it concerns by that tenant's never-reused uid as well
as its name: a tenant admin reads the entries of its own uid only, so a tenant created
again under a deleted one's name reads none of the old one's; and it reads client
addresses only of its own keys' requests (the operator's are the operator's)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adaptserve.db import AuditRow, Database, TenantRow, utcnow
from adaptserve.tenancy.auth import Actor

MAX_ENTRIES = 1000  # one listing at most


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    target: str
    status: int
    address: str
    tenant: str = ""
    tenant_uid: str | None = None  # None: that of the tenant named `tenant` now (if any)
    detail: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, entry: AuditEntry) -> None:
        with self._db.session() as s:
            uid = entry.tenant_uid if entry.tenant_uid is not None else _uid_of(s, entry.tenant)
            s.add(AuditRow(at=utcnow(), **(vars(entry) | {"tenant_uid": uid})))

    def query(
        self,
        viewer: Actor,
        *,
        tenant: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; `action` matches a prefix (e.g. "DELETE" or "POST /admin/adapters").
        The operator reads everything (`tenant` by name: every tenant of that name); a
        tenant admin only what concerns its own tenant, this incarnation of it."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(min(limit, MAX_ENTRIES))
        if viewer.tenant is not None:
            query = query.where(AuditRow.tenant_uid == viewer.uid, AuditRow.tenant_uid != "")
        elif tenant is not None:
            query = query.where(AuditRow.tenant == tenant)
        if actor is not None:
            query = query.where(AuditRow.actor == actor)
        if action is not None:
            query = query.where(AuditRow.action.startswith(action, autoescape=True))
        if since is not None:
            query = query.where(AuditRow.at >= _utc(since))
        with self._db.session() as s:
            rows = list(s.scalars(query))
        if viewer.tenant is None:
            return [_entry(row) | {"tenant_uid": row.tenant_uid or None} for row in rows]
        return [_tenant_view(row, viewer.tenant) for row in rows]


def _uid_of(s: Session, tenant: str) -> str:
    if not tenant:
        return ""
    return s.scalar(select(TenantRow.uid).where(TenantRow.name == tenant)) or ""


def _utc(moment: dt.datetime) -> dt.datetime:
    """Naive UTC, as stored."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


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


def _tenant_view(row: AuditRow, tenant: str) -> dict[str, Any]:
    """What a tenant admin reads of an entry: the client address only where one of its
    own keys made the request (an operator's address is the operator's)."""
    own = row.actor.startswith(f"{tenant}/")
    return _entry(row) | {"address": row.address if own else None}
