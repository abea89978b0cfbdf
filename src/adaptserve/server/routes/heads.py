"""Classifier-head admin routes (`/admin/heads`): HTTP glue over `HeadCatalog` and
`HeadService`'s checks. A head is global (the operator's, `?tenant=` unset) or a
tenant's (`?tenant=NAME` for the operator; always its own for a tenant admin key). A
tenant admin reads its own heads and the global ones (its own first, by name) and
changes only its own: another tenant's head answers the 404 of a name that does not
exist, a global one's change 403.

Upload: `PUT /admin/heads/{name}` with the head as one JSON object (`HeadUpload`:
labels, embedding model, dim, coef, intercept, temperature), within the request body
limit (`max_request_bytes`) and `MAX_WEIGHTS` weights.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, StrictStr

from adaptserve.heads.artifact import HeadArtifact, HeadUpload
from adaptserve.heads.catalog import GLOBAL, HeadNotFoundError
from adaptserve.server.deps import AdminDep, GatewayDep
from adaptserve.server.gateway import Gateway
from adaptserve.server.protocol import documented_body, read_json
from adaptserve.server.routes import owners
from adaptserve.tenancy.auth import Actor

router = APIRouter(prefix="/admin/heads")


class HeadActivate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: StrictStr


@router.put("/{name}", openapi_extra=documented_body(HeadUpload))
async def put_head(
    name: str,
    request: Request,
    response: Response,
    gateway: GatewayDep,
    actor: AdminDep,
    activate: bool = True,
    tenant: str | None = None,
) -> dict:
    """A head → a new immutable version (201, active unless `?activate=false`; the first
    always), or the identical one (200). Its embedding model must be an embedding model
    of `models:` whose vectors have its dim and whose weights its `embedding_digest`
    names (stamped when the upload gives none)."""
    owner = await asyncio.to_thread(owners.writer, actor, gateway, tenant)
    request.state.audit_tenant = actor.tenant or tenant
    artifact = await asyncio.to_thread(HeadArtifact.parse, await read_json(request.stream()))
    artifact = await gateway.head_service.check_head(artifact, actor.tenant or tenant)
    before = await asyncio.to_thread(_active, gateway, owner, name)
    stored, created = await asyncio.to_thread(gateway.heads.put, owner, name, artifact, activate)
    response.status_code = 201 if created else 200
    request.state.audit = {"before": before, "after": stored["active_version"], "version": stored["version"]}
    return stored


@router.get("")
def list_heads(gateway: GatewayDep, actor: AdminDep) -> dict:
    mine = None if actor.tenant is None else (GLOBAL, actor.uid)
    return {"data": gateway.heads.list(mine)}


@router.get("/{name}")
def describe_head(name: str, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None) -> dict:
    return gateway.heads.describe(_reader(actor, gateway, name, tenant), name)


@router.post("/{name}/activate")
def activate_head(
    name: str, body: HeadActivate, request: Request, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None
) -> dict:
    """`version` becomes the active one (the one it replaces is what `rollback` returns to)."""
    request.state.audit_tenant = actor.tenant or tenant
    result = gateway.heads.activate(_changer(actor, gateway, name, tenant), name, body.version)
    request.state.audit = {"before": result["previous_version"], "after": result["active_version"]}
    return result


@router.post("/{name}/rollback")
def rollback_head(name: str, request: Request, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None) -> dict:
    """Back to the version active before the last change (409 if there was none)."""
    request.state.audit_tenant = actor.tenant or tenant
    result = gateway.heads.rollback(_changer(actor, gateway, name, tenant), name)
    request.state.audit = {"before": result["previous_version"], "after": result["active_version"]}
    return result


@router.delete("/{name}", status_code=204)
def delete_head(name: str, request: Request, gateway: GatewayDep, actor: AdminDep, tenant: str | None = None) -> None:
    """The head and its versions (a template naming it answers 404 `head_not_found` until
    one is pushed again)."""
    request.state.audit_tenant = actor.tenant or tenant
    gateway.heads.remove(_changer(actor, gateway, name, tenant), name)


def _reader(actor: Actor, gateway: Gateway, name: str, tenant: str | None) -> str:
    missing = HeadNotFoundError(f"head {name} does not exist", param="name")
    return owners.reader(actor, gateway, tenant, lambda uid: gateway.heads.owner_of(uid, name), missing)


def _changer(actor: Actor, gateway: Gateway, name: str, tenant: str | None) -> str:
    return owners.changer(_reader(actor, gateway, name, tenant), actor, f"head {name}")


def _active(gateway: Gateway, owner: str, name: str) -> str | None:
    try:
        return gateway.heads.describe(owner, name)["active_version"]
    except HeadNotFoundError:
        return None
