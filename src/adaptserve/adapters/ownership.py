"""Who an adapter name belongs to, and what the others may do with it. A name has one
owner, for good: the operator ("", a global adapter) or one tenant (its uid); only the
owner adds versions to it (`refuse_taken`: 409 `name_taken`, telling a tenant only that
the name is taken, the operator whose it is). A tenant admin reads only the released
(active) version of a global adapter (`check_released`). The catalog calls both inside
its own transactions."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from adaptserve.db import AdapterRow, TenantRow
from adaptserve.errors import NameTakenError, PermissionDeniedError


def refuse_taken(s: Session, name: str, held: str, owner: str) -> None:
    """`name` is `held`'s ("" the operator's, else a tenant's uid): nobody else adds to it.
    A tenant is told only that the name is taken (not whose); the operator, whose."""
    if held == owner:
        return
    if owner:
        raise NameTakenError(f"the adapter name {name} is taken; choose another", param="name")
    holder = s.scalar(select(TenantRow.name).where(TenantRow.uid == held))
    whose = f"tenant {holder}" if holder else "a deleted tenant (delete the adapter to free the name)"
    raise NameTakenError(f"the adapter name {name} belongs to {whose}; choose another", param="name")


def check_released(s: Session, name: str, version: str | None) -> None:
    """What a tenant admin may read of a global adapter: its active version (None:
    follow it), never a staged one the operator has not activated (403). Adapters
    keep no activation history (no migration for it yet), so "released" is the
    version active now: one rolled back from is the operator's again."""
    adapter = s.get(AdapterRow, name)
    if adapter is None or adapter.owner or version is None or version == adapter.active_version:
        return
    raise PermissionDeniedError(
        f"version {version} of the global adapter {name} is not released (active); pin the active "
        "version, or follow it by giving no version",
        param="version",
    )
