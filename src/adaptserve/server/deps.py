"""Typed FastAPI dependencies, so routes never dig in `request.app.state`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from adaptserve.errors import AuthenticationError
from adaptserve.server.protocol import read_json
from adaptserve.server.state import Gateway
from adaptserve.tenancy.auth import Principal, check_admin

T = TypeVar("T")


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def get_principal(request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]) -> Principal:
    # A sync dependency: FastAPI runs it in a worker thread, so the key lookup in the
    # database never blocks the event loop.
    return _throttled(request, gateway, gateway.tenants.authenticate)


def require_admin(request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]) -> None:
    _throttled(request, gateway, lambda auth: check_admin(auth, gateway.admin_key_hash))


def _throttled(request: Request, gateway: Gateway, check: Callable[[str | None], T]) -> T:
    """Run a key check unless this client address has failed too often; count a failure."""
    address = request.client.host if request.client else "unknown"
    gateway.auth_throttle.check(address)
    try:
        return check(request.headers.get("authorization"))
    except AuthenticationError:
        gateway.auth_throttle.failed(address)
        raise


async def get_body(request: Request) -> dict[str, Any]:
    return await read_json(request.stream())


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
BodyDep = Annotated[dict[str, Any], Depends(get_body)]
AdminDep = Annotated[None, Depends(require_admin)]
