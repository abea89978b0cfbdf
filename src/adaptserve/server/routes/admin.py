"""Admin routes (`/admin/...`): tenants, keys, adapters, model aliases, and the audit
trail, PII policies. The operator's admin key may do everything; a tenant admin key (`Actor` with a
tenant) only its own tenant's part: another tenant's objects answer the same 404 as
names that do not exist, and the operator's routes (tenants, quotas) answer 403. A
route that changes a version notes before and after in `request.state.audit` (what
`server/audit.py` records).

Handlers are sync: FastAPI runs them in worker threads, where database calls belong.
Uploads and the adapter algebra (compress, merge: seconds of CPU) are async and run
their work with `asyncio.to_thread`, outside the pool that serves `/v1`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator
from starlette.routing import Match

from adaptserve.adapters.catalog import AdapterNotFoundError
from adaptserve.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    RouteError,
    StorageError,
    invalid_from,
)
from adaptserve.pii.policy import PiiPolicy
from adaptserve.server.deps import AdminDep, GatewayDep, OperatorDep
from adaptserve.server.gateway import Gateway
from adaptserve.server.protocol import documented_body, read_json
from adaptserve.tenancy.audit import MAX_ENTRIES
from adaptserve.tenancy.auth import Actor
from adaptserve.tenancy.quotas import Limits
from adaptserve.tenancy.tenants import Alias, TenantNotFoundError

if TYPE_CHECKING:
    from adaptserve.adapters.algebra import Source

router = APIRouter(prefix="/admin")
unknown_router = APIRouter()  # included after every other router (app.py)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(_Strict):
    name: StrictStr


class AliasSet(_Strict):
    adapter: StrictStr | None = None
    version: StrictStr | None = None
    base: StrictBool = False


class Quotas(_Strict):  # each an INTEGER column (32 bits on PostgreSQL)
    requests_per_minute: int | None = Field(None, ge=1, le=2**31 - 1)
    tokens_per_minute: int | None = Field(None, ge=1, le=2**31 - 1)
    max_concurrent: int | None = Field(None, ge=1, le=2**31 - 1)


class KeyCreate(_Strict):
    role: StrictStr = "api"  # "admin": a tenant admin key


class AdapterActivate(_Strict):
    version: StrictStr


class AdapterByPath(_Strict):
    name: StrictStr
    path: StrictStr
    base: StrictStr | None = None  # the LLM base it is for: the base model (default) or a `models:` entry


class AdapterCompress(_Strict):
    """SVD to `rank`, or to the rank keeping `energy` of each module's update."""

    version: StrictStr | None = None  # default: the active version
    rank: int | None = Field(None, ge=1)
    energy: float | None = Field(None, gt=0, le=1)
    name: StrictStr | None = None  # the result's adapter (default: a new version of this one)

    @model_validator(mode="after")
    def _one_target(self) -> AdapterCompress:
        if (self.rank is None) == (self.energy is None):
            raise ValueError("give exactly one of rank and energy")
        return self


class MergeSource(_Strict):
    adapter: StrictStr
    version: StrictStr | None = None
    weight: float = Field(1.0, ge=-100, le=100, allow_inf_nan=False)


class AdapterMerge(_Strict):
    name: StrictStr
    sources: list[MergeSource] = Field(min_length=1, max_length=8)
    method: Literal["cat", "linear", "ties", "dare"] = "linear"
    rank: int | None = Field(None, ge=1)  # linear, ties, dare (default: the largest source rank)
    density: float = Field(0.5, gt=0, le=1)  # ties, dare: the share of each update's entries kept
    seed: int = Field(0, ge=0)  # dare's random drops


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
def create_tenant(body: TenantCreate, gateway: GatewayDep, _: OperatorDep) -> dict:
    return gateway.tenants.create(body.name)


@router.get("/tenants")
def list_tenants(gateway: GatewayDep, actor: AdminDep) -> dict:
    return {"data": [t for t in gateway.tenants.list() if actor.sees(t["name"])]}


@router.delete("/tenants/{tenant}", status_code=204)
def delete_tenant(tenant: str, request: Request, gateway: GatewayDep, _: OperatorDep) -> None:
    request.state.audit_tenant_uid = gateway.tenants.uid(tenant) or ""  # gone once the entry is written
    gateway.tenants.delete(tenant)


