"""The adapter catalog: immutable versions in the database and what an alias resolves
to. Synchronous and thread-safe (admin calls run in worker threads); what is loaded
where is `residency.py`'s, told about retirements through `Residency.retire`.

Invariants:
- A name has one owner, for good: the operator ("", a global adapter) or one tenant
  (its uid). Only the owner adds versions to it; anyone else's upload or derivation
  under it is refused (409 `name_taken`) and changes nothing, so neither side can
  squat the other's name and then serve or activate weights under it (the rules:
  `ownership.py`).
- A version is its content: `version = sha256[:12]`, files in the store under the full
  digest, and vLLM knows it as `name--version`. A name never silently changes weights.
- Rows are written only after the files are in place; a failed upload leaves nothing.
- A name is bound to one LLM base, for good (`bases.py`): the base model or a generate
  entry of `models:`; its versions are checked against that base's shapes, and its
  aliases are served on that base's engines (`Target.engine`).
- Hot-swap: `activate` flips the pointer and retires the previous version (unless an
  alias pins it); residency unloads it when its last request ends.
- A version vLLM refused is held back until its back-off has passed
  (`AdapterVersion.backoff_left`): still there (listed, resolved), answered 503 with
  `Retry-After` by the pipeline, never as missing. The reason is the admin's to read
  (`describe`); a tenant is told only that it failed.
- A tenant admin reads (pins, derives from) only released versions of a global
  adapter (`check_released`), never the operator's staged one.
- A tenant's versions (uploads and derivations) take at most
  `Quota.storage_bytes_per_tenant` on disk together (`Quota.check_room`, in the
  transaction that records one, and before a derivation starts); derivations run within
  `quota.DerivationSlots`.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from adaptserve.adapters.bases import BASE_MODEL, AdapterBases, one_base, refuse_rebased, zero_version
from adaptserve.adapters.ownership import check_released, refuse_taken
from adaptserve.adapters.quota import DerivationSlots, Quota
from adaptserve.adapters.residency import AdapterVersion, Residency, internal_name
from adaptserve.adapters.spec import AdapterSpec, BaseModelSpec, validate_adapter
from adaptserve.adapters.store import AdapterStore
from adaptserve.db import AdapterRow, AdapterVersionRow, AliasRow, Database, TenantRow, check_name, written_once_more
from adaptserve.errors import (
    APIError,
    ConflictError,
    NameTakenError,
    NotFoundError,
    StorageQuotaError,
)
from adaptserve.read_cache import ReadCache

log = logging.getLogger(__name__)


class AdapterNotFoundError(NotFoundError):
    code = "adapter_not_found"


@dataclass(frozen=True)
class Target:
    """Where a request goes: the name the client used, the name vLLM knows, the
    adapter to load first (None: the plain base model), and the generate model of
    `models:` whose engines serve it (None: the base model's; an adapter's is its base)."""

    public_name: str
    internal_name: str
    adapter: AdapterVersion | None
    engine: str | None = None


class AdapterCatalog:
    def __init__(
        self,
        db: Database,
        store: AdapterStore,
        base_name: str,
        base: BaseModelSpec | None,
        max_rank: int,
        residency: Residency,
        targets: frozenset[str] | None = None,
        quota: Quota | None = None,
        cache: ReadCache | None = None,
        entries: Mapping[str, BaseModelSpec | None] | None = None,
    ) -> None:
        self.base_name = base_name
        self._bases = AdapterBases(base_name, base, entries or {})  # what each base's adapters are checked against
        self._cache = cache if cache is not None else ReadCache(0.0)  # what aliases resolve to, as requests read it
        self._db, self._store, self._base, self._max_rank = db, store, base, max_rank
        self._targets = targets  # the modules the engine has LoRA layers on (None: all)
        self._residency = residency
        self._versions: dict[str, AdapterVersion] = {}  # internal name -> version, as requests see it
        self._zero: AdapterVersion | None = None
        self._base_direct = False  # the engine is known to give a request without an adapter none
        self._startup: dict[str, str] = {}  # the settings file's adapters and their bases, loaded as upstreams come up
        self._quota = quota or Quota()
        self._deriving = DerivationSlots(self._quota)  # `derive`'s builds running now

    # control plane -------------------------------------------------------------
    def register(self, name: str, staged: Path, owner: str = "", base: str = BASE_MODEL) -> dict:
        """Validate a staged folder against `base`'s shapes, store it, record the version
        (the first becomes active and binds the name to `base`). `owner`: the pushing
        tenant's uid ("": the operator, whose adapters are global); versions are added
        only to the owner's own name (else 409 `name_taken`), for its base (else 409)."""
        try:
            check_name(name, "an adapter name")
            spec_of_base = self._bases.spec(base)
        except APIError:
            self._store.remove_staged(staged)
            raise
        checked = lambda p: validate_adapter(p, spec_of_base, self._max_rank, self._targets)  # noqa: E731
        spec, path, fresh = self._store.add(staged, checked)
        version = spec.digest[:12]
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        try:
            active = written_once_more(  # a concurrent upload may create the name (or this version) meanwhile
                lambda: self._record_version(name, owner, base, version, spec, path, size),
                f"adapter {name} was changed by another upload at once; try again",
            )
        except (NameTakenError, StorageQuotaError, ConflictError):
            if fresh and not self._digest_in_use(spec.digest):  # another upload's folder is not this one's to remove
                self._store.remove(path)
            raise
        self._residency.unretire(internal_name(name, version))  # registered again after a removal: served
        log.info("adapter %s version %s stored (%d bytes)", name, version, size)
        return {
            "name": name,
            "base": self._bases.shown(base),
            "version": version,
            "active_version": active,
            "rank": spec.rank,
            "target_modules": list(spec.target_modules),
            "size_bytes": size,
        }

    def derive(self, name: str, owner: str, build: Callable[[Path], dict], sources: Sequence[str] = ()) -> dict:
        """A new version of `name` that `build` writes into a staging folder from the
        adapters `sources`, registered like an upload for their base (`one_base`); the
        answer is `register`'s plus what `build` returned. The name, its owner and base
        are checked first, and a tenant already at its storage quota is refused before
        any work; builds run within `DerivationSlots` (dense SVDs take whole cores): one
        over them gets 429 at once."""
        with self._db.session() as s:
            base = one_base(s.execute(select(AdapterRow.name, AdapterRow.base).where(AdapterRow.name.in_(sources))))
        self.claim(name, owner, base)
        if owner:
            with self._db.session() as s:
                self._quota.check_room(s, owner, 1)
        with self._deriving.held(owner):
            staged = self._store.staging()
            try:
                facts = build(staged)
                self._store.check_size(staged)
            except BaseException:
                self._store.remove_staged(staged)
                raise
        return {**self.register(name, staged, owner, base), **facts}

    def claim(self, name: str, owner: str, base: str = BASE_MODEL) -> None:
        """Refuse early (before an upload is unpacked or a derivation built) a name that
        is not valid, is someone else's or is bound to another base, or a base that is
        none (an entry since removed: 404); `register` checks again as it writes."""
        check_name(name, "an adapter name")
        self._bases.spec(base)
        with self._db.session() as s:
            held = s.execute(select(AdapterRow.owner, AdapterRow.base).where(AdapterRow.name == name)).first()
            if held is not None:
                refuse_taken(s, name, held.owner, owner)
                refuse_rebased(name, held.base, base, self._bases)

    def check_released(self, name: str, version: str | None) -> None:
        """What a tenant admin may read of a global adapter (`ownership.check_released`)."""
        with self._db.session() as s:
            check_released(s, name, version)

    def stored(self, name: str, version: str | None = None) -> tuple[str, Path]:
        """A version (default: the active one) and where its files are stored."""
        with self._db.session() as s:
            adapter = s.get(AdapterRow, name)
            if adapter is None:
                raise AdapterNotFoundError(f"adapter {name} does not exist")
            found = version or adapter.active_version
            row = s.get(AdapterVersionRow, (name, found)) if found else None
            if row is None and version is None:
                raise AdapterNotFoundError(f"adapter {name} has no active version")
            if row is None:
                raise AdapterNotFoundError(f"adapter {name} has no version {version}", param="version")
            return row.version, Path(row.path)

    def _record_version(
        self, name: str, owner: str, base: str, version: str, spec: AdapterSpec, path: Path, size: int
    ) -> str | None:
        """The version's row (and the adapter's, if new), owner and base checked in the
        same transaction; returns the active version."""
        with self._db.session() as s:
            adapter = s.get(AdapterRow, name, with_for_update=True)
            if adapter is None:
                adapter = AdapterRow(name=name, owner=owner, base=base, active_version=version)
                s.add(adapter)
                s.flush()
            else:
                refuse_taken(s, name, adapter.owner, owner)
                refuse_rebased(name, adapter.base, base, self._bases)
            if s.get(AdapterVersionRow, (name, version)) is None:
                if adapter.owner:  # a tenant's: its storage quota (global adapters are the operator's disk)
                    self._quota.check_room(s, adapter.owner, size)
                s.add(
                    AdapterVersionRow(
                        adapter=name,
                        version=version,
                        digest=spec.digest,
                        path=str(path),
                        rank=spec.rank,
                        target_modules=list(spec.target_modules),
                        size_bytes=size,
                    )
                )
            return adapter.active_version

    def activate(self, name: str, version: str) -> dict:
        with self._db.session() as s:
            adapter = s.get(AdapterRow, name)
            if adapter is None:
                raise AdapterNotFoundError(f"adapter {name} does not exist")
            if s.get(AdapterVersionRow, (name, version)) is None:
                raise AdapterNotFoundError(f"adapter {name} has no version {version}", param="version")
            previous, adapter.active_version = adapter.active_version, version
            pinned = s.scalar(
                select(func.count()).select_from(AliasRow).where(AliasRow.adapter == name, AliasRow.version == previous)
            )
        self._residency.unretire(internal_name(name, version))  # committed: served again
        if previous and previous != version and not pinned:
            self._retire(internal_name(name, previous))
        log.info("adapter %s: active version %s -> %s", name, previous, version)
        return {"name": name, "active_version": version, "previous_version": previous}

    def remove(self, name: str) -> None:
        with self._db.session() as s:
            adapter = s.get(AdapterRow, name)
            if adapter is None:
                raise AdapterNotFoundError(f"adapter {name} does not exist")
            users = s.scalars(select(AliasRow).where(AliasRow.adapter == name)).all()
            if users:
                names = ", ".join(f"{a.tenant}/{a.alias}" for a in users)
                raise ConflictError(f"adapter {name} is used by the models {names}; delete or repoint them first")
            versions = s.scalars(select(AdapterVersionRow).where(AdapterVersionRow.adapter == name)).all()
            doomed = [(v.version, v.digest, v.path) for v in versions]
            s.delete(adapter)
        # Gone: a later adapter of this name is not the settings file's. A new dict, not a pop:
        # an upstream's on_up may be walking the old one in another thread (`startup_adapters`).
        self._startup = {n: b for n, b in self._startup.items() if n != name}
        for version, digest, path in doomed:
            self._versions.pop(internal_name(name, version), None)
            self._retire(internal_name(name, version))
            if not self._digest_in_use(digest):
                self._store.remove(Path(path))

    def describe(self, name: str, *, operator: bool = True) -> dict:
        """An adapter and its versions; where each is loaded and why vLLM refused one
        (server paths, engine addresses) only for the operator."""
        with self._db.session() as s:
            adapter = s.get(AdapterRow, name)
            if adapter is None:
                raise AdapterNotFoundError(f"adapter {name} does not exist")
            rows = s.scalars(
                select(AdapterVersionRow)
                .where(AdapterVersionRow.adapter == name)
                .order_by(AdapterVersionRow.created_at)
            ).all()
            owner = s.scalar(select(TenantRow.name).where(TenantRow.uid == adapter.owner)) if adapter.owner else None
            versions = [self._version_dict(r) for r in rows]
        if not operator:
            versions = [{k: v for k, v in d.items() if k not in ("upstreams", "error")} for d in versions]
        return {
            "name": name,
            "base": self._bases.shown(adapter.base),
            "owner": owner if owner or not adapter.owner else "(a deleted tenant)",
            "active_version": adapter.active_version,
            "versions": versions,
        }

    def list(self, visible_to: str | None = None, bases: Collection[str] = ()) -> builtins.list[dict]:
        """Every adapter, or those the tenant of uid `visible_to` may use (global and
        its own, for the base model or one of `bases`, the entries it may call)."""
        query = select(AdapterRow.name).order_by(AdapterRow.name)
        if visible_to is not None:
            query = query.where(AdapterRow.owner.in_(("", visible_to)), AdapterRow.base.in_((BASE_MODEL, *bases)))
        with self._db.session() as s:
            names = s.scalars(query).all()
        return [self.describe(n, operator=visible_to is None) for n in names]

    def owner(self, name: str) -> str | None:
        """The uid of the tenant an adapter belongs to ("": global); None when there is none."""
        with self._db.session() as s:
            return s.scalar(select(AdapterRow.owner).where(AdapterRow.name == name))

    def base_of(self, name: str) -> str | None:
        """The base an adapter is bound to ("": the base model); None when there is none."""
        with self._db.session() as s:
            return s.scalar(select(AdapterRow.base).where(AdapterRow.name == name))

    def _version_dict(self, row: AdapterVersionRow) -> dict:
        internal = internal_name(row.adapter, row.version)
        live = self._versions.get(internal)
        holders = self._residency.holders(internal)
        state = "failed" if live and live.error else ("ready" if holders else "stored")
        return {
            "version": row.version,
            "digest": row.digest,
            "rank": row.rank,
            "target_modules": row.target_modules,
            "size_bytes": row.size_bytes,
            "created_at": row.created_at.isoformat(),
            "state": state,
            "upstreams": holders,
            "error": live.error if live else None,
        }

    def _digest_in_use(self, digest: str) -> bool:
        with self._db.session() as s:
            return bool(
                s.scalar(select(func.count()).select_from(AdapterVersionRow).where(AdapterVersionRow.digest == digest))
            )

    # resolution ------------------------------------------------------------------
    def set_zero_adapter(self, path: Path) -> None:
        self._zero = zero_version(self.base_name, path, self._base, self._max_rank, self._targets)
        self._residency.pinned.add(self._zero.internal_name)

    def route_base_directly(self, direct: bool) -> None:
        """Send base requests to the engine without the zero adapter (True), or through it."""
        self._base_direct = direct

    def base_target(self, public_name: str) -> Target:
        zero = None if self._base_direct else self._zero
        return Target(public_name, zero.internal_name if zero else self.base_name, zero)

    def target(self, public_name: str, adapter: str, version: str | None) -> Target | None:
        """The version an alias resolves to, or None if it no longer exists. A version in
        its load back-off is still a target (the caller reads `backoff_left`). The
        database read is cached (see `ReadCache`)."""
        found = self._cache.get(("version", adapter, version), lambda: self._stored_version(adapter, version))
        if found is None:
            return None
        version, path, rank, base = found
        internal = internal_name(adapter, version)
        live = self._versions.setdefault(internal, AdapterVersion(adapter, version, path, rank, base))
        return Target(public_name, internal, live, engine=base or None)

    def _stored_version(self, adapter: str, version: str | None) -> tuple[str, Path, int, str] | None:
        """(version, folder, rank, base) of an adapter's version (None: its active one), or None."""
        with self._db.session() as s:
            row = s.get(AdapterRow, adapter)
            version = (row.active_version if row else None) if version is None else version
            found = s.get(AdapterVersionRow, (adapter, version)) if version else None
            if found is None or version is None or row is None:
                return None
            return version, Path(found.path), found.rank, row.base

    def startup_adapters(self, base: str = BASE_MODEL) -> builtins.list[AdapterVersion]:
        """What an upstream of `base` ("": the base model, else a `models:` entry) loads
        when it comes (back) up, before it takes traffic: the base model's zero adapter
        (an entry's is its `Engine.zero`) and the settings file's adapters for `base` (so
        `/ready` means they can be served), only those still bound to it."""
        found = [self._zero] if base == BASE_MODEL and self._zero is not None and not self._base_direct else []
        for name, listed in self._startup.items():
            if listed != base:
                continue
            target = self.target(name, name, None)
            if target is None or target.engine != (base or None):  # gone, or another base's since (removed, pushed)
                continue
            if target.adapter is not None and not target.adapter.refused():
                found.append(target.adapter)
        return found

    def keep(self, name: str, version: str | None) -> None:
        """An alias now pins this version: serve it again if it was being retired."""
        if version is not None:
            self._residency.unretire(internal_name(name, version))

    def _retire(self, internal: str) -> None:
        self._residency.retire(internal)

    def register_from_settings(
        self, adapters: Mapping[str, Path], bases: Mapping[str, str] | None = None
    ) -> builtins.list[str]:
        """The settings file's adapters: stored and versioned like uploads, for the base
        `bases` names (default the base model), checked against its shapes; a bad one is
        logged and skipped. Returns the names that registered."""
        ok: dict[str, str] = {}  # name -> base
        for name, path in adapters.items():
            base = (bases or {}).get(name, BASE_MODEL)
            if name in (self.base_name, "default", *self._bases.entries):
                log.error("adapter %s: the name is taken by the base model or a model of models:; skipped", name)
                continue
            try:
                stored = self.register(name, self._store.copy_folder(path), base=base)
            except (APIError, OSError) as exc:
                reason = exc.message if isinstance(exc, APIError) else str(exc)
                log.error("adapter %s (%s) is not served: %s", name, path, reason)
                continue
            if stored["active_version"] != stored["version"]:  # the file now names other weights
                self.activate(name, stored["version"])
            ok[name] = base
        self._startup = ok
        return list(ok)
