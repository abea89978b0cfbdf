"""Which replica serves a request (several vLLM upstreams), and which adapters a
replica that comes up should hold.

An adapter's request goes to a ready replica that holds the adapter, the least busy of
those, unless it is `spill` busier than the least busy ready replica. Otherwise it goes
to the least busy of the adapter's home set: the first replicas in its rendezvous
order (highest random weight for its internal name). Every gateway replica computes
the same order without talking to the others, so an adapter lands on a few replicas
instead of all of them. A home set starts at `home_size`; it grows by one when even its
least busy member is `spill` busier than the least busy replica (the adapter's traffic
queues), and shrinks by one once the smaller set has stayed under half that margin for
`shrink_after_s` (hysteresis: no flapping at the threshold). Base traffic goes by load
alone. Load is `Upstream.load` (the engine's queue and this gateway's in-flight count);
for an adapter, what waiting for one of the engine's batch slots would cost is added
(`SLOT_WAIT`: nothing where the batch already runs it, most where the batch is full of
other adapters). Ties go to the rendezvous order, so a tie is broken the same way every
time.

With `round_robin` (the `routing` setting's baseline, what the gateway did before the
picker) every request goes to the next ready replica in turn, whatever it holds, and a
replica that comes up is given every adapter in use: each adapter ends up loaded on
every replica. `adaptserve bench --scenarios routing` compares the two.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from adaptserve.adapters.residency import AdapterVersion, Residency
from adaptserve.errors import UpstreamUnavailableError
from adaptserve.upstream.client import Upstream

log = logging.getLogger(__name__)

HOME_SIZE = 2  # replicas an adapter is loaded on before it spills further
SPILL = 8  # load above the least busy replica before a holder is passed over
SHRINK_AFTER_S = 30.0
# What waiting for an adapter slot costs, as a share of `spill`, by where the adapter
# stands in the engine's batch (the Inference Extension's LoRA affinity scores it so:
# in the batch, then a free slot, then queued, then a full batch).
SLOT_WAIT = {"running": 0.0, "unknown": 0.0, "free": 0.125, "waiting": 0.25, "full": 0.5}


def rendezvous(key: str, upstreams: Collection[Upstream]) -> list[Upstream]:
    """`upstreams` ordered by highest random weight for `key`: stable as replicas come
    and go (only the keys of a replica that leaves move)."""

    def weight(upstream: Upstream) -> bytes:
        return hashlib.sha256(f"{upstream.url}|{key}".encode()).digest()

    return sorted(upstreams, key=weight, reverse=True)


@dataclass
class _Grown:
    size: int
    since: float  # when it last changed, or last needed its size


class Picker:
    def __init__(
        self,
        residency: Residency,
        home_size: int = HOME_SIZE,
        spill: float = SPILL,
        shrink_after_s: float = SHRINK_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        round_robin: bool = False,
    ) -> None:
        self._residency = residency
        self._round_robin, self._turn = round_robin, itertools.count()
        self._home_size, self._spill, self._shrink_after_s, self._clock = home_size, spill, shrink_after_s, clock
        self._grown: dict[str, _Grown] = {}  # adapters whose home set is above home_size

    def pick(self, ready: list[Upstream], adapter: AdapterVersion | None, avoid: Collection[Upstream] = ()) -> Upstream:
        """A replica of `ready` (less `avoid`) for a request on `adapter` (None: the base
        model); 503 when there is none."""
        candidates = [u for u in ready if u not in avoid]
        if not candidates:
            raise UpstreamUnavailableError()
        if self._round_robin:
            return candidates[next(self._turn) % len(candidates)]
        name = adapter.internal_name if adapter is not None else ""
        ranked = rendezvous(name, candidates)
        least = _least_busy(ranked)
        if adapter is None:
            return _explained(least, "base: the least busy replica", least)
        home = ranked[: self._home(name, ranked, least.load)]  # kept up to date on every pick
        holding = [u for u in ranked if self._residency.is_resident(u, name)]
        best = self._cheapest(holding, name) if holding else None
        if best is not None and self._cost(best, name) - least.load < self._spill:
            return _explained(best, f"{name}: the least busy replica holding it ({best.engine.slot_for(name)})", least)
        chosen = self._cheapest(home, name)
        return _explained(chosen, f"{name}: the least busy of its {len(home)} home replicas", least)

    def _cost(self, upstream: Upstream, name: str) -> float:
        """Its load, plus what waiting for one of its engine's adapter slots adds (a
        batch holds `max_loras` adapters; vLLM's `lora_requests_info` says which)."""
        return upstream.load + self._spill * SLOT_WAIT[upstream.engine.slot_for(name)]

    def _cheapest(self, upstreams: list[Upstream], name: str) -> Upstream:
        return min(upstreams, key=lambda u: self._cost(u, name))  # a tie: the first, in hash order

    def homed_on(
        self, upstream: Upstream, ready: list[Upstream], adapters: list[AdapterVersion]
    ) -> list[AdapterVersion]:
        """Of `adapters`, those whose home set includes `upstream` once it joins `ready`:
        what a replica that comes up loads before it takes their traffic (round robin:
        all of them, since every replica gets every adapter's requests)."""
        if self._round_robin:
            return list(adapters)
        everyone = [*ready, upstream] if upstream not in ready else ready
        homed = []
        for adapter in adapters:
            grown = self._grown.get(adapter.internal_name)
            size = grown.size if grown is not None else self._home_size
            if upstream in rendezvous(adapter.internal_name, everyone)[:size]:
                homed.append(adapter)
        return homed

    def _home(self, name: str, ranked: list[Upstream], least: float) -> int:
        """The adapter's home set size now, grown or shrunk by its queueing."""
        now, grown = self._clock(), self._grown.get(name)
        size = min(grown.size if grown is not None else self._home_size, len(ranked))
        if _least_busy(ranked[:size]).load - least >= self._spill and size < len(ranked):
            self._grown[name] = _Grown(size + 1, now)
            log.info("%s queues on its %d home replicas: its home set grows to %d", name, size, size + 1)
            return size + 1
        if grown is None or size <= self._home_size:
            return size
        if _least_busy(ranked[: size - 1]).load - least >= self._spill / 2:
            grown.since = now  # still needs its size
        elif now - grown.since >= self._shrink_after_s:
            size -= 1
            self._grown[name] = _Grown(size, now)
            if size <= self._home_size:
                del self._grown[name]
            log.info("%s's home set shrinks to %d", name, size)
        return size


def _explained(chosen: Upstream, why: str, least: Upstream) -> Upstream:
    """Every routing decision, explained in one debug line (`log_level: debug`)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("route %s → %s (load %.0f; least busy %.0f)", why, chosen.url, chosen.load, least.load)
    return chosen


def _least_busy(upstreams: list[Upstream]) -> Upstream:
    return min(upstreams, key=lambda u: u.load)  # min keeps the first of a tie: the hash order