@router.put("/tenants/{tenant}/quotas")
def set_quotas(tenant: str, body: Quotas, gateway: GatewayDep, _: OperatorDep) -> dict:
    limits = Limits(body.requests_per_minute, body.tokens_per_minute, body.max_concurrent)
    return gateway.tenants.set_quotas(tenant, limits)


@router.put("/tenants/{tenant}/pii")
def set_pii(tenant: str, body: PiiPolicy, gateway: GatewayDep, _: OperatorDep) -> dict:
    """The tenant's PII policy (the operator's: a tenant's admin key may read it only)."""
    return gateway.tenants.set_pii(tenant, body).model_dump(mode="json")


@router.get("/tenants/{tenant}/pii")
def get_pii(tenant: str, gateway: GatewayDep, actor: AdminDep) -> dict:
    if not actor.sees(tenant):
        raise TenantNotFoundError(f"tenant {tenant} does not exist")
    return gateway.tenants.pii(tenant).model_dump(mode="json")


@router.get("/usage")
async def usage(gateway: GatewayDep, actor: AdminDep, tenant: str | None = None, since: datetime | None = None) -> dict:
    if actor.tenant is not None:  # a tenant admin reads its own tenant's (this incarnation's) usage
        return {"data": await gateway.meter.query(None, since, uid=actor.uid)}
    return {"data": await gateway.meter.query(tenant, since)}


@router.post("/tenants/{tenant}/keys", status_code=201)
def create_key(tenant: str, gateway: GatewayDep, actor: AdminDep, body: KeyCreate | None = None) -> dict:
    _own(actor, tenant)
    return gateway.tenants.create_key(tenant, (body or KeyCreate()).role)


@router.get("/tenants/{tenant}/keys")
def list_keys(tenant: str, gateway: GatewayDep, actor: AdminDep) -> dict:
    _own(actor, tenant)
    return {"data": gateway.tenants.list_keys(tenant)}


@router.delete("/tenants/{tenant}/keys/{key_id}", status_code=204)
def delete_key(tenant: str, key_id: str, gateway: GatewayDep, actor: AdminDep) -> None:
    _own(actor, tenant)
    gateway.tenants.delete_key(tenant, key_id)


@router.put("/tenants/{tenant}/models/{alias}")
def set_alias(tenant: str, alias: str, body: AliasSet, request: Request, gateway: GatewayDep, actor: AdminDep) -> dict:
    """An alias to an adapter (pinned or following its active version) or to the base
    model. A tenant admin pins only released versions of a global adapter, and points
    at the base model only where the operator allows it (`tenant_base_aliases`). A
    generate model's name of `models:` is not an alias's (`refuse_alias_name`); an
    adapter bound to one the tenant may not call is as one that does not exist (404)."""
    _own(actor, tenant)
    gateway.engines.refuse_alias_name(alias, tenant)
    bound = gateway.catalog.base_of(body.adapter) if body.adapter is not None else None
    if bound and gateway.engines.find(tenant, bound) is None:
        raise AdapterNotFoundError(f"adapter {body.adapter} does not exist", param="adapter")
    before = gateway.tenants.alias(tenant, alias, fresh=True)
    if actor.tenant is not None:
        _tenant_admin_may_point(gateway, body, before)
    result = gateway.tenants.set_alias(tenant, alias, base=body.base, adapter=body.adapter, version=body.version)
    request.state.audit = {"before": _target(before), "after": _target(result)}
    if body.adapter is not None:
        gateway.catalog.keep(body.adapter, body.version)
    return vars(result)


@router.get("/tenants/{tenant}/models")
def list_aliases(tenant: str, gateway: GatewayDep, actor: AdminDep) -> dict:
    _own(actor, tenant)
    return {"data": [vars(a) for a in gateway.tenants.aliases(tenant)]}


@router.delete("/tenants/{tenant}/models/{alias}", status_code=204)
def delete_alias(tenant: str, alias: str, gateway: GatewayDep, actor: AdminDep) -> None:
    _own(actor, tenant)
    gateway.tenants.delete_alias(tenant, alias)


