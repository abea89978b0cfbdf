"""Where one engine call goes, and what it survives (`Forwarder`): a replica that holds
the target's adapter (`picker.py`, among its base's pool: the base model's, or a
generate model of `models:`'s; that model's plain requests: one of its pool's, in
turn; held in the gateway while the adapter's batch slot there should drain for
adapters waiting for one: `Picker.drains`), the adapter loaded there first, one retry
on another replica when the first was unavailable before the client got a byte, one
reload of an adapter the engine lost.
An engine that does not serve a model sent without an adapter is a configuration
error: passed over once for another replica, else answered 502, never an adapter to
load. Below the pipeline's admission: nothing here meters or bounds a request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from adaptserve.adapters.catalog import Target
from adaptserve.adapters.residency import Residency
from adaptserve.errors import (
    EngineModelNotServedError,
    UpstreamDroppedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from adaptserve.metrics import Metrics
from adaptserve.serving.engines import Engines
from adaptserve.serving.picker import HOLD_MAX_S, HOLD_POLL_S, Picker
from adaptserve.upstream.client import Upstream, UpstreamModelMissingError
from adaptserve.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)
T = TypeVar("T")


class Forwarder:
    def __init__(
        self, pool: UpstreamPool, picker: Picker, residency: Residency, engines: Engines, metrics: Metrics
    ) -> None:
        self._pool, self._picker, self._residency, self._engines = pool, picker, residency, engines
        self._metrics = metrics

    async def forward(
        self,
        target: Target,
        send: Callable[[Upstream], Awaitable[T]],
        again: Callable[[UpstreamUnavailableError], bool] = lambda failed: True,
    ) -> T:
        """`send` on a replica that holds the target's adapter (loaded first if need be).
        A replica that is unavailable before the client got a byte (a refused or dropped
        connection, 503, a load that could not reach it) is passed over once for
        another ready one, if `again` allows (it charges an attempt that reached an
        engine). What the engine failed on is not sent elsewhere: a 4xx (the request's
        fault), another 5xx (the engine failed handling it: it may be the request's
        fault, and the next engine would fail too), a timeout (it may still be working).
        An upstream that lost the adapter (it restarted between health checks) gets it
        loaded again and the call once more; one that does not serve a name sent without
        an adapter is passed over once for another (502 where none is left)."""
        failed: list[Upstream] = []
        reloaded = False
        pool = self._engines.pool(target.engine) if target.engine is not None else None
        while True:
            if pool is not None and target.adapter is None:
                upstream = pool.pick(avoid=failed)
            else:  # an adapter (its base's pool: the base model's or an entry's) goes where the picker says
                upstream = await self._picked(pool or self._pool, target, failed)
            try:
                await self._load(upstream, target)
                return await send(upstream)
            except UpstreamModelMissingError as exc:
                if target.adapter is None:  # one replica misconfigured: another may serve it (nothing ran)
                    error = _not_served(upstream, target)
                    if failed or not _another(pool or self._pool, upstream):
                        raise error from exc
                    failed.append(upstream)
                    continue
                log.warning("%s lost %s; loading it again", upstream.url, target.internal_name)
                self._residency.forget(upstream, target.adapter)
                if reloaded:
                    raise UpstreamUnavailableError("The model server could not load the model; retry shortly.") from exc
                reloaded = True
            except UpstreamUnavailableError as exc:
                another = _another(pool or self._pool, upstream)
                if isinstance(exc, UpstreamTimeoutError) or failed or not another or not again(exc):
                    raise
                log.warning("%s failed before answering (%s); retrying on another replica", upstream.url, exc.code)
                self._metrics.upstream_retries.inc()
                failed.append(upstream)

    async def _picked(self, pool: UpstreamPool, target: Target, failed: list[Upstream]) -> Upstream:
        """The picker's replica for an adapter's request; held back while its adapter's
        batch slot there should drain for adapters waiting for one (`Picker.drains`, at
        most `HOLD_MAX_S`), then picked again: late binding."""
        upstream = self._picker.pick(pool.ready_upstreams(), target.adapter, avoid=failed)
        if not self._picker.drains(upstream, target.adapter):
            return upstream
        until = time.monotonic() + HOLD_MAX_S
        while self._picker.drains(upstream, target.adapter):
            if time.monotonic() >= until and target.adapter is not None:
                self._picker.gave_up(upstream, target.adapter)  # it outlasts a hold: the next is not held
                break
            await asyncio.sleep(HOLD_POLL_S)
        self._metrics.requests_held.inc()
        return self._picker.pick(pool.ready_upstreams(), target.adapter, avoid=failed, again=True)

    async def _load(self, upstream: Upstream, target: Target) -> None:
        try:
            await self._residency.ensure_loaded(upstream, target.adapter)
        except UpstreamTimeoutError as exc:  # no generation ran: not the request's timeout
            raise UpstreamUnavailableError("The model server did not load the model in time; retry.") from exc
        except UpstreamDroppedError as exc:  # the load's connection, not the request's
            raise UpstreamUnavailableError() from exc


def _another(pool: UpstreamPool, upstream: Upstream) -> bool:
    return any(u is not upstream for u in pool.ready_upstreams())


def _not_served(upstream: Upstream, target: Target) -> EngineModelNotServedError:
    """An engine that does not know a name sent without an adapter: no load can fix it.
    The operator's log names the engine and the name; the client's error only the model
    it asked for."""
    where = f"models: entry {target.engine}" if target.engine is not None else "the base model"
    log.error(
        "%s does not serve %r (%s): its --served-model-name and the gateway's served_model_name differ",
        upstream.url,
        target.internal_name,
        where,
    )
    return EngineModelNotServedError.of(target.public_name)
