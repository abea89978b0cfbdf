"""Records every authenticated admin mutation (POST, PUT, PATCH, DELETE under /admin)
that reaches the routes in the audit trail as its answer starts (so a client that reads
the trail after an answer finds it there), refused ones included: who (the admin
dependency names the actor: the operator or a tenant admin's key id), the route and the
path, the tenant concerned (its name and its never-reused uid), the status, the client
address, and what the route noted (before and after versions). Nothing of the request
body is kept, so no key or secret is either.

A request no key was accepted for (none, a wrong one, or one the failed-key throttle
turned away; unknown `/admin` paths ask for a key first, see `routes/admin.py`) is not
written: anyone can send those, as fast as the throttle lets them, and the table must
not grow with them. They are counted instead, by status, in
`adaptserve_admin_unauthenticated_total`; the throttle logs the addresses that reach it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptserve.metrics import Metrics
from adaptserve.tenancy.audit import AuditEntry, AuditLog

log = logging.getLogger(__name__)

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNAUTHENTICATED = "unauthenticated"


class AuditMiddleware:
    def __init__(self, app: ASGIApp, audit: AuditLog, metrics: Metrics) -> None:
        self.app, self.audit, self.metrics = app, audit, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATIONS or not scope["path"].startswith("/admin"):
            await self.app(scope, receive, send)
            return
        recorded = False

        async def recording_first(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True  # on record before the client sees the answer: it can read it back
                await self._record(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_first)
        finally:
            if not recorded:  # the route failed before it answered
                await self._record(scope, 500)

    async def _record(self, scope: Scope, status: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        actor = state.get("actor", UNAUTHENTICATED)
        if actor == UNAUTHENTICATED:
            self.metrics.admin_unauthenticated.labels(str(status)).inc()
            return
        route = scope.get("route")
        client = scope.get("client")
        tenant, uid = _concerned(state, scope.get("path_params") or {})
        entry = AuditEntry(
            actor=_text(actor, 160),
            action=_text(f"{scope['method']} {getattr(route, 'path', scope['path'])}", 160),
            target=_text(scope["path"], 512),
            status=status,
            address=client[0] if client else "unknown",
            tenant=_text(tenant, 64),
            tenant_uid=uid,
            detail=state.get("audit", {}),
        )
        try:
            await asyncio.to_thread(self.audit.record, entry)
        except Exception:  # the database is down: the mutation most likely failed with it
            log.exception("could not write the audit entry for %s %s (%s)", scope["method"], scope["path"], status)


def _text(value: str, limit: int) -> str:
    """A field as stored: a NUL (a decoded `%00` in a path) written back as `%00` and
    what UTF-8 cannot encode (bytes a path decoded to lone surrogates) as `\\udcxx`, since
    the database takes neither; then cut to the column's size."""
    return value.replace("\x00", "%00").encode("utf-8", "backslashreplace").decode()[:limit]


def _concerned(state: dict[str, Any], params: dict[str, Any]) -> tuple[str, str | None]:
    """The tenant an entry concerns (what a tenant admin's listing shows) and its uid: a
    tenant admin's own, whatever it aimed at, so no tenant reads what another one tried;
    the operator's target (its uid as the route noted it, e.g. before deleting the
    tenant; else None: the live tenant of that name's, looked up when written)."""
    if state.get("actor_tenant"):
        return str(state["actor_tenant"]), str(state.get("actor_uid") or "")
    tenant = str(params.get("tenant") or state.get("audit_tenant") or "")
    noted = state.get("audit_tenant_uid")
    return tenant, str(noted) if noted is not None else None