@router.post("/adapters", status_code=201, openapi_extra=documented_body(AdapterByPath, media_types=_ARCHIVE_FORM))
async def push_adapter(request: Request, gateway: GatewayDep, actor: AdminDep) -> dict:
    """Multipart (`name` + `file`: .tar.gz/.zip of a PEFT folder, optional `base`) or JSON
    {name, path, base} (a path on the server: the operator's only). A tenant admin's adapter
    is its tenant's. `base`: the base model (default) or a generate model of `models:` with
    adapters that the pusher may call; its files are checked against that base's shapes."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        name, staged, base = await _receive_archive(request, gateway, actor)
    else:
        actor.require_operator()  # a server path reads the gateway's disk
        raw = await read_json(request.stream())
        try:
            body = AdapterByPath.model_validate(raw)
        except ValidationError as exc:
            raise invalid_from(exc) from exc
        base = gateway.engines.adapter_base(body.base, actor.tenant)
        name, staged = body.name, await asyncio.to_thread(gateway.store.copy_folder, Path(body.path))
    result = await asyncio.to_thread(gateway.catalog.register, name, staged, _owner(actor), base)
    request.state.audit = {"after": result.get("version")}
    return result


@router.post("/adapters/merge", status_code=201)
async def merge_adapters(body: AdapterMerge, request: Request, gateway: GatewayDep, actor: AdminDep) -> dict:
    """A weighted merge of adapters the caller sees, as a new version of `name` (the work
    runs off the event loop, outside the pool that serves `/v1`)."""

    def derive() -> dict:
        sources = [_source(actor, gateway, s.adapter, s.version, s.weight) for s in body.sources]
        from adaptserve.adapters import algebra  # numpy: loaded on first use, not at start-up

        build = partial(
            algebra.merge_into,
            sources=sources,
            method=body.method,
            rank=body.rank,
            density=body.density,
            seed=body.seed,
            max_dense_bytes=gateway.settings.max_merge_dense_bytes,
        )
        return gateway.catalog.derive(body.name, _owner(actor), build)

    result = await asyncio.to_thread(derive)
    request.state.audit = {"after": result["version"]}
    return result


@router.post("/adapters/{name}/compress", status_code=201)
async def compress_adapter(
    name: str, body: AdapterCompress, request: Request, gateway: GatewayDep, actor: AdminDep
) -> dict:
    """The adapter reduced by SVD, as a new version (not activated) of it or of `name`."""

    def derive() -> dict:
        source = _source(actor, gateway, name, body.version)
        from adaptserve.adapters import algebra  # numpy: loaded on first use, not at start-up

        build = partial(algebra.compress_into, source=source, rank=body.rank, energy=body.energy)
        return gateway.catalog.derive(body.name or name, _owner(actor), build)

    result = await asyncio.to_thread(derive)
    request.state.audit = {"after": result["version"]}
    return result


@router.get("/adapters")
def list_adapters(gateway: GatewayDep, actor: AdminDep) -> dict:
    return {"data": gateway.catalog.list(visible_to=actor.uid if actor.tenant is not None else None)}


@router.get("/adapters/{name}")
def describe_adapter(name: str, gateway: GatewayDep, actor: AdminDep) -> dict:
    _adapter(actor, gateway, name, change=False)
    return gateway.catalog.describe(name, operator=actor.tenant is None)


@router.post("/adapters/{name}/activate")
def activate_adapter(name: str, body: AdapterActivate, request: Request, gateway: GatewayDep, actor: AdminDep) -> dict:
    _adapter(actor, gateway, name, change=True)
    result = gateway.catalog.activate(name, body.version)
    request.state.audit = {"before": result["previous_version"], "after": result["active_version"]}
    return result


@router.delete("/adapters/{name}", status_code=204)
def delete_adapter(name: str, gateway: GatewayDep, actor: AdminDep) -> None:
    _adapter(actor, gateway, name, change=True)
    gateway.catalog.remove(name)


@router.get("/audit")
def audit(
    gateway: GatewayDep,
    caller: AdminDep,
    tenant: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int = Query(100, ge=1, le=MAX_ENTRIES),
) -> dict:
    """The audit trail, newest first (`action`: a prefix, e.g. "DELETE"); a tenant
    admin reads what concerns its tenant (this incarnation of it), and no operator's address."""
    found = gateway.audit.query(caller, tenant=tenant, actor=actor, action=action, since=since, limit=limit)
    return {"data": found}


