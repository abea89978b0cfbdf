"""Admin routes (`/admin/...`, admin key): tenants, keys, adapters, model aliases.

Handlers are sync: FastAPI runs them in worker threads, where database calls belong.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from adaptserve.errors import InvalidRequestError, StorageError, invalid_from
from adaptserve.server.deps import AdminDep, GatewayDep
from adaptserve.server.protocol import documented_body, read_json
from adaptserve.tenancy.quotas import Limits

router = APIRouter(prefix="/admin")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(_Strict):
    name: StrictStr


class AliasSet(_Strict):
    adapter: StrictStr | None = None
    version: StrictStr | None = None
    base: StrictBool = False


class Quotas(_Strict):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)


class Activate(_Strict):
    version: StrictStr


class AdapterByPath(_Strict):
    name: StrictStr
    path: StrictStr


_ARCHIVE_FORM = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["name", "file"],
            "properties": {"name": {"type": "string"}, "file": {"type": "string", "format": "binary"}},
        }
    }
}


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantCreate, gateway: GatewayDep, _: AdminDep) -> dict:
    return gateway.tenants.create(body.name)


@router.get("/tenants")
def list_tenants(gateway: GatewayDep, _: AdminDep) -> dict:
    return {"data": gateway.tenants.list()}


@router.delete("/tenants/{tenant}", status_code=204)
def delete_tenant(tenant: str, gateway: GatewayDep, _: AdminDep) -> None:
    gateway.tenants.delete(tenant)


@router.put("/tenants/{tenant}/quotas")
def set_quotas(tenant: str, body: Quotas, gateway: GatewayDep, _: AdminDep) -> dict:
    limits = Limits(body.requests_per_minute, body.tokens_per_minute, body.max_concurrent)
    return gateway.tenants.set_quotas(tenant, limits)


@router.get("/usage")
async def usage(gateway: GatewayDep, _: AdminDep, tenant: str | None = None, since: datetime | None = None) -> dict:
    return {"data": await gateway.meter.query(tenant, since)}


@router.post("/tenants/{tenant}/keys", status_code=201)
def create_key(tenant: str, gateway: GatewayDep, _: AdminDep) -> dict:
    return gateway.tenants.create_key(tenant)


@router.get("/tenants/{tenant}/keys")
def list_keys(tenant: str, gateway: GatewayDep, _: AdminDep) -> dict:
    return {"data": gateway.tenants.list_keys(tenant)}


@router.delete("/tenants/{tenant}/keys/{key_id}", status_code=204)
def delete_key(tenant: str, key_id: str, gateway: GatewayDep, _: AdminDep) -> None:
    gateway.tenants.delete_key(tenant, key_id)


@router.put("/tenants/{tenant}/models/{alias}")
def set_alias(tenant: str, alias: str, body: AliasSet, gateway: GatewayDep, _: AdminDep) -> dict:
    return vars(gateway.tenants.set_alias(tenant, alias, base=body.base, adapter=body.adapter, version=body.version))


@router.get("/tenants/{tenant}/models")
def list_aliases(tenant: str, gateway: GatewayDep, _: AdminDep) -> dict:
    return {"data": [vars(a) for a in gateway.tenants.aliases(tenant)]}


@router.delete("/tenants/{tenant}/models/{alias}", status_code=204)
def delete_alias(tenant: str, alias: str, gateway: GatewayDep, _: AdminDep) -> None:
    gateway.tenants.delete_alias(tenant, alias)


@router.post("/adapters", status_code=201, openapi_extra=documented_body(AdapterByPath, media_types=_ARCHIVE_FORM))
async def push_adapter(request: Request, gateway: GatewayDep, _: AdminDep) -> dict:
    """Multipart (`name` + `file`: .tar.gz/.zip of a PEFT folder) or JSON {name, path}."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        name, staged = await _receive_archive(request, gateway)
    else:
        raw = await read_json(request.stream())
        try:
            body = AdapterByPath.model_validate(raw)
        except ValidationError as exc:
            raise invalid_from(exc) from exc
        name, staged = body.name, await asyncio.to_thread(gateway.store.copy_folder, Path(body.path))
    return await asyncio.to_thread(gateway.registry.register, name, staged)


@router.get("/adapters")
def list_adapters(gateway: GatewayDep, _: AdminDep) -> dict:
    return {"data": gateway.registry.list()}


@router.get("/adapters/{name}")
def describe_adapter(name: str, gateway: GatewayDep, _: AdminDep) -> dict:
    return gateway.registry.describe(name)


@router.post("/adapters/{name}/activate")
def activate_adapter(name: str, body: Activate, gateway: GatewayDep, _: AdminDep) -> dict:
    return gateway.registry.activate(name, body.version)


@router.delete("/adapters/{name}", status_code=204)
def delete_adapter(name: str, gateway: GatewayDep, _: AdminDep) -> None:
    gateway.registry.remove(name)


async def _receive_archive(request: Request, gateway: Any) -> tuple[str, Path]:
    """Stream the upload to a temp file, then unpack it into the store's staging area. Its
    size (`max_adapter_bytes`) is checked at the edge, from the Content-Length it needs."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise InvalidRequestError("an adapter upload needs a Content-Length header")
    try:
        form = await request.form(max_files=1, max_fields=2)
    except OSError as exc:  # the upload spools to the temp folder's disk
        raise StorageError(f"The server could not receive the upload: {exc.strerror or exc}.") from exc
    upload, name = form.get("file"), form.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("the form needs a 'name' field", param="name")
    if upload is None or isinstance(upload, str):
        raise InvalidRequestError("the form needs a 'file' field with the archive", param="file")
    try:
        staged = await asyncio.to_thread(gateway.store.unpack_upload, upload.file, upload.filename or "")
    finally:
        await form.close()
    return name, staged
