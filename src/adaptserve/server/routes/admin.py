"""Admin routes (`/admin/...`): tenants, keys, model aliases, usage, the audit trail,
PII policies (adapters: `adapters.py`). The operator's admin key may do everything; a
tenant admin key (`Actor` with a tenant) only its own tenant's part: another tenant's
objects answer the same 404 as names that do not exist, and the operator's routes
(tenants, quotas) answer 403. A route that changes a version notes before and after in
`request.state.audit` (what `server/audit.py` records).

Handlers are sync: FastAPI runs them in worker threads, where database calls belong.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.routing import Match

from adaptserve.adapters.catalog import AdapterNotFoundError
from adaptserve.errors import PermissionDeniedError, RouteError
from adaptserve.pii.policy import PiiPolicy
from adaptserve.server.deps import AdminDep, GatewayDep, OperatorDep
from adaptserve.server.gateway import Gateway
from adaptserve.tenancy.audit import MAX_ENTRIES
from adaptserve.tenancy.auth import Actor
from adaptserve.tenancy.quotas import Limits
from adaptserve.tenancy.tenants import Alias, TenantNotFoundError

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


def _tenant_admin_may_point(gateway: Gateway, body: AliasSet, before: Alias | None) -> None:
    """A tenant admin's alias: to the base model only if the operator allows it; to a
    global adapter's version only if it is released (the alias as it is stays allowed)."""
    if body.base and not gateway.settings.tenant_base_aliases:
        raise PermissionDeniedError("Only the operator gives a tenant the base model.", param="base")
    unchanged = before is not None and (before.adapter, before.version) == (body.adapter, body.version)
    if body.adapter is not None and not unchanged:
        gateway.catalog.check_released(body.adapter, body.version)


def _target(alias: Alias | None) -> str | None:
    """What an alias serves, for the audit trail."""
    if alias is None:
        return None
    if alias.base:
        return "base"
    return f"{alias.adapter}@{alias.version}" if alias.version else str(alias.adapter)
