"""Fit report admin routes (`/admin/fit-reports`): HTTP glue over `FitReportStore`.
`adaptserve fit` pushes its report here when it serves its choice; the console shows it.
A report is global (the operator's, `?tenant=` unset) or a tenant's (`?tenant=NAME` for
the operator; always its own for a tenant admin key). A tenant admin reads its own and
the global ones (its own first, by name) and changes only its own: another tenant's
report answers the 404 of a name that does not exist, a global one's change 403.

Upload: `PUT /admin/fit-reports/{name}` with the report as one JSON object
(`FitReportUpload`), within the request body limit (`max_request_bytes`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from adaptserve.errors import PermissionDeniedError
from adaptserve.fit_reports import GLOBAL, FitReportNotFoundError, FitReportUpload
from adaptserve.server.deps import AdminDep, GatewayDep
from adaptserve.server.gateway import Gateway
from adaptserve.server.protocol import documented_body, read_json
from adaptserve.tenancy.auth import Actor
from adaptserve.tenancy.tenants import TenantNotFoundError

router = APIRouter(prefix="/admin/fit-reports")


@router.put("/{name}", openapi_extra=documented_body(FitReportUpload))
async def put_fit_report(
    name: str, request: Request, response: Response, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None
) -> dict:
    """The report → stored under `name` (201), replacing one of that name (200)."""
    owner = await asyncio.to_thread(_writer, actor, gateway, tenant)
    request.state.audit_tenant = actor.tenant or tenant
    report, plot = await asyncio.to_thread(FitReportUpload.parse, await read_json(request.stream()))
    stored, created = await asyncio.to_thread(gateway.fit_reports.put, owner, name, report, plot)
    response.status_code = 201 if created else 200
    return stored


@router.get("")
def list_fit_reports(gateway: GatewayDep, actor: AdminDep) -> dict:
    owners = None if actor.tenant is None else (GLOBAL, actor.uid)
    return {"data": gateway.fit_reports.list(owners)}


@router.get("/{name}")
def get_fit_report(name: str, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None) -> dict:
    return gateway.fit_reports.get(_reader(actor, gateway, name, tenant), name)


@router.delete("/{name}", status_code=204)
def delete_fit_report(
    name: str, request: Request, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None
) -> None:
    request.state.audit_tenant = actor.tenant or tenant
    owner = _reader(actor, gateway, name, tenant)
    if actor.tenant is not None and owner == GLOBAL:
        raise PermissionDeniedError(f"fit report {name} is global: only the operator changes it")
    gateway.fit_reports.remove(owner, name)


def _writer(actor: Actor, gateway: Gateway, tenant: str | None) -> str:
    """Whose a pushed report becomes: a tenant admin's tenant's; the operator's `tenant`'s, or global."""
    if actor.tenant is not None:
        _only_own(actor, tenant)
        return actor.uid
    if tenant is None:
        return GLOBAL
    uid = gateway.tenants.uid(tenant)
    if uid is None:
        raise TenantNotFoundError(f"tenant {tenant} does not exist")
    return uid


def _reader(actor: Actor, gateway: Gateway, name: str, tenant: str | None) -> str:
    """Whose report `name` a read means: the operator's choice; a tenant admin's own, else global."""
    if actor.tenant is None:
        return _writer(actor, gateway, tenant)
    _only_own(actor, tenant)
    owner = gateway.fit_reports.owner_of(actor.uid, name)
    if owner is None:
        raise FitReportNotFoundError(f"fit report {name} does not exist", param="name")
    return owner


def _only_own(actor: Actor, tenant: str | None) -> None:
    if tenant not in (None, actor.tenant):
        raise TenantNotFoundError(f"tenant {tenant} does not exist")
