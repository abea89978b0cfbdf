"""Template endpoints for tenants (`/v1/templates`) and their admin API
(`/admin/templates`): HTTP glue over `TemplateService` and `TemplateRegistry`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from adaptserve.errors import InvalidRequestError
from adaptserve.server.deps import AdminDep, BodyDep, GatewayDep, PrincipalDep
from adaptserve.server.protocol import documented_body, read_body
from adaptserve.templates.registry import GLOBAL
from adaptserve.templates.service import TemplateCall
from adaptserve.templates.spec import load_document

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


class Activate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


@router.get("")
def list_templates(gateway: GatewayDep, principal: PrincipalDep) -> dict:
    return gateway.template_service.list(principal.tenant)


@router.get("/{name}")
def describe_template(name: str, gateway: GatewayDep, principal: PrincipalDep) -> dict:
    return gateway.template_service.describe(principal.tenant, name)


@router.post("/{name}", response_model=None, openapi_extra=documented_body(TemplateCall))
async def run_template(
    name: str, gateway: GatewayDep, principal: PrincipalDep, body: BodyDep
) -> JSONResponse | StreamingResponse:
    return await gateway.template_service.run(principal, name, body)


@admin_router.put("/{name}", openapi_extra=_TEMPLATE_DOCUMENT)
async def put_template(
    name: str,
    request: Request,
    response: Response,
    gateway: GatewayDep,
    _: AdminDep,
    activate: bool = True,
    tenant: str | None = None,
) -> dict:
    """The YAML or JSON document → a new immutable version (201), or the identical one (200).
    `?activate=false` stores it without switching callers to it; `?tenant=` owns it."""
    text = await read_body(request.stream())
    spec = load_document(text, name)
    if tenant is not None and spec.tenant not in (None, tenant):
        raise InvalidRequestError("the document's tenant differs from the URL's", param="tenant")
    if tenant is not None:
        spec = spec.model_copy(update={"tenant": tenant})
    version, created = await asyncio.to_thread(gateway.templates.put, spec, activate)
    response.status_code = 201 if created else 200
    return version


@admin_router.get("")
def list_all_templates(gateway: GatewayDep, _: AdminDep) -> dict:
    return {"data": gateway.templates.list_all()}


@admin_router.get("/{name}")
def template_versions(name: str, gateway: GatewayDep, _: AdminDep, tenant: str = GLOBAL) -> dict:
    return gateway.templates.versions(tenant, name)


@admin_router.post("/{name}/activate")
def activate_template(name: str, body: Activate, gateway: GatewayDep, _: AdminDep, tenant: str = GLOBAL) -> dict:
    return gateway.templates.activate(tenant, name, body.version)


@admin_router.delete("/{name}", status_code=204)
def delete_template(name: str, gateway: GatewayDep, _: AdminDep, tenant: str = GLOBAL) -> None:
    gateway.templates.remove(tenant, name)
