"""Records every admin mutation (POST, PUT, PATCH, DELETE under /admin) that reaches the
routes in the audit trail as its answer starts (so a client that reads the trail after
an answer finds it there), refused ones included (not those the
failed-key throttle turns away): who (the admin dependency names
the actor: the operator or a tenant admin's key id; a request it refused is
"unauthenticated"), the route and the path, the
tenant concerned, the status, the client address, and what the route noted (before and
after versions). Nothing of the request body is kept, so no key or secret is either."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptserve.tenancy.audit import AuditEntry, AuditLog

log = logging.getLogger(__name__)

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNAUTHENTICATED = "unauthenticated"


class AuditMiddleware:
    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app, self.audit = app, audit

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
        if actor == UNAUTHENTICATED and status == 429:
            return  # refused by the failed-key throttle: its 401s (30 a minute) are on record
        route = scope.get("route")
        client = scope.get("client")
        entry = AuditEntry(
            actor=actor[:160],
            action=f"{scope['method']} {getattr(route, 'path', scope['path'])}"[:160],
            target=scope["path"][:512],
            status=status,
            address=client[0] if client else "unknown",
            tenant=_concerned(state, actor, scope.get("path_params") or {})[:64],
            detail=state.get("audit", {}),
        )
        try:
            await asyncio.to_thread(self.audit.record, entry)
        except Exception:  # the database is down: the mutation most likely failed with it
            log.exception("could not write the audit entry for %s %s (%s)", scope["method"], scope["path"], status)


def _concerned(state: dict[str, Any], actor: str, params: dict[str, Any]) -> str:
    """The tenant an entry concerns (what a tenant admin's listing shows): a tenant
    admin's own, whatever it aimed at, so no tenant reads what another one tried; the
    operator's target; none for a refused key."""
    if actor == UNAUTHENTICATED:
        return ""
    return str(state.get("actor_tenant") or params.get("tenant") or state.get("audit_tenant") or "")
