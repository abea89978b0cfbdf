"""Tenants, their API keys and their model aliases, stored in the database.

A tenant sees only its own aliases; an alias points at the base model or at an
adapter the tenant may use (a global one or its own; pinned to a version, or following
the active version). Keys are stored as SHA-256 hashes; the plain key is returned
once, at creation. A key's role is "api" (the tenant's /v1 calls) or "admin" (its
tenant's part of the admin API); neither works where the other is asked for.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adaptserve.db import (
    AdapterRow,
    AdapterVersionRow,
    AliasRow,
    ApiKeyRow,
    Database,
    RevokedKeyRow,
    TenantRow,
    check_name,
    is_name,
    written_once_more,
)
from adaptserve.errors import AuthenticationError, ConflictError, InvalidRequestError, NotFoundError
from adaptserve.pii.policy import DEFAULT_POLICY, PiiPolicy
from adaptserve.read_cache import ReadCache
from adaptserve.tenancy.auth import Actor, Principal, bearer, hash_key
from adaptserve.tenancy.quotas import Limits

API_ROLE, ADMIN_ROLE = "api", "admin"
ROLES = (API_ROLE, ADMIN_ROLE)


@dataclass(frozen=True)
class Alias:
    tenant: str
    alias: str
    base: bool
    adapter: str | None
    version: str | None


def _alias(row: AliasRow) -> Alias:
    return Alias(row.tenant, row.alias, row.base, row.adapter, row.version)


class TenantNotFoundError(NotFoundError):
    code = "tenant_not_found"


class TenantRegistry:
    def __init__(
        self, db: Database, cache_groups: dict[str, str] | None = None, cache: ReadCache | None = None
    ) -> None:
        self._db = db
        self._cache = (
            cache if cache is not None else ReadCache(0.0)
        )  # keys' principals and aliases, as requests read them
        self._cache_groups = cache_groups or {}  # tenant name -> shared prefix-cache group
        self._owned: list[Callable[[Session, str], None]] = []

    def owns(self, delete_rows: Callable[[Session, str], None]) -> None:
        """Rows another registry keeps per tenant (its templates): `delete_rows(session,
        tenant)` runs in the transaction that deletes the tenant, so nothing outlives it."""
        self._owned.append(delete_rows)

    # tenants -------------------------------------------------------------
    def create(self, name: str) -> dict:
        check_name(name, "a tenant name")
        try:
            with self._db.session() as s:
                s.add(TenantRow(name=name))
        except IntegrityError as exc:
            raise ConflictError(f"tenant {name} already exists", param="name") from exc
        return {"name": name}

    def ensure(self, name: str) -> None:
        with self._db.session() as s:
            if s.get(TenantRow, name) is None:
                s.add(TenantRow(name=name))

    def list(self) -> builtins.list[dict]:
        with self._db.session() as s:
            rows = s.scalars(select(TenantRow).order_by(TenantRow.name)).all()
            return [_tenant_dict(r) for r in rows]

    def uid(self, name: str) -> str | None:
        """The live tenant of that name's never-reused uid (None: there is none)."""
        with self._db.session() as s:
            return s.scalar(select(TenantRow.uid).where(TenantRow.name == name))

    def delete(self, name: str) -> None:
        with self._db.session() as s:
            row = s.get(TenantRow, name)
            if row is None:
                raise TenantNotFoundError(f"tenant {name} does not exist")
            for key in s.scalars(select(ApiKeyRow).where(ApiKeyRow.tenant == name)):
                _revoke(s, key)
            s.execute(delete(ApiKeyRow).where(ApiKeyRow.tenant == name))
            s.execute(delete(AliasRow).where(AliasRow.tenant == name))
            for delete_rows in self._owned:
                delete_rows(s, name)
            s.delete(row)

    # keys ------------------------------------------------------------------
    def create_key(self, tenant: str, role: str = API_ROLE) -> dict:
        if role not in ROLES:
            raise InvalidRequestError(f"a key's role is one of {', '.join(ROLES)}", param="role")
        key = "sk-as-" + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        with self._db.session() as s:
            self._get(s, tenant)
            s.add(ApiKeyRow(id=key_id, tenant=tenant, key_hash=hash_key(key), prefix=key[:10], role=role))
        return {"id": key_id, "tenant": tenant, "role": role, "key": key}

    def add_key_hash(self, tenant: str, key_id: str, key_hash: str) -> bool:
        """Register a key known only by its hash (the settings' or the key file's key),
        replacing the key of that id. A revoked key is never registered again: → False."""
        with self._db.session() as s:
            if s.get(RevokedKeyRow, key_hash) is not None:
                return False
            existing = s.get(ApiKeyRow, key_id)
            if existing is None:
                s.add(ApiKeyRow(id=key_id, tenant=tenant, key_hash=key_hash, prefix="(configured)"))
            else:
                existing.key_hash, existing.tenant = key_hash, tenant
        return True

    def key_was_revoked(self, key_id: str) -> bool:
        with self._db.session() as s:
            return s.scalar(select(RevokedKeyRow.key_hash).where(RevokedKeyRow.key_id == key_id)) is not None

    def list_keys(self, tenant: str) -> builtins.list[dict]:
        with self._db.session() as s:
            self._get(s, tenant)
            rows = s.scalars(select(ApiKeyRow).where(ApiKeyRow.tenant == tenant).order_by(ApiKeyRow.created_at))
            return [
                {"id": r.id, "prefix": r.prefix, "role": r.role, "created_at": r.created_at.isoformat()} for r in rows
            ]

    def delete_key(self, tenant: str, key_id: str) -> None:
        with self._db.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None or row.tenant != tenant:
                raise NotFoundError(f"key {key_id} does not exist for tenant {tenant}", code="key_not_found")
            _revoke(s, row)
            s.delete(row)

    def authenticate(self, authorization: str | None) -> Principal:
        """The tenant of an API key (cached: see `ReadCache`; a failure never is)."""
        key_hash = hash_key(bearer(authorization))
        return self._cache.get(("key", key_hash), lambda: self._principal(key_hash))

    def _principal(self, key_hash: str) -> Principal:
        # The lookup is by hash: equal-length hex digests, indexed; no secret is compared
        # character by character, so timing reveals nothing about a valid key.
        with self._db.session() as s:
            tenant = s.scalar(
                select(TenantRow)
                .join(ApiKeyRow, ApiKeyRow.tenant == TenantRow.name)
                .where(ApiKeyRow.key_hash == key_hash, ApiKeyRow.role == API_ROLE)
            )
            if tenant is None:
                raise AuthenticationError("Incorrect API key provided.")
            limits = Limits(tenant.requests_per_minute, tenant.tokens_per_minute, tenant.max_concurrent)
            group = self._cache_groups.get(tenant.name)
            # vLLM salts the prefix cache's block hashes with this: tenants share cached
            # blocks only within a group the operator declared.
            salt = f"group-{group}" if group else f"tenant-{tenant.uid}"
            pii = PiiPolicy.model_validate(tenant.pii) if tenant.pii else DEFAULT_POLICY
            return Principal(tenant=tenant.name, uid=tenant.uid, limits=limits, cache_salt=salt, pii=pii)

    def authenticate_admin(self, authorization: str | None) -> Actor:
        """A tenant admin key → its actor (the operator's key is checked before this)."""
        key = bearer(authorization)
        with self._db.session() as s:
            found = s.execute(
                select(ApiKeyRow.id, TenantRow.name, TenantRow.uid)
                .join(TenantRow, ApiKeyRow.tenant == TenantRow.name)
                .where(ApiKeyRow.key_hash == hash_key(key), ApiKeyRow.role == ADMIN_ROLE)
            ).first()
        if found is None:
            raise AuthenticationError("Incorrect admin key provided.")
        return Actor(tenant=found.name, key_id=found.id, uid=found.uid)

    def set_quotas(self, name: str, limits: Limits) -> dict:
        with self._db.session() as s:
            row = self._get(s, name)
            row.requests_per_minute = limits.requests_per_minute
            row.tokens_per_minute = limits.tokens_per_minute
            row.max_concurrent = limits.max_concurrent
            return _tenant_dict(row)

    def pii(self, name: str) -> PiiPolicy:
        with self._db.session() as s:
            row = self._get(s, name)
            return PiiPolicy.model_validate(row.pii) if row.pii else DEFAULT_POLICY

    def set_pii(self, name: str, policy: PiiPolicy) -> PiiPolicy:
        with self._db.session() as s:
            self._get(s, name).pii = policy.model_dump(mode="json")
        return policy

    # aliases -----------------------------------------------------------------
    def set_alias(self, tenant: str, alias: str, *, base: bool, adapter: str | None, version: str | None) -> Alias:
        """Create or repoint an alias (the last write wins). Two writes that both create
        it race on its primary key: the loser is written again, now as an update."""
        check_name(alias, "an alias", param="alias")
        if base == (adapter is not None):
            raise InvalidRequestError('give either {"base": true} or {"adapter": name}', param="adapter")
        written_once_more(
            lambda: self._write_alias(tenant, alias, base, adapter, version),
            f"alias {alias} was changed by another request at once; try again",
        )
        return Alias(tenant, alias, base, adapter, version)

    def _write_alias(self, tenant: str, alias: str, base: bool, adapter: str | None, version: str | None) -> None:
        with self._db.session() as s:
            owner = self._get(s, tenant).uid
            if adapter is not None:
                row = s.get(AdapterRow, adapter)
                if row is None or row.owner not in ("", owner):  # another tenant's is not there for this one
                    raise NotFoundError(f"adapter {adapter} does not exist", param="adapter", code="adapter_not_found")
                if version is not None and s.get(AdapterVersionRow, (adapter, version)) is None:
                    raise NotFoundError(
                        f"adapter {adapter} has no version {version}", param="version", code="adapter_not_found"
                    )
            s.merge(AliasRow(tenant=tenant, alias=alias, base=base, adapter=adapter, version=version))

    def delete_alias(self, tenant: str, alias: str) -> None:
        with self._db.session() as s:
            row = s.get(AliasRow, (tenant, alias))
            if row is None:
                raise NotFoundError(f"tenant {tenant} has no model {alias}", code="model_not_found")
            s.delete(row)

    def aliases(self, tenant: str) -> builtins.list[Alias]:
        with self._db.session() as s:
            self._get(s, tenant)
            rows = s.scalars(select(AliasRow).where(AliasRow.tenant == tenant).order_by(AliasRow.alias))
            return [_alias(r) for r in rows]

    def alias(self, tenant: str, alias: str, fresh: bool = False) -> Alias | None:
        """A tenant's alias (cached: see `ReadCache`; `fresh`: read from the database, as
        an admin write that decides on it must). A name no alias can have is None at
        once: neither a database read nor a cache entry (a client's `model` may be long)."""
        if not is_name(alias):
            return None
        if fresh:
            return self._read_alias(tenant, alias)
        return self._cache.get(("alias", tenant, alias), lambda: self._read_alias(tenant, alias))

    def _read_alias(self, tenant: str, alias: str) -> Alias | None:
        with self._db.session() as s:
            row = s.get(AliasRow, (tenant, alias))
            return None if row is None else _alias(row)

    @staticmethod
    def _get(s: Session, tenant: str) -> TenantRow:
        row = s.get(TenantRow, tenant)
        if row is None:
            raise TenantNotFoundError(f"tenant {tenant} does not exist")
        return row


def _revoke(s: Session, key: ApiKeyRow) -> None:
    if s.get(RevokedKeyRow, key.key_hash) is None:
        s.add(RevokedKeyRow(key_hash=key.key_hash, key_id=key.id, tenant=key.tenant))


def _tenant_dict(row: TenantRow) -> dict:
    return {
        "name": row.name,
        "created_at": row.created_at.isoformat(),
        "quotas": {
            "requests_per_minute": row.requests_per_minute,
            "tokens_per_minute": row.tokens_per_minute,
            "max_concurrent": row.max_concurrent,
        },
    }
