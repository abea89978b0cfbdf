"""Residency: which adapter versions are loaded on which upstream, and who is using
them. Owned by the event loop; the catalog (worker threads) reaches it only through
the thread-safe `retire`/`unretire`, and reads `holders`.

Invariants:
- `resident[upstream][internal]` is the upstream generation the load happened in. An
  upstream that comes back gets a new generation, and `reconcile` carries over only
  what its engine still lists (a restarted engine lists nothing it held before): this
  record of our own loads, checked against vLLM, is the truth for residency.
- One load per (upstream, adapter) at a time: concurrent first requests share it.
- Requests hold a lease on the version they resolved; a retired version is unloaded
  only when its last lease ends, so a hot-swap never unloads weights in use.
- At most `max_resident` adapters per upstream; the least recently used idle one is
  unloaded to make room (a pinned one, the base route's zero adapter, never is), those
  the routing keeps there (`keep_first`: the picker's home sets) only after the others.
- A version vLLM refused is marked failed; its back-off (`AdapterVersion.backoff_left`)
  is what the pipeline answers 503 + `Retry-After` from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from adaptserve.metrics import Metrics
from adaptserve.upstream.client import AdapterLoadError, Upstream

log = logging.getLogger(__name__)

RETRY_FAILED_S = 5.0
RETRY_FAILED_MAX_S = 300.0


def internal_name(name: str, version: str) -> str:
    """The name vLLM knows a version by; `--` is reserved in public names for this."""
    return f"{name}--{version}"


@dataclass
class AdapterVersion:
    """One version as requests see it, with its load failures: a version vLLM refused
    is not served for a while (`RETRY_FAILED_S`, doubling with each failure in a row up
    to `RETRY_FAILED_MAX_S`), then tried again."""

    name: str
    version: str
    path: Path
    rank: int
    base: str = ""  # the LLM base it is served on: "" the base model, else a `models:` entry's name
    error: str | None = None  # set when vLLM refused it; it is then not served for a while
    failed_at: float = 0.0
    failures: int = 0  # in a row

    def backoff_left(self) -> float:
        """Seconds until a refused version is tried again (0.0: servable now; a back-off
        that has passed is cleared, so the next request loads it again)."""
        if self.error is None:
            return 0.0
        wait = min(RETRY_FAILED_S * 2 ** max(self.failures - 1, 0), RETRY_FAILED_MAX_S)
        left = self.failed_at + wait - time.monotonic()
        if left <= 0:
            self.error = None  # try again
            return 0.0
        return left

    def refused(self) -> bool:
        """Refused recently: not served until its back-off has passed."""
        return self.backoff_left() > 0

    def failed(self, reason: str) -> None:
        self.error, self.failed_at, self.failures = reason, time.monotonic(), self.failures + 1

    @property
    def internal_name(self) -> str:
        return internal_name(self.name, self.version)


@dataclass
class Residency:
    max_resident: int
    metrics: Metrics
    pinned: set[str] = field(default_factory=set)  # never evicted (the zero adapter)
    keep_first: Callable[[str, str], bool] | None = None  # (url, internal): evicted only after the others
    _resident: dict[str, dict[str, int]] = field(default_factory=dict)  # url -> internal -> generation
    _upstreams: dict[str, Upstream] = field(default_factory=dict)
    _versions: dict[str, AdapterVersion] = field(default_factory=dict)  # internal -> what was loaded
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    _loading: set[tuple[str, str]] = field(default_factory=set)  # loads in flight take room too
    _inflight: dict[str, int] = field(default_factory=dict)
    _last_used: dict[str, float] = field(default_factory=dict)
    _retired: set[str] = field(default_factory=set)
    _unloads: set[asyncio.Task[None]] = field(default_factory=set)  # held: the loop keeps only weak references
    _loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that owns loads, unloads and leases."""
        self._loop = loop

    # from any thread -----------------------------------------------------------------
    def retire(self, internal: str) -> None:
        """No new request resolves to this version: unload it once its last lease ends."""
        self._on_loop(self._retire_now, internal)

    def unretire(self, internal: str) -> None:
        """Active again (before it was unloaded): keep it."""
        self._on_loop(self._retired.discard, internal)

    def holders(self, internal: str) -> list[str]:
        """The upstreams that hold this version now."""
        return sorted(url for url, names in list(self._resident.items()) if internal in names)

    # on the loop ---------------------------------------------------------------------
    @contextmanager
    def lease(self, adapter: AdapterVersion | None) -> Iterator[None]:
        """Held for the life of a request (a stream included)."""
        if adapter is None:
            yield
            return
        name = adapter.internal_name
        self._inflight[name] = self._inflight.get(name, 0) + 1
        self._last_used[name] = time.monotonic()
        try:
            yield
        finally:
            self._inflight[name] -= 1
            if self._inflight[name] == 0 and name in self._retired:
                self._unload_soon(name)

    async def ensure_loaded(self, upstream: Upstream, adapter: AdapterVersion | None) -> None:
        if adapter is None or self.is_resident(upstream, adapter.internal_name):
            return
        key = (upstream.url, adapter.internal_name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self.is_resident(upstream, adapter.internal_name):
                return
            await self._make_room(upstream)
            started = time.perf_counter()
            self._loading.add(key)
            try:
                await upstream.load_adapter(adapter.internal_name, str(adapter.path))
            except AdapterLoadError as exc:
                self.metrics.adapter_loads.labels("failed").inc()
                if adapter.internal_name not in self.pinned:
                    adapter.failed(exc.message)
                    log.error("adapter %s failed to load on %s: %s", adapter.internal_name, upstream.url, exc.message)
                # The reason names server paths and internal names: it is the admin's.
                raise AdapterLoadError("The model server could not load this model; retry later.") from exc
            finally:
                self._loading.discard(key)
            self._resident.setdefault(upstream.url, {})[adapter.internal_name] = upstream.generation
            self._upstreams[upstream.url] = upstream
            self._versions[adapter.internal_name] = adapter
            adapter.failures = 0
            elapsed = time.perf_counter() - started
            self.metrics.adapter_loads.labels("ok").inc()
            self.metrics.adapter_load_seconds.observe(elapsed)
            log.info("loaded %s on %s in %.2fs", adapter.internal_name, upstream.url, elapsed)

    def forget(self, upstream: Upstream, adapter: AdapterVersion | None) -> None:
        """The upstream said it does not hold the adapter: load it again next time."""
        if adapter is not None:
            self._resident.get(upstream.url, {}).pop(adapter.internal_name, None)

    def reconcile(self, upstream: Upstream, listed: AbstractSet[str]) -> bool:
        """An upstream came (back) up with a new generation: what we loaded there and
        its engine still lists stays resident; the rest is gone. True when something
        we loaded is gone: the engine restarted."""
        before = self._resident.pop(upstream.url, {})
        kept = {name: upstream.generation for name in before if name in listed}
        if kept:
            self._resident[upstream.url] = kept
            self._upstreams[upstream.url] = upstream  # unloads go through this one (DNS makes new objects)
        return len(kept) < len(before)

    def in_use(self, base: str = "") -> list[AdapterVersion]:
        """Versions of `base` ("": the base model's) resident somewhere and not retired,
        most recently used first: the candidates to place on a replica of that base that
        comes up."""
        names = {name for here in self._resident.values() for name in here if name not in self._retired}
        names -= self.pinned
        ordered = sorted(names, key=lambda n: self._last_used.get(n, 0.0), reverse=True)
        return [self._versions[n] for n in ordered if n in self._versions and self._versions[n].base == base]

    async def load_all(self, upstream: Upstream, adapters: list[AdapterVersion]) -> None:
        """Load `adapters` on an upstream before it takes traffic (those resident there
        already are skipped); a refused one is marked failed and the others still load;
        a refused pinned one keeps the upstream out of service. Everything else loads
        on first use."""
        for adapter in adapters:
            try:
                await self.ensure_loaded(upstream, adapter)
            except AdapterLoadError:
                if adapter.internal_name in self.pinned:
                    raise  # the base route needs it: the upstream stays out of service and is tried again

    def is_resident(self, upstream: Upstream, internal: str) -> bool:
        """Loaded there by this gateway in the upstream's current life."""
        return self._resident.get(upstream.url, {}).get(internal) == upstream.generation

    async def _make_room(self, upstream: Upstream) -> None:
        while True:  # recounted each time: concurrent loads evict and load meanwhile
            here = self._resident.get(upstream.url, {})
            loaded = [n for n, gen in here.items() if gen == upstream.generation and n not in self.pinned]
            loading = [n for u, n in self._loading if u == upstream.url and n not in self.pinned]
            if len(loaded) + len(loading) < self.max_resident:
                return
            idle = [n for n in loaded if not self._inflight.get(n)]
            if not idle:
                return  # every resident adapter is busy: vLLM's own CPU cache copes
            await self._unload(upstream, min(idle, key=lambda n: self._eviction_order(upstream, n)))

    def _eviction_order(self, upstream: Upstream, internal: str) -> tuple[bool, float]:
        """Adapters the routing keeps on this upstream last, then least recently used first."""
        kept = self.keep_first is not None and self.keep_first(upstream.url, internal)
        return kept, self._last_used.get(internal, 0.0)

    def _retire_now(self, internal: str) -> None:
        self._retired.add(internal)
        if not self._inflight.get(internal) and self._loop is not None and not self._loop.is_closed():
            self._unload_soon(internal)

    def _unload_soon(self, internal: str) -> None:
        task = asyncio.get_running_loop().create_task(self._unload_everywhere(internal))
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)

    async def _unload_everywhere(self, internal: str) -> None:
        if internal not in self._retired or self._inflight.get(internal):
            return  # re-activated meanwhile, or leased again: the last lease retries
        for url in self.holders(internal):
            await self._unload(self._upstreams[url], internal)
        self._last_used.pop(internal, None)
        self._versions.pop(internal, None)

    async def _unload(self, upstream: Upstream, internal: str) -> None:
        self._resident.get(upstream.url, {}).pop(internal, None)
        try:
            await upstream.unload_adapter(internal)
        except Exception as exc:  # an unload that fails only leaves vLLM holding a copy
            log.warning("unloading %s from %s failed: %r", internal, upstream.url, exc)
        self.metrics.adapter_unloads.inc()
        log.info("unloaded %s from %s", internal, upstream.url)

    def _on_loop(self, fn: Callable[[str], object], internal: str) -> None:
        """Run `fn(internal)` on the owning loop (now, when called on it)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            fn(internal)  # not serving: nothing is loaded, only the bookkeeping changes
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(internal)
        else:
            loop.call_soon_threadsafe(fn, internal)