@unknown_router.api_route(
    "/admin{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
def unknown_admin_path(rest: str, request: Request, _: AdminDep) -> None:
    """Any `/admin` path or method no route has, answered after the key check: a caller
    without a key gets 401 (and, past the failed-key throttle, 429) whatever it aims at,
    learns nothing of the routes, and cannot make the audit trail grow."""
    own = request.scope.get("route")
    for route in request.app.router.routes:
        if route is not own and route.matches(request.scope)[0] is Match.PARTIAL:
            raise RouteError(405, "Method Not Allowed")
    raise RouteError(404, "Not Found")


def _own(actor: Actor, tenant: str) -> None:
    """Another tenant's part of the API is not there for a tenant admin."""
    if not actor.sees(tenant):
        raise TenantNotFoundError(f"tenant {tenant} does not exist")


def _adapter(actor: Actor, gateway: Gateway, name: str, *, change: bool) -> None:
    """A tenant admin sees global adapters and its own, and changes only its own."""
    if actor.tenant is None:
        return
    owner = gateway.catalog.owner(name)
    if owner is None or owner not in ("", actor.uid):
        raise AdapterNotFoundError(f"adapter {name} does not exist")
    if change and owner == "":
        raise PermissionDeniedError(f"adapter {name} is global: only the operator changes it")


def _tenant_admin_may_point(gateway: Gateway, body: AliasSet, before: Alias | None) -> None:
    """A tenant admin's alias: to the base model only if the operator allows it; to a
    global adapter's version only if it is released (the alias as it is stays allowed)."""
    if body.base and not gateway.settings.tenant_base_aliases:
        raise PermissionDeniedError("Only the operator gives a tenant the base model.", param="base")
    unchanged = before is not None and (before.adapter, before.version) == (body.adapter, body.version)
    if body.adapter is not None and not unchanged:
        gateway.catalog.check_released(body.adapter, body.version)


def _owner(actor: Actor) -> str:
    """Who owns what the actor adds: its tenant's uid ("": the operator's, global)."""
    return actor.uid


def _source(actor: Actor, gateway: Gateway, name: str, version: str | None, weight: float = 1.0) -> Source:
    """A stored version the actor may read (a tenant admin: of a global adapter, a
    released one only)."""
    from adaptserve.adapters.algebra import Source

    _adapter(actor, gateway, name, change=False)
    if actor.tenant is not None:
        gateway.catalog.check_released(name, version)
    found, path = gateway.catalog.stored(name, version)
    return Source(name, found, path, weight)


def _target(alias: Alias | None) -> str | None:
    """What an alias serves, for the audit trail."""
    if alias is None:
        return None
    if alias.base:
        return "base"
    return f"{alias.adapter}@{alias.version}" if alias.version else str(alias.adapter)


async def _receive_archive(request: Request, gateway: Gateway, actor: Actor) -> tuple[str, Path, str]:
    """Stream the upload to a temp file, then unpack it into the store's staging area. Its
    size (`max_adapter_bytes`) is checked at the edge, from the Content-Length it needs."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise InvalidRequestError("an adapter upload needs a Content-Length header")
    try:
        form = await request.form(max_files=1, max_fields=3)
    except OSError as exc:  # the upload spools to the temp folder's disk
        raise StorageError(f"The server could not receive the upload: {exc.strerror or exc}.") from exc
    upload, name, asked = form.get("file"), form.get("name"), form.get("base")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("the form needs a 'name' field", param="name")
    if asked is not None and not isinstance(asked, str):
        raise InvalidRequestError("'base' is a model's name, not a file", param="base")
    base = gateway.engines.adapter_base(asked, actor.tenant)
    await asyncio.to_thread(gateway.catalog.claim, name, _owner(actor), base)  # early; `register` checks again
    if upload is None or isinstance(upload, str):
        raise InvalidRequestError("the form needs a 'file' field with the archive", param="file")
    try:
        staged = await asyncio.to_thread(gateway.store.unpack_upload, upload.file, upload.filename or "")
    finally:
        await form.close()
    return name, staged, base
