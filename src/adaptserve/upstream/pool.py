"""The set of vLLM upstreams: health watching, load scraping, discovery, readiness.

Each upstream has its own watcher task. When an upstream becomes healthy it gets a
new generation (unique in the pool) and `on_up` runs (adapters are reconciled and
placed) before it is marked READY, so no request is routed to it before its adapters
are resident. A refused connection marks it down at once; a slow or failed /health
answer (a busy engine on a loaded machine is slow to answer) only after
`failures_to_down` in a row. With more than one upstream, each ready one's /metrics
is scraped every `scrape_interval_s` for its queue (`Upstream.load`). With a
`Discovery`, the set itself follows DNS: new addresses join, vanished ones leave.
`context_length` is the smallest context the upstreams in service reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from adaptserve.errors import APIError, UpstreamUnavailableError
from adaptserve.upstream.client import Probe, State, Upstream
from adaptserve.upstream.discovery import Discovery

log = logging.getLogger(__name__)

OnUp = Callable[[Upstream, list[Upstream]], Awaitable[None]]  # (coming up, those in service)


@dataclass(frozen=True)
class PoolTiming:
    interval_s: float = 2.0  # health probes of a ready upstream (0.5 s while down)
    failures_to_down: int = 3
    scrape_interval_s: float = 0.25


class UpstreamPool:
    def __init__(
        self,
        upstreams: list[Upstream],
        on_up: OnUp,
        timing: PoolTiming = PoolTiming(),
        discovery: Discovery | None = None,
    ) -> None:
        if not upstreams and discovery is None:
            raise ValueError("an upstream pool needs at least one upstream")
        self.upstreams = upstreams
        self._on_up, self._timing, self._discovery = on_up, timing, discovery
        self._turn = itertools.count()
        self._generations = itertools.count(1)  # never reused: residency compares them
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for upstream in self.upstreams:
            self._watch_soon(upstream)
        self._tasks.append(asyncio.create_task(self._scrape_loop(), name="scrape upstreams"))
        if self._discovery is not None:
            self._tasks.append(asyncio.create_task(self._discover_loop(self._discovery), name="discover upstreams"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._watchers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for upstream in self.upstreams:
            await upstream.aclose()

    def ready(self) -> bool:
        return any(u.state is State.READY for u in self.upstreams)

    def ready_upstreams(self) -> list[Upstream]:
        return [u for u in self.upstreams if u.state is State.READY]

    def context_length(self, configured: int) -> int:
        """The longest sequence every upstream in service takes: the smallest context
        they reported, one that reported none counting as `configured` (the answer too
        while none is in service)."""
        return min((u.max_model_len or configured for u in self.ready_upstreams()), default=configured)

    def states(self) -> list[tuple[str, bool, int]]:
        """(url, in service, in flight) per upstream: what the metrics show."""
        return [(u.url, u.state is State.READY, u.inflight) for u in self.upstreams]

    def pick(self, avoid: Collection[Upstream] = ()) -> Upstream:
        """Round-robin over READY upstreams less `avoid` (calls that need no adapter:
        tokenizing, encoders, a generate model of `models:`); 503 with Retry-After when
        there is none."""
        ready = [u for u in self.ready_upstreams() if u not in avoid]
        if not ready:
            raise UpstreamUnavailableError()
        return ready[next(self._turn) % len(ready)]

    def _watch_soon(self, upstream: Upstream) -> None:
        self._watchers[upstream.url] = asyncio.create_task(self._watch(upstream), name=f"watch {upstream.url}")

    async def _watch(self, upstream: Upstream) -> None:
        failures, limit = 0, self._timing.failures_to_down
        while True:
            probe = await upstream.probe()
            failures = 0 if probe is Probe.OK else failures + 1
            if probe is Probe.OK and upstream.state is not State.READY:
                await self._bring_up(upstream)
            elif probe is Probe.REFUSED or failures >= limit:
                upstream.mark_down()
            elif failures and upstream.state is State.READY:
                log.warning("upstream %s failed a health probe (%d of %d)", upstream.url, failures, limit)
            # Poll fast while down so recovery is noticed within a second.
            await asyncio.sleep(self._timing.interval_s if upstream.state is State.READY else 0.5)

    async def _bring_up(self, upstream: Upstream) -> None:
        upstream.generation = next(self._generations)
        try:
            await self._on_up(upstream, self.ready_upstreams())
        except APIError as exc:
            log.error("upstream %s is healthy but not usable yet: %s", upstream.url, exc.message)
            upstream.mark_down()
            return
        except Exception:  # whatever it was, the upstream stays out and is tried again
            log.exception("bringing upstream %s up failed", upstream.url)
            upstream.mark_down()
            return
        upstream.state = State.READY
        log.info("upstream %s is ready (generation %d)", upstream.url, upstream.generation)

    async def _scrape_loop(self) -> None:
        """Engine load for the picker; with one upstream there is no choice to inform."""
        while True:
            ready = self.ready_upstreams()
            if len(ready) > 1:
                await asyncio.gather(*(u.scrape() for u in ready))  # each keeps its last reading on failure
            await asyncio.sleep(self._timing.scrape_interval_s)

    async def _discover_loop(self, discovery: Discovery) -> None:
        while True:
            try:
                found = await discovery.resolve()
                if found is not None:
                    self._follow(found, discovery)
            except Exception:  # the loop must outlive one bad round: it is the only one
                log.exception("following %s failed; trying again", discovery.url)
            await asyncio.sleep(discovery.interval_s)

    def _follow(self, urls: list[str], discovery: Discovery) -> None:
        """Join the new addresses, let go of the vanished ones."""
        known = {u.url for u in self.upstreams}
        for url in urls:
            if url not in known:
                log.info("discovered upstream %s", url)
                upstream = discovery.make(url)
                self.upstreams.append(upstream)
                self._watch_soon(upstream)
        for upstream in [u for u in self.upstreams if u.url not in urls]:
            log.warning("upstream %s left %s", upstream.url, discovery.url)
            self.upstreams.remove(upstream)
            self._watchers.pop(upstream.url).cancel()
            upstream.state = State.DOWN
            task = asyncio.create_task(_close_when_idle(upstream))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)


async def _close_when_idle(upstream: Upstream) -> None:
    """Requests still on a departed upstream finish (or fail) on their own."""
    while upstream.inflight:
        await asyncio.sleep(1.0)
    await upstream.aclose()
