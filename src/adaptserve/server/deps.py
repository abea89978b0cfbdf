"""Typed FastAPI dependencies, so routes never dig in `request.app.state`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from adaptserve.server.protocol import read_json
from adaptserve.server.state import Gateway
from adaptserve.tenancy.auth import Principal, check_admin


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def get_principal(request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]) -> Principal:
    # A sync dependency: FastAPI runs it in a worker thread, so the key lookup in the
    # database never blocks the event loop.
    return gateway.tenants.authenticate(request.headers.get("authorization"))


def require_admin(request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]) -> None:
    check_admin(request.headers.get("authorization"), gateway.admin_key_hash)


async def get_body(request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]) -> dict[str, Any]:
    limit = gateway.settings.max_request_bytes
    return await read_json(request.stream(), request.headers.get("content-length"), limit)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
BodyDep = Annotated[dict[str, Any], Depends(get_body)]
AdminDep = Annotated[None, Depends(require_admin)]
