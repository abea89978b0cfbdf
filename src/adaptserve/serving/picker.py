"""Which replica serves a request (several vLLM upstreams), and which adapters a
replica that comes up should hold.

An adapter's request goes to a ready replica that holds the adapter, the least busy of
those, unless it is `spill` busier than the least busy ready replica. Otherwise it goes
to the least busy of the adapter's home set: the first replicas in its rendezvous
order (highest random weight for its internal name). Every gateway replica computes
the same order without talking to the others, so an adapter lands on a few replicas
instead of all of them. The hottest adapters (each `HOT_SHARE` of the recent adapter
requests or more, at most one per replica, hottest first) are the exception: each is
homed on the first replica of its rendezvous order that no hotter one took (`order`),
and served by the holders in its home set only (a copy elsewhere, from before it
ranked so, goes idle and is evicted in turn).
Such an adapter is nearly always in flight, so it keeps one of its engine's
`max_loras` batch slots for good; two on one engine would leave that engine's other
adapters no slot to take turns on. (Gateway replicas rank from their own counts, so
they agree as long as their traffic is alike; one placed keeps its replica unless
another is `STAY` times as popular; pinned adapters, the base route's zero adapter,
are never ranked.) A home set starts at `home_size` for a hot adapter and at one
replica for a cold one (under `COLD_SHARE` of the recent adapter requests, counted with
a `HALF_LIFE_S` decay): the tail's loads concentrate on one replica each instead of
evicting hot adapters on two. It grows by one when even its
least busy member is `spill` busier than the least busy replica (the adapter's traffic
queues), and shrinks by one once the smaller set has stayed under half that margin for
`shrink_after_s` (hysteresis: no flapping at the threshold). Base traffic goes by load
alone. Load is `Upstream.load` (the engine's queue and this gateway's in-flight count);
for an adapter, what waiting for one of the engine's batch slots would cost is added
(`SLOT_WAIT`: nothing where the batch already runs it, most where the batch is full of
other adapters; where the batch runs it while other adapters wait for a slot, another
request of it would keep them waiting, so a replica where it runs unopposed is
preferred). The batch is vLLM's `lora_requests_info` as last scraped, brought up to
date with the adapters of this gateway's own requests there (`Upstream.models`). Ties
go to the rendezvous order, so a tie is broken the same way every time.

Late binding (`drains`): vLLM's scheduler admits a new request of an adapter its batch
runs at once, and skips a waiting one whose adapter would exceed `max_loras`, so an
adapter fed without a pause keeps its slot while the waiting adapters starve. Where
adapters wait for a slot, the batch's adapter with the fewest of this gateway's
requests there (its slot frees soonest) is not fed: its next request is held in the
gateway (`Forwarder`) until its last one there has ended, or nobody waits any more, or
`HOLD_MAX_S` has passed, and is then picked again. The slot goes to the adapter that
waited (vLLM's queue is first come, first served), and the held request queues there
in its turn.

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

HOME_SIZE = 2  # replicas a hot adapter is loaded on before it spills further
SPILL = 8  # load above the least busy replica before a holder is passed over
SHRINK_AFTER_S = 30.0
COLD_SHARE = 0.5  # under this share of the recent adapter requests an adapter is cold: one home replica
HALF_LIFE_S = 60.0  # of an adapter's request count, for its share
MIN_COUNTED = 50.0  # recent adapter requests before any adapter is called cold
FORGET_ABOVE = 4096  # adapters counted before the faded counts are dropped
FORGOTTEN = 0.01  # a count faded below this (about 7 half-lives without a request) is dropped
# What waiting for an adapter slot costs, as a share of `spill`, by where the adapter
# stands in the engine's batch (the Inference Extension's LoRA affinity scores it so:
# in the batch, then a free slot, then queued, then a full batch). "blocking": in the
# batch while other adapters wait for a slot there; another request keeps them waiting.
SLOT_WAIT = {"running": 0.0, "unknown": 0.0, "free": 0.125, "blocking": 0.375, "waiting": 0.25, "full": 0.5}
HOT_SHARE = 0.05  # of the recent adapter requests: an adapter this popular may be homed apart from the others
RANK_EVERY_S = 1.0  # how often the hottest adapters are ranked again
HOLD_MAX_S = 2.0  # the longest a request is held back in the gateway so its adapter's slot drains (`drains`)
HOLD_POLL_S = 0.02  # how often a held request looks again (about one decode step)
STAY = 2.0  # a placed hottest adapter is outranked only by one this many times as popular (no flapping)


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


@dataclass
class _Decayed:
    """A count whose past halves every `HALF_LIFE_S`."""

    value: float = 0.0
    at: float = 0.0

    def at_time(self, now: float) -> float:
        return self.value * 0.5 ** ((now - self.at) / HALF_LIFE_S)

    def add(self, now: float) -> None:
        self.value, self.at = self.at_time(now) + 1.0, now


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
        self._grown: dict[str, _Grown] = {}  # adapters whose home set is above their base size
        self._counted: dict[str, _Decayed] = {}  # recent requests by adapter
        self._totals: dict[str, _Decayed] = {}  # recent adapter requests, by LLM base (as `_ready`)
        self._ready: dict[str, list[Upstream]] = {}  # by LLM base ("": the base model): as its last pick saw them
        self._llm: dict[str, str] = {}  # each counted adapter's LLM base
        self._hot: dict[str, tuple[float, tuple[str, ...], dict[str, Upstream]]] = {}  # by LLM base: `_placed`
        self._undrained: set[tuple[str, str]] = set()  # (url, adapter): a hold ran out; none until its count is 0

    def pick(
        self,
        ready: list[Upstream],
        adapter: AdapterVersion | None,
        avoid: Collection[Upstream] = (),
        again: bool = False,
    ) -> Upstream:
        """A replica of `ready` (less `avoid`) for a request on `adapter` (None: the base
        model); 503 when there is none. `again`: the same request picked once more (it
        was held back: `drains`), counted once."""
        candidates = [u for u in ready if u not in avoid]
        if not candidates:
            raise UpstreamUnavailableError()
        if self._round_robin:
            return candidates[next(self._turn) % len(candidates)]
        self._ready[adapter.base if adapter is not None else ""] = ready
        if adapter is None:
            least = _least_busy(rendezvous("", candidates))
            return _explained(least, "base: the least busy replica", least)
        name = adapter.internal_name
        ranked = [u for u in self.order(name, adapter.base, ready) if u in candidates]
        least = _least_busy(ranked)
        if not avoid and not again:  # a retry is the same request: counted once
            self._count(name, adapter.base)
        cost = {u.url: self._cost(u, name) for u in ranked}  # once per pick: each is a look at the batch
        floor = min(cost.values())  # where it would wait least (slots included)
        home = ranked[: self._home(name, adapter.base, ranked, cost, floor)]  # kept up to date on every pick
        holding = [u for u in ranked if self._residency.is_resident(u, name)]
        if name in self._placed(adapter.base, ready):  # homed apart from the other hottest: it goes there
            holding = [u for u in holding if u in home]
        best = _cheapest(holding, cost) if holding else None
        if best is not None and cost[best.url] - floor < self._spill:
            return _explained(best, f"{name}: the least busy replica holding it ({self._slot(best, name)})", least)
        chosen = _cheapest(home, cost)
        return _explained(chosen, f"{name}: the least busy of its {len(home)} home replicas", least)

    def drains(self, upstream: Upstream, adapter: AdapterVersion | None) -> bool:
        """Whether a request of `adapter` picked for `upstream` is held back in the gateway
        for now, so that the adapter's batch slot there drains: the adapter runs in the
        engine's batch while other adapters wait for a slot ("blocking"), and of the
        batch's adapters it has the fewest of this gateway's requests there (the slot
        that frees soonest when not fed). vLLM's scheduler admits a running adapter's new
        requests at once and skips a waiting one whose adapter would exceed
        `max_loras`, so an adapter fed without pause keeps its slot and the waiting one
        starves; held back, the slot goes to the adapter that waited (late binding: the
        held request is picked again once its adapter no longer drains there, or after
        `HOLD_MAX_S`). Never in round robin, never for the base model (nor its zero
        adapter, or any pinned one: on every replica, not the slot's to give up), and not
        again where a hold ran out (`gave_up`) until the adapter's requests there ended."""
        if self._round_robin or adapter is None or adapter.internal_name in self._residency.pinned:
            return False
        name = adapter.internal_name
        if not upstream.models.get(name):  # its last request there ended: the slot frees at the next step
            self._undrained.discard((upstream.url, name))
            return False
        if (upstream.url, name) in self._undrained or self._slot(upstream, name) != "blocking":
            return False
        here = frozenset(m for m in upstream.models if self._residency.is_resident(upstream, m))
        batch = upstream.engine.running_adapters | (here - upstream.engine.waiting_adapters)
        return min(batch, key=lambda m: (upstream.models.get(m, 0), m)) == name

    def gave_up(self, upstream: Upstream, adapter: AdapterVersion) -> None:
        """A hold on `upstream` ran out while the slot still drained (a request of the
        adapter there outlasts `HOLD_MAX_S`, a long stream): holding more of its requests
        there would add `HOLD_MAX_S` to each for nothing, so none is held there until
        all its requests there have ended."""
        self._undrained.add((upstream.url, adapter.internal_name))

    def _cost(self, upstream: Upstream, name: str) -> float:
        """Its load, plus what waiting for one of its engine's adapter slots adds (a
        batch holds `max_loras` adapters; vLLM's `lora_requests_info` says which)."""
        return upstream.load + self._spill * SLOT_WAIT[self._slot(upstream, name)]

    def _slot(self, upstream: Upstream, name: str) -> str:
        """`EngineLoad.slot_for`, with the adapters of this gateway's requests there now
        (those resident there: the base model takes no adapter slot)."""
        here = frozenset(m for m in upstream.models if self._residency.is_resident(upstream, m))
        return upstream.engine.slot_for(name, here)

    def order(self, name: str, llm: str, upstreams: list[Upstream]) -> list[Upstream]:
        """Adapter `name`'s replicas in the order its home set takes them: its rendezvous
        order, except that each of the hottest adapters (`HOT_SHARE` of the recent
        adapter requests or more, at most one per replica) comes first on the first
        replica of its own rendezvous order that no hotter one took. An adapter that is
        nearly always in flight keeps one of its engine's `max_loras` batch slots for
        good; two of them homed on one engine would leave that engine's other adapters
        no slot to take turns on."""
        order = rendezvous(name, upstreams)
        first = self._placed(llm, upstreams).get(name)
        return order if first is None else [first, *(u for u in order if u is not first)]

    def _placed(self, llm: str, upstreams: list[Upstream]) -> dict[str, Upstream]:
        """The hottest adapters of LLM base `llm` (pinned ones aside: the zero adapter is
        on every replica), each on its own replica of `upstreams`; ranked again every
        `RANK_EVERY_S` or when the replicas change. One already placed keeps its replica
        while it stays hot, and its place unless another is `STAY` times as popular, so
        near-equals do not move each other's homes every second."""
        if not upstreams:
            return {}
        now, urls = self._clock(), tuple(sorted(u.url for u in upstreams))
        placed = self._hot.get(llm)
        if placed is not None and placed[1] == urls and now - placed[0] < RANK_EVERY_S:
            return placed[2]
        before = placed[2] if placed is not None and placed[1] == urls else {}
        counted_here = self._totals.get(llm)
        total = counted_here.at_time(now) if counted_here is not None else 0.0
        pinned = self._residency.pinned
        shares = {n: c.at_time(now) for n, c in self._counted.items() if self._llm.get(n) == llm and n not in pinned}
        hot = [n for n in shares if shares[n] >= HOT_SHARE * total] if total >= MIN_COUNTED else []
        ranked = sorted(hot, key=lambda n: (-shares[n] * (STAY if n in before else 1.0), n))[: len(upstreams)]
        homes = {n: before[n] for n in ranked if n in before}
        for other in (n for n in ranked if n not in before):
            homes[other] = next(u for u in rendezvous(other, upstreams) if u not in homes.values())
        self._hot[llm] = now, urls, homes
        return homes

    def _count(self, name: str, llm: str) -> None:
        now = self._clock()
        self._llm[name] = llm
        self._counted.setdefault(name, _Decayed()).add(now)
        self._totals.setdefault(llm, _Decayed()).add(now)
        if len(self._counted) > FORGET_ABOVE:  # adapters not asked for in a long while: forgotten
            self._counted = {n: c for n, c in self._counted.items() if c.at_time(now) >= FORGOTTEN}
            self._llm = {n: llm for n, llm in self._llm.items() if n in self._counted}

    def base_size(self, name: str, llm: str = "") -> int:
        """The adapter's home set before any growth: `home_size`, or one replica for a
        cold adapter (under `COLD_SHARE` of the recent adapter requests on its LLM base
        `llm`: another base's traffic never makes it cold), so the tail's loads land on
        one replica and do not evict the hot adapters on the others."""
        now = self._clock()
        counted_here = self._totals.get(llm)
        total = counted_here.at_time(now) if counted_here is not None else 0.0
        if total < MIN_COUNTED:
            return self._home_size
        counted = self._counted.get(name)
        share = counted.at_time(now) / total if counted is not None else 0.0
        return 1 if share < COLD_SHARE else self._home_size

    def homed_on(
        self, upstream: Upstream, ready: list[Upstream], adapters: list[AdapterVersion], llm: str = ""
    ) -> list[AdapterVersion]:
        """Of `adapters` (LLM base `llm`'s), those whose home set includes `upstream` once
        it joins `ready`: what a replica that comes up loads before it takes their traffic
        (round robin: all of them, since every replica gets every adapter's requests)."""
        if self._round_robin:
            return list(adapters)
        everyone = [*ready, upstream] if upstream not in ready else ready
        self._ready[llm] = everyone  # `is_home` too counts the replica coming up, adapters in use or not
        homed = []
        for adapter in adapters:
            grown, base = self._grown.get(adapter.internal_name), self.base_size(adapter.internal_name, adapter.base)
            size = max(grown.size, base) if grown is not None else base
            if upstream in self.order(adapter.internal_name, llm, everyone)[:size]:
                homed.append(adapter)
        return homed

    def is_home(self, url: str, name: str) -> bool:
        """`url` is in adapter `name`'s home set (among the replicas the last pick on
        `url`'s LLM base saw ready): residency evicts it there only after the adapters that spilled there
        (`Residency.keep_first`), so a cold adapter is not loaded again at its home."""
        if self._round_robin:
            return False
        here = ((llm, r) for llm, r in self._ready.items() if any(u.url == url for u in r))
        llm, ready = next(here, ("", []))  # `url`'s base, and its replicas
        grown, base = self._grown.get(name), self.base_size(name, llm)
        size = max(grown.size, base) if grown is not None else base
        return any(u.url == url for u in self.order(name, llm, ready)[:size])

    def _home(self, name: str, llm: str, ranked: list[Upstream], cost: dict[str, float], least: float) -> int:
        """The adapter's home set size now, grown or shrunk by its queueing: `cost` is
        each ready replica's (`_cost`: load and slot wait, by URL) and `least` the lowest,
        so an adapter spills only to where it would wait less, not away from slot waits
        it would meet anywhere."""
        now, grown, base = self._clock(), self._grown.get(name), self.base_size(name, llm)
        size = min(max(grown.size, base) if grown is not None else base, len(ranked))
        if min(cost[u.url] for u in ranked[:size]) - least >= self._spill and size < len(ranked):
            self._grown[name] = _Grown(size + 1, now)
            log.info("%s queues on its %d home replicas: its home set grows to %d", name, size, size + 1)
            return size + 1
        if grown is not None and grown.size <= base:
            del self._grown[name]  # the adapter turned hot: its base size covers it
        if grown is None or size <= base:
            return size
        if min(cost[u.url] for u in ranked[: size - 1]) - least >= self._spill / 2:
            grown.since = now  # still needs its size
        elif now - grown.since >= self._shrink_after_s:
            size -= 1
            self._grown[name] = _Grown(size, now)
            if size <= base:
                del self._grown[name]
            log.info("%s's home set shrinks to %d", name, size)
        return size


def _explained(chosen: Upstream, why: str, least: Upstream) -> Upstream:
    """Every routing decision, explained in one debug line (`log_level: debug`)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("route %s → %s (load %.0f; least busy %.0f)", why, chosen.url, chosen.load, least.load)
    return chosen


def _cheapest(upstreams: list[Upstream], cost: dict[str, float]) -> Upstream:
    return min(upstreams, key=lambda u: cost[u.url])  # a tie: the first, in hash order


def _least_busy(upstreams: list[Upstream]) -> Upstream:
    return min(upstreams, key=lambda u: u.load)  # min keeps the first of a tie: the hash order
