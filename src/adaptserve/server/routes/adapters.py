"""Admin routes for adapters (`/admin/adapters...`): push (an upload, or a server path
for the operator), merge and compress (derivations, run off the event loop), list,
describe, activate, delete. A tenant admin sees global adapters and its own, for the
LLM bases it may call (the base model, and the generate models of `models:` it may
call), and changes only its own; what it may not see answers the same 404 as a name
that does not exist. A push's `base` names the LLM base the adapter is for (default the
base model; `adapters/bases.py`); `/admin/adapter-bases` lists those the caller may name.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from adaptserve.adapters.catalog import AdapterNotFoundError
from adaptserve.errors import InvalidRequestError, PermissionDeniedError, StorageError, invalid_from
from adaptserve.server.deps import AdminDep, GatewayDep
from adaptserve.server.gateway import Gateway
from adaptserve.server.protocol import documented_body, read_json
from adaptserve.tenancy.auth import Actor

if TYPE_CHECKING:
    from adaptserve.adapters.algebra import Source

router = APIRouter(prefix="/admin")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
            "properties": {
                "name": {"type": "string"},
                "file": {"type": "string", "format": "binary"},
                "base": {"type": "string"},
            },
        }
    }
}


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
        return gateway.catalog.derive(body.name, _owner(actor), build, [s.adapter for s in body.sources])

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
        return gateway.catalog.derive(body.name or name, _owner(actor), build, [name])

    result = await asyncio.to_thread(derive)
    request.state.audit = {"after": result["version"]}
    return result


@router.get("/adapters")
def list_adapters(gateway: GatewayDep, actor: AdminDep) -> dict:
    if actor.tenant is None:
        return {"data": gateway.catalog.list()}
    return {"data": gateway.catalog.list(actor.uid, gateway.engines.names(actor.tenant, "generate"))}


@router.get("/adapter-bases")
def list_adapter_bases(gateway: GatewayDep, actor: AdminDep) -> dict:
    """The LLM bases the caller may push adapters for (a push's `base`): the base model,
    then the generate models of `models:` with adapters that its tenant may call."""
    entries = gateway.engines.adapter_bases(actor.tenant)
    base = {"name": gateway.settings.base_name, "base_model": True}
    return {"data": [base, *({"name": name, "base_model": False} for name in entries)]}


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


def _adapter(actor: Actor, gateway: Gateway, name: str, *, change: bool) -> None:
    """A tenant admin sees global adapters and its own, for LLM bases it may call, and
    changes only its own."""
    if actor.tenant is None:
        return
    owner, base = gateway.catalog.owner(name), gateway.catalog.base_of(name)
    if owner is None or owner not in ("", actor.uid) or (base and gateway.engines.find(actor.tenant, base) is None):
        raise AdapterNotFoundError(f"adapter {name} does not exist")
    if change and owner == "":
        raise PermissionDeniedError(f"adapter {name} is global: only the operator changes it")


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
