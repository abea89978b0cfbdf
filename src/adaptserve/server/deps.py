"""Typed FastAPI dependencies, so routes never dig in `request.app.state`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from adaptserve.errors import AuthenticationError
from adaptserve.server.gateway import Gateway
from adaptserve.server.protocol import read_json
from adaptserve.tenancy.auth import OPERATOR, Actor, Principal, key_matches

T = TypeVar("T")


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def get_principal(request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]) -> Principal:
    # A cached key is answered on the event loop; a key lookup in the database runs in a
    # worker thread, so it never blocks the loop.
    with _failures_counted(request, gateway) as authorization:
        return await gateway.reads.in_loop_or_thread(gateway.tenants.authenticate, authorization)


def require_admin(request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]) -> Actor:
    """The operator (the admin key) or a tenant admin (a tenant's admin-role key). A
    sync dependency: the key lookup runs in a worker thread."""

    def check(authorization: str | None) -> Actor:
        if key_matches(authorization, gateway.admin_key_hash):
            return OPERATOR
        return gateway.tenants.authenticate_admin(authorization)

    actor = _throttled(request, gateway, check)
    # for the audit trail: who, and the tenant (and its incarnation) a tenant admin acts for
    request.state.actor, request.state.actor_tenant, request.state.actor_uid = actor.name, actor.tenant, actor.uid
    return actor


def require_operator(actor: Annotated[Actor, Depends(require_admin)]) -> Actor:
    actor.require_operator()
    return actor


def require_metrics_reader(request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]) -> None:
    """/metrics: the metrics key when one is set (it opens nothing else), or the
    operator, as `require_operator` decides (a tenant admin's key is 403). A wrong key
    counts once toward the same per-address throttle."""
    metrics_hash = gateway.metrics_key_hash
    if metrics_hash is not None and _throttled(request, gateway, lambda header: key_matches(header, metrics_hash)):
        return
    require_operator(require_admin(request, gateway))


def _throttled(request: Request, gateway: Gateway, check: Callable[[str | None], T]) -> T:
    """Run a key check unless this client address has failed too often; count a failure."""
    with _failures_counted(request, gateway) as authorization:
        return check(authorization)


@contextmanager
def _failures_counted(request: Request, gateway: Gateway) -> Iterator[str | None]:
    """The request's Authorization header, unless its client address has failed too
    often (429); a key check inside that fails counts against the address."""
    address = request.client.host if request.client else "unknown"
    gateway.auth_throttle.check(address)
    try:
        yield request.headers.get("authorization")
    except AuthenticationError:
        gateway.auth_throttle.failed(address)
        raise


async def get_body(request: Request) -> dict[str, Any]:
    return await read_json(request.stream())


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
BodyDep = Annotated[dict[str, Any], Depends(get_body)]
AdminDep = Annotated[Actor, Depends(require_admin)]
OperatorDep = Annotated[Actor, Depends(require_operator)]
MetricsReaderDep = Annotated[None, Depends(require_metrics_reader)]
