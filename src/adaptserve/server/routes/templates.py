"""Template endpoints for tenants (`/v1/templates`) and their admin API
(`/admin/templates`): HTTP glue over `TemplateService` and `TemplateRegistry`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from adaptserve.errors import InvalidRequestError, PayloadTooLargeError
from adaptserve.server import responses
from adaptserve.server.deps import AdminDep, BodyDep, GatewayDep, PrincipalDep
from adaptserve.server.protocol import documented_body, read_body
from adaptserve.serving.templates import TemplateCall, parse_call
from adaptserve.templates.registry import GLOBAL, MAX_VERSION
from adaptserve.templates.spec import load_document
from adaptserve.tenancy.auth import Actor
from adaptserve.tenancy.tenants import TenantNotFoundError

router = APIRouter(prefix="/v1/templates")
admin_router = APIRouter(prefix="/admin/templates")


_TEMPLATE_DOCUMENT = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


class TemplateActivate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_VERSION)


@router.get("")
def list_templates(gateway: GatewayDep, principal: PrincipalDep) -> dict:
    return gateway.template_service.visible(principal.tenant)


@router.get("/{name}")
def describe_template(name: str, gateway: GatewayDep, principal: PrincipalDep) -> dict:
    return gateway.template_service.describe(principal.tenant, name)


@router.post("/{name}", response_model=None, openapi_extra=documented_body(TemplateCall))
async def run_template(
    name: str, gateway: GatewayDep, principal: PrincipalDep, body: BodyDep
) -> JSONResponse | StreamingResponse:
    call = parse_call(body)
    if call.stream:
        answer = await gateway.template_service.stream(principal, name, call)
        return responses.EventStreamResponse(answer, gateway.settings.stream_stall_timeout_s)
    return JSONResponse(await gateway.template_service.run(principal, name, call))


@admin_router.put("/{name}", openapi_extra=_TEMPLATE_DOCUMENT)
async def put_template(
    name: str,
    request: Request,
    response: Response,
    gateway: GatewayDep,
    actor: AdminDep,
    activate: bool = True,
    tenant: str | None = None,
) -> dict:
    """The YAML or JSON document → a new immutable version (201), or the identical one (200).
    `?activate=false` stores it without switching callers to it; `?tenant=` owns it (a
    tenant admin's templates are always its tenant's)."""
    tenant = _owner(actor, tenant) or None
    request.state.audit_tenant = tenant
    text = await read_body(request.stream())
    if len(text) > gateway.settings.max_template_bytes:
        raise PayloadTooLargeError(f"a template document is at most {gateway.settings.max_template_bytes} bytes")
    spec = await asyncio.to_thread(load_document, text, name)  # parsing and checking are CPU work: off the loop
    if tenant is not None and spec.tenant not in (None, tenant):
        raise InvalidRequestError("the document's tenant differs from the URL's", param="tenant")
    if tenant is not None:
        spec = spec.model_copy(update={"tenant": tenant})
    await gateway.template_service.check_fits(spec)
    version, created = await asyncio.to_thread(gateway.templates.put, spec, activate)
    response.status_code = 201 if created else 200
    request.state.audit = {"after": version["version"], "activate": activate}
    return version


@admin_router.get("")
def list_all_templates(gateway: GatewayDep, actor: AdminDep) -> dict:
    found = gateway.templates.list_all()
    return {"data": [t for t in found if actor.tenant is None or t["owner"] == actor.tenant]}


@admin_router.get("/{name}")
def template_versions(name: str, gateway: GatewayDep, actor: AdminDep, tenant: str = GLOBAL) -> dict:
    return gateway.templates.versions(_owner(actor, tenant), name)


@admin_router.post("/{name}/activate")
def activate_template(
    name: str, body: TemplateActivate, request: Request, gateway: GatewayDep, actor: AdminDep, tenant: str = GLOBAL
) -> dict:
    tenant = _owner(actor, tenant)
    request.state.audit_tenant = tenant
    result = gateway.templates.activate(tenant, name, body.version)
    request.state.audit = {"after": body.version}
    return result


@admin_router.delete("/{name}", status_code=204)
def delete_template(name: str, request: Request, gateway: GatewayDep, actor: AdminDep, tenant: str = GLOBAL) -> None:
    tenant = _owner(actor, tenant)
    request.state.audit_tenant = tenant
    gateway.templates.remove(tenant, name)


def _owner(actor: Actor, tenant: str | None) -> str:
    """Whose templates a call is about: a tenant admin's are its tenant's (another
    tenant named is not there for it, as a name that does not exist is not)."""
    if actor.tenant is None:
        return tenant or GLOBAL
    if tenant not in (None, GLOBAL, actor.tenant):
        raise TenantNotFoundError(f"tenant {tenant} does not exist")
    return actor.tenant
