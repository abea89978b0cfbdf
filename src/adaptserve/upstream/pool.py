"""The set of vLLM upstreams: health watching, readiness, and picking one per request.

Each upstream has its own watcher task. When an upstream becomes healthy its
generation is bumped and `on_up` runs (the registry loads adapters) before it is
marked READY, so no request is routed to it before its adapters are resident.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable

from adaptserve.errors import APIError, UpstreamUnavailableError
from adaptserve.upstream.client import State, Upstream

log = logging.getLogger(__name__)

OnUp = Callable[[Upstream], Awaitable[None]]


class UpstreamPool:
    def __init__(self, upstreams: list[Upstream], interval_s: float, on_up: OnUp) -> None:
        if not upstreams:
            raise ValueError("an upstream pool needs at least one upstream")
        self.upstreams = upstreams
        self._interval_s = interval_s
        self._on_up = on_up
        self._turn = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch(u), name=f"watch {u.url}") for u in self.upstreams]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for upstream in self.upstreams:
            await upstream.aclose()

    def ready(self) -> bool:
        return any(u.state is State.READY for u in self.upstreams)

    def pick(self) -> Upstream:
        """Round-robin over READY upstreams; 503 with Retry-After when there is none."""
        ready = [u for u in self.upstreams if u.state is State.READY]
        if not ready:
            raise UpstreamUnavailableError()
        return ready[next(self._turn) % len(ready)]

    async def _watch(self, upstream: Upstream) -> None:
        while True:
            healthy = await upstream.health()
            if healthy and upstream.state is not State.READY:
                await self._bring_up(upstream)
            elif not healthy:
                upstream.mark_down()
            # Poll fast while down so recovery is noticed within a second.
            await asyncio.sleep(self._interval_s if upstream.state is State.READY else 0.5)

    async def _bring_up(self, upstream: Upstream) -> None:
        upstream.generation += 1
        try:
            await self._on_up(upstream)
        except APIError as exc:
            log.error("upstream %s is healthy but not usable yet: %s", upstream.url, exc.message)
            upstream.mark_down()
            return
        upstream.state = State.READY
        log.info("upstream %s is ready (generation %d)", upstream.url, upstream.generation)
