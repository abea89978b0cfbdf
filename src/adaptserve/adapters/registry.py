"""Which adapters the gateway serves and which upstream holds each one.

Invariants:
- An adapter is served under its public name only after it validated against the
  base; vLLM sees it under an internal, content-addressed name (`name--digest`), so a
  name can never silently point at other weights.
- `loaded[(upstream, internal)]` records the upstream generation the load happened
  in; a restarted upstream has a new generation, so its adapters count as unloaded.
- One load per (upstream, adapter) at a time: concurrent first requests wait on the
  same lock and find it loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from adaptserve.adapters.spec import AdapterInvalidError, BaseModelSpec, validate_adapter
from adaptserve.errors import ModelNotFoundError
from adaptserve.upstream.client import AdapterLoadError, Upstream

log = logging.getLogger(__name__)


@dataclass
class AdapterVersion:
    name: str
    path: Path
    digest: str
    rank: int
    created: int = field(default_factory=lambda: int(time.time()))
    error: str | None = None  # set when vLLM refused it; it is then not served

    @property
    def internal_name(self) -> str:
        return f"{self.name}--{self.digest[:12]}"


@dataclass(frozen=True)
class Target:
    """Where a request goes: the name the client used, the name vLLM knows, and the
    adapter to load first (None: the plain base model)."""

    public_name: str
    internal_name: str
    adapter: AdapterVersion | None


class AdapterRegistry:
    def __init__(self, base_name: str, base: BaseModelSpec | None, max_rank: int) -> None:
        self.base_name = base_name
        self._base = base
        self._max_rank = max_rank
        self._adapters: dict[str, AdapterVersion] = {}
        self._zero: AdapterVersion | None = None
        self._loaded: dict[tuple[str, str], int] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def add(self, name: str, path: Path) -> AdapterVersion | None:
        """Validate and register; a bad adapter is logged and skipped, never fatal."""
        if name in (self.base_name, "default"):
            log.error("adapter %s: the name is taken by the base model; skipped", name)
            return None
        try:
            spec = validate_adapter(path, self._base, self._max_rank)
        except AdapterInvalidError as exc:
            log.error("adapter %s (%s) is not served: %s", name, path, exc.message)
            return None
        version = AdapterVersion(name=name, path=path, digest=spec.digest, rank=spec.rank)
        self._adapters[name] = version
        log.info("adapter %s registered as %s", name, version.internal_name)
        return version

    def set_zero_adapter(self, path: Path) -> None:
        spec = validate_adapter(path, self._base, self._max_rank)
        self._zero = AdapterVersion(name=self.base_name, path=path, digest=spec.digest, rank=spec.rank)

    def served(self) -> list[AdapterVersion]:
        return [a for a in self._adapters.values() if a.error is None]

    def resolve(self, model: str) -> Target:
        if model in (self.base_name, "default"):
            zero = self._zero
            return Target(model, zero.internal_name if zero else self.base_name, zero)
        adapter = self._adapters.get(model)
        if adapter is None or adapter.error is not None:
            raise ModelNotFoundError(model)
        return Target(model, adapter.internal_name, adapter)

    async def ensure_loaded(self, upstream: Upstream, adapter: AdapterVersion | None) -> None:
        if adapter is None:
            return
        key = (upstream.url, adapter.internal_name)
        if self._loaded.get(key) == upstream.generation:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            generation = upstream.generation
            if self._loaded.get(key) == generation:
                return
            started = time.perf_counter()
            await upstream.load_adapter(adapter.internal_name, str(adapter.path))
            self._loaded[key] = generation
            log.info("loaded %s on %s in %.2fs", adapter.internal_name, upstream.url, time.perf_counter() - started)

    def forget(self, upstream: Upstream, adapter: AdapterVersion | None) -> None:
        """The upstream said it does not hold the adapter: load it again next time."""
        if adapter is not None:
            self._loaded.pop((upstream.url, adapter.internal_name), None)

    async def load_all(self, upstream: Upstream) -> None:
        """Called when an upstream comes (back) up: load the base route and every
        adapter, so `/ready` means they can all be served. A refused adapter is
        marked failed and logged; the others still load."""
        for adapter in [a for a in (self._zero, *self._adapters.values()) if a is not None]:
            try:
                await self.ensure_loaded(upstream, adapter)
            except AdapterLoadError as exc:
                if adapter is self._zero:
                    raise
                adapter.error = exc.message
                log.error("adapter %s failed to load on %s: %s", adapter.name, upstream.url, exc.message)
