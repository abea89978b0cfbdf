"""Adapters: immutable versions in the database, where each one is loaded, and who
is using it.

Invariants:
- A version is its content: `version = sha256[:12]`, files in the store under the full
  digest, and vLLM knows it as `name--version`. A name never silently changes weights.
- Rows are written only after the files are in place; a failed upload leaves nothing.
- `loaded[(upstream, internal)]` records the upstream generation the load happened in;
  a restarted upstream has a new generation, so its adapters count as unloaded.
- One load per (upstream, adapter) at a time: concurrent first requests share it.
- Hot-swap: `activate` flips the pointer; requests hold a lease on the version they
  resolved, and a retired version is unloaded only when its last lease ends.
- Residency: at most `max_resident` adapters per upstream; the least recently used
  idle one is unloaded to make room (the base route's zero adapter is never evicted).
- A version vLLM refused is not served for a while, then tried again (`RETRY_FAILED_S`,
  doubling with each failure in a row up to `RETRY_FAILED_MAX_S`): one failed load (a
  busy engine, a transient error) does not break it for long, and a broken one is not
  retried on every request. The reason is the admin's to read (`describe`); a tenant is
  told only that it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from adaptserve.adapters.spec import BaseModelSpec, validate_adapter
from adaptserve.adapters.store import AdapterStore
from adaptserve.db import AdapterRow, AdapterVersionRow, AliasRow, Database, check_name
from adaptserve.errors import APIError, ConflictError, NotFoundError
from adaptserve.metrics import Metrics
from adaptserve.upstream.client import AdapterLoadError, Upstream

log = logging.getLogger(__name__)

RETRY_FAILED_S = 5.0
RETRY_FAILED_MAX_S = 300.0


class AdapterNotFoundError(NotFoundError):
    code = "adapter_not_found"


def internal_name(name: str, version: str) -> str:
    """The name vLLM knows a version by; `--` is reserved in public names for this."""
    return f"{name}--{version}"


@dataclass
class AdapterVersion:
    name: str
    version: str
    path: Path
    rank: int
    error: str | None = None  # set when vLLM refused it; it is then not served for a while
    failed_at: float = 0.0
    failures: int = 0  # in a row
    last_used: float = field(default_factory=time.monotonic)

    def refused(self) -> bool:
        """Refused recently: not served until its back-off has passed."""
        wait = min(RETRY_FAILED_S * 2 ** max(self.failures - 1, 0), RETRY_FAILED_MAX_S)
        if self.error is not None and time.monotonic() - self.failed_at >= wait:
            self.error = None  # try again
        return self.error is not None

    def failed(self, reason: str) -> None:
        self.error, self.failed_at, self.failures = reason, time.monotonic(), self.failures + 1

    @property
    def internal_name(self) -> str:
        return internal_name(self.name, self.version)


@dataclass(frozen=True)
class Target:
    """Where a request goes: the name the client used, the name vLLM knows, and the
    adapter to load first (None: the plain base model)."""

    public_name: str
    internal_name: str
    adapter: AdapterVersion | None


class AdapterRegistry:
    def __init__(
        self,
        db: Database,
        store: AdapterStore,
        base_name: str,
        base: BaseModelSpec | None,
        max_rank: int,
        max_resident: int,
        metrics: Metrics,
        targets: frozenset[str] | None = None,
    ) -> None:
        self.base_name = base_name
        self._db, self._store, self._base, self._max_rank = db, store, base, max_rank
        self._targets = targets  # the modules the engine has LoRA layers on (None: all)
        self._max_resident = max_resident
        self._metrics = metrics
        self._versions: dict[str, AdapterVersion] = {}  # internal name -> version
        self._zero: AdapterVersion | None = None
        self._base_direct = False  # the engine is known to give a request without an adapter none
        self._loaded: dict[tuple[str, str], int] = {}
        self._holders: dict[str, dict[str, Upstream]] = {}  # internal -> url -> upstream
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._loading: set[tuple[str, str]] = set()  # (url, internal) loads in flight: they take room too
        self._inflight: dict[str, int] = {}
        self._retired: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._startup: list[str] = []  # the settings file's adapters, loaded when an upstream comes up

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that owns loads and unloads; admin calls run in worker threads."""
        self._loop = loop

    # control plane -------------------------------------------------------------
    def register(self, name: str, staged: Path) -> dict:
        """Validate a staged folder, store it, record the version (the first becomes active)."""
        try:
            check_name(name, "an adapter name")
        except APIError:
            self._store.remove_staged(staged)
            raise
        spec, path = self._store.add(staged, lambda p: validate_adapter(p, self._base, self._max_rank, self._targets))
        version = spec.digest[:12]
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        with self._db.session() as s:
            adapter = s.get(AdapterRow, name)
            if adapter is None:
                adapter = AdapterRow(name=name, active_version=version)
                s.add(adapter)
                s.flush()
            if s.get(AdapterVersionRow, (name, version)) is None:
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
            active = adapter.active_version
        log.info("adapter %s version %s stored (%d bytes)", name, version, size)
        return {
            "name": name,
            "version": version,
            "active_version": active,
            "rank": spec.rank,
            "target_modules": list(spec.target_modules),
            "size_bytes": size,
        }

    def activate(self, name: str, version: str) -> dict:
        with self._db.session() as s:
            adapter = s.get(AdapterRow, name)
            if adapter is None:
                raise AdapterNotFoundError(f"adapter {name} does not exist")
            if s.get(AdapterVersionRow, (name, version)) is None:
                raise AdapterNotFoundError(f"adapter {name} has no version {version}", param="version")
            previous, adapter.active_version = adapter.active_version, version
            self._retired.discard(internal_name(name, version))
            pinned = s.scalar(
                select(func.count()).select_from(AliasRow).where(AliasRow.adapter == name, AliasRow.version == previous)
            )
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
        for version, digest, path in doomed:
            self._retire(internal_name(name, version))
            if not self._digest_in_use(digest):
                self._store.remove(Path(path))

    def describe(self, name: str) -> dict:
        with self._db.session() as s:
            adapter = s.get(AdapterRow, name)
            if adapter is None:
                raise AdapterNotFoundError(f"adapter {name} does not exist")
            rows = s.scalars(
                select(AdapterVersionRow)
                .where(AdapterVersionRow.adapter == name)
                .order_by(AdapterVersionRow.created_at)
            ).all()
            return {
                "name": name,
                "active_version": adapter.active_version,
                "versions": [self._version_dict(r) for r in rows],
            }

    def list(self) -> list[dict]:
        with self._db.session() as s:
            names = s.scalars(select(AdapterRow.name).order_by(AdapterRow.name)).all()
        return [self.describe(n) for n in names]

    def _version_dict(self, row: AdapterVersionRow) -> dict:
        internal = internal_name(row.adapter, row.version)
        live = self._versions.get(internal)
        holders = sorted(self._holders.get(internal, {}))
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
        spec = validate_adapter(path, self._base, self._max_rank, self._targets)
        self._zero = AdapterVersion(self.base_name, spec.digest[:12], path, spec.rank)

    def route_base_directly(self, direct: bool) -> None:
        """Send base requests to the engine without the zero adapter (True), or through it."""
        self._base_direct = direct

    def base_target(self, public_name: str) -> Target:
        zero = None if self._base_direct else self._zero
        return Target(public_name, zero.internal_name if zero else self.base_name, zero)

    def target(self, public_name: str, adapter: str, version: str | None) -> Target | None:
        """The version an alias resolves to, or None if it no longer exists or failed."""
        with self._db.session() as s:
            if version is None:
                row = s.get(AdapterRow, adapter)
                version = row.active_version if row else None
            found = s.get(AdapterVersionRow, (adapter, version)) if version else None
            if found is None:
                return None
            internal = internal_name(adapter, version)
            live = self._versions.setdefault(internal, AdapterVersion(adapter, version, Path(found.path), found.rank))
        return None if live.refused() else Target(public_name, internal, live)

    # data plane ------------------------------------------------------------------
    @contextmanager
    def lease(self, adapter: AdapterVersion | None) -> Iterator[None]:
        """Held for the life of a request (a stream included), so a hot-swap never
        unloads weights a request is still using."""
        if adapter is None:
            yield
            return
        name = adapter.internal_name
        self._inflight[name] = self._inflight.get(name, 0) + 1
        adapter.last_used = time.monotonic()
        try:
            yield
        finally:
            self._inflight[name] -= 1
            if self._inflight[name] == 0 and name in self._retired:
                self._spawn(self._unload_everywhere(name))

    async def ensure_loaded(self, upstream: Upstream, adapter: AdapterVersion | None) -> None:
        if adapter is None:
            return
        key = (upstream.url, adapter.internal_name)
        if self._loaded.get(key) == upstream.generation:
            return
        async with self._locks.setdefault(key, asyncio.Lock()):
            generation = upstream.generation
            if self._loaded.get(key) == generation:
                return
            await self._make_room(upstream, generation)
            started = time.perf_counter()
            self._loading.add(key)
            try:
                await upstream.load_adapter(adapter.internal_name, str(adapter.path))
            except AdapterLoadError as exc:
                self._metrics.adapter_loads.labels("failed").inc()
                if adapter is not self._zero:
                    adapter.failed(exc.message)
                    log.error("adapter %s failed to load on %s: %s", adapter.internal_name, upstream.url, exc.message)
                # The reason names server paths and internal names: it is the admin's.
                raise AdapterLoadError("The model server could not load this model; retry later.") from exc
            finally:
                self._loading.discard(key)
            self._loaded[key] = generation
            adapter.failures = 0
            self._holders.setdefault(adapter.internal_name, {})[upstream.url] = upstream
            self._metrics.adapter_loads.labels("ok").inc()
            self._metrics.adapter_load_seconds.observe(time.perf_counter() - started)
            log.info("loaded %s on %s in %.2fs", adapter.internal_name, upstream.url, time.perf_counter() - started)

    async def _make_room(self, upstream: Upstream, generation: int) -> None:
        zero, url = (self._zero.internal_name if self._zero else None), upstream.url
        while True:  # recounted each time: concurrent loads evict and load meanwhile
            loaded = [n for (u, n), gen in self._loaded.items() if u == url and gen == generation and n != zero]
            loading = [n for u, n in self._loading if u == url and n != zero]
            if len(loaded) + len(loading) < self._max_resident:
                return
            idle = [n for n in loaded if not self._inflight.get(n)]
            if not idle:
                return  # every resident adapter is busy: vLLM's own CPU cache copes
            victim = min(idle, key=lambda n: self._versions[n].last_used if n in self._versions else 0.0)
            await self._unload(upstream, victim)

    def forget(self, upstream: Upstream, adapter: AdapterVersion | None) -> None:
        """The upstream said it does not hold the adapter: load it again next time."""
        if adapter is not None:
            self._loaded.pop((upstream.url, adapter.internal_name), None)
            self._holders.get(adapter.internal_name, {}).pop(upstream.url, None)

    async def load_all(self, upstream: Upstream) -> None:
        """Called when an upstream comes (back) up, before it takes traffic: load the
        base route's zero adapter and the settings file's adapters (so `/ready` means
        they can be served). A refused adapter is marked failed; the others still load.
        Everything else loads again on first use."""
        for url, name in [k for k in self._loaded if k[0] == upstream.url]:
            self._loaded.pop((url, name))
            self._holders.get(name, {}).pop(url, None)
        if not self._base_direct:
            await self.ensure_loaded(upstream, self._zero)
        for name in self._startup:
            target = await asyncio.to_thread(self.target, name, name, None)
            if target is not None:
                with contextlib.suppress(AdapterLoadError):
                    await self.ensure_loaded(upstream, target.adapter)

    def _retire(self, internal: str) -> None:
        self._retired.add(internal)
        if not self._inflight.get(internal):
            self._spawn(self._unload_everywhere(internal))

    async def _unload_everywhere(self, internal: str) -> None:
        if internal not in self._retired or self._inflight.get(internal):
            return  # re-activated meanwhile, or leased again: the last lease retries
        for upstream in list(self._holders.get(internal, {}).values()):
            await self._unload(upstream, internal)
        self._versions.pop(internal, None)

    async def _unload(self, upstream: Upstream, internal: str) -> None:
        self._loaded.pop((upstream.url, internal), None)
        self._holders.get(internal, {}).pop(upstream.url, None)
        try:
            await upstream.unload_adapter(internal)
        except Exception as exc:  # an unload that fails only leaves vLLM holding a copy
            log.warning("unloading %s from %s failed: %r", internal, upstream.url, exc)
        self._metrics.adapter_unloads.inc()
        log.info("unloaded %s from %s", internal, upstream.url)

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        if self._loop is None or self._loop.is_closed():
            coro.close()  # not serving: nothing is loaded anywhere
            return
        asyncio.run_coroutine_threadsafe(coro, self._loop)  # safe from worker threads too

    def register_from_settings(self, adapters: dict[str, Path]) -> list[str]:
        """The settings file's adapters: stored and versioned like uploads; a bad one
        is logged and skipped. Returns the names that registered."""
        ok = []
        for name, path in adapters.items():
            if name in (self.base_name, "default"):
                log.error("adapter %s: the name is taken by the base model; skipped", name)
                continue
            try:
                stored = self.register(name, self._store.copy_folder(path))
            except (APIError, OSError) as exc:
                reason = exc.message if isinstance(exc, APIError) else str(exc)
                log.error("adapter %s (%s) is not served: %s", name, path, reason)
                continue
            if stored["active_version"] != stored["version"]:  # the file now names other weights
                self.activate(name, stored["version"])
            ok.append(name)
        self._startup = ok
        return ok
