"""Whose a per-owner admin object is (a classifier head, a fit report), for the routes
that store them: global (the operator's, `?tenant=` unset; owner "") or one tenant's (its
uid, never reused). A tenant admin reads its own and the global ones (its own first, by
name) and changes only its own: another tenant's answers the 404 of a name that does not
exist, a global one's change 403."""

from __future__ import annotations

from collections.abc import Callable

from adaptserve.errors import NotFoundError, PermissionDeniedError
from adaptserve.server.gateway import Gateway
from adaptserve.tenancy.auth import Actor
from adaptserve.tenancy.tenants import TenantNotFoundError

GLOBAL = ""  # the owner of a global object (heads.catalog.GLOBAL, fit_reports.GLOBAL)


def writer(actor: Actor, gateway: Gateway, tenant: str | None) -> str:
    """Whose a pushed object becomes: a tenant admin's tenant's; the operator's `tenant`'s,
    or global."""
    if actor.tenant is not None:
        only_own(actor, tenant)
        return actor.uid
    if tenant is None:
        return GLOBAL
    uid = gateway.tenants.uid(tenant)
    if uid is None:
        raise TenantNotFoundError(f"tenant {tenant} does not exist")
    return uid


def reader(
    actor: Actor, gateway: Gateway, tenant: str | None, owner_of: Callable[[str], str | None], missing: NotFoundError
) -> str:
    """Whose object a read means: the operator's choice; a tenant admin's own, else the
    global one (`owner_of(uid)`: the owner holding the name, or None: `missing` is raised)."""
    if actor.tenant is None:
        return writer(actor, gateway, tenant)
    only_own(actor, tenant)
    owner = owner_of(actor.uid)
    if owner is None:
        raise missing
    return owner


def changer(owner: str, actor: Actor, what: str) -> str:
    """`owner`, unless a tenant admin would change a global object (403)."""
    if actor.tenant is not None and owner == GLOBAL:
        raise PermissionDeniedError(f"{what} is global: only the operator changes it")
    return owner


def only_own(actor: Actor, tenant: str | None) -> None:
    if tenant not in (None, actor.tenant):
        raise TenantNotFoundError(f"tenant {tenant} does not exist")
