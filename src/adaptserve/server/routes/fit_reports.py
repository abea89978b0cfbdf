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

from adaptserve.fit_reports import GLOBAL, FitReportNotFoundError, FitReportUpload
from adaptserve.server.deps import AdminDep, GatewayDep
from adaptserve.server.gateway import Gateway
from adaptserve.server.protocol import documented_body, read_json
from adaptserve.server.routes import owners
from adaptserve.tenancy.auth import Actor

router = APIRouter(prefix="/admin/fit-reports")


@router.put("/{name}", openapi_extra=documented_body(FitReportUpload))
async def put_fit_report(
    name: str, request: Request, response: Response, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None
) -> dict:
    """The report → stored under `name` (201), replacing one of that name (200)."""
    owner = await asyncio.to_thread(owners.writer, actor, gateway, tenant)
    request.state.audit_tenant = actor.tenant or tenant
    report, plot = await asyncio.to_thread(FitReportUpload.parse, await read_json(request.stream()))
    stored, created = await asyncio.to_thread(gateway.fit_reports.put, owner, name, report, plot)
    response.status_code = 201 if created else 200
    return stored


@router.get("")
def list_fit_reports(gateway: GatewayDep, actor: AdminDep) -> dict:
    mine = None if actor.tenant is None else (GLOBAL, actor.uid)
    return {"data": gateway.fit_reports.list(mine)}


@router.get("/{name}")
def get_fit_report(name: str, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None) -> dict:
    return gateway.fit_reports.get(_reader(actor, gateway, name, tenant), name)


@router.delete("/{name}", status_code=204)
def delete_fit_report(
    name: str, request: Request, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None
) -> None:
    request.state.audit_tenant = actor.tenant or tenant
    owner = owners.changer(_reader(actor, gateway, name, tenant), actor, f"fit report {name}")
    gateway.fit_reports.remove(owner, name)


def _reader(actor: Actor, gateway: Gateway, name: str, tenant: str | None) -> str:
    missing = FitReportNotFoundError(f"fit report {name} does not exist", param="name")
    return owners.reader(actor, gateway, tenant, lambda uid: gateway.fit_reports.owner_of(uid, name), missing)
