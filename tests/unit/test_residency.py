"""Residency on its own, against a recording upstream: one load per adapter however
many requests want it, least-recently-used idle eviction (never a leased or pinned
adapter), retirement from a worker thread that waits for the last lease, a restarted
upstream's adapters counting as unloaded, and a refused load marked failed."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adaptserve.adapters.residency import AdapterVersion, Residency
from adaptserve.metrics import Metrics
from adaptserve.upstream.client import AdapterLoadError


@dataclass
class RecordingUpstream:
    url: str = "http://engine-0"
    generation: int = 1
    refuse: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)

    async def load_adapter(self, name: str, path: str) -> None:
        await asyncio.sleep(0.01)  # a load takes a while: concurrent requests must share it
        if name in self.refuse:
            raise AdapterLoadError("shape mismatch in q_proj")
        self.loads.append(name)

    async def unload_adapter(self, name: str) -> None:
        self.unloads.append(name)


def version(name: str) -> AdapterVersion:
    return AdapterVersion(name, "v1", Path("/adapters") / name, 8)


def residency(max_resident: int = 2) -> Residency:
    return Residency(max_resident, Metrics())


async def test_concurrent_first_requests_share_one_load() -> None:
    res, up, a = residency(), RecordingUpstream(), version("a")
    await asyncio.gather(*(res.ensure_loaded(up, a) for _ in range(5)))
    assert up.loads == ["a--v1"] and res.holders("a--v1") == [up.url]


async def test_the_least_recently_used_idle_adapter_makes_room_never_a_leased_or_pinned_one() -> None:
    res, up = residency(max_resident=2), RecordingUpstream()
    zero, a, b, c = version("zero"), version("a"), version("b"), version("c")
    res.pinned.add(zero.internal_name)
    for adapter in (zero, a, b):
        await res.ensure_loaded(up, adapter)
    with res.lease(a):  # a is in use, and used last
        await res.ensure_loaded(up, c)
        assert up.unloads == ["b--v1"]  # b: idle and older; the pinned zero adapter does not count
        with res.lease(c):
            await res.ensure_loaded(up, b)  # every unpinned resident adapter is busy: no eviction
    assert up.unloads == ["b--v1"] and sorted(up.loads) == ["a--v1", "b--v1", "b--v1", "c--v1", "zero--v1"]


async def test_a_version_retired_from_a_thread_is_unloaded_when_its_last_lease_ends() -> None:
    res, up, a = residency(), RecordingUpstream(), version("a")
    res.bind(asyncio.get_running_loop())
    await res.ensure_loaded(up, a)
    with res.lease(a):
        thread = threading.Thread(target=res.retire, args=(a.internal_name,))  # an admin call's worker thread
        thread.start()
        thread.join()
        await asyncio.sleep(0.05)
        assert up.unloads == []  # still streaming on it
    await asyncio.sleep(0.05)
    assert up.unloads == ["a--v1"] and res.holders("a--v1") == []


async def test_unretired_before_the_unload_stays_loaded() -> None:
    res, up, a = residency(), RecordingUpstream(), version("a")
    res.bind(asyncio.get_running_loop())
    await res.ensure_loaded(up, a)
    with res.lease(a):
        res.retire(a.internal_name)
        res.unretire(a.internal_name)  # activated again meanwhile
    await asyncio.sleep(0.05)
    assert up.unloads == [] and res.holders("a--v1") == [up.url]


async def test_a_restarted_upstream_loads_again_and_load_all_skips_a_refused_adapter() -> None:
    res, up, a, bad = residency(), RecordingUpstream(refuse={"bad--v1"}), version("a"), version("bad")
    await res.ensure_loaded(up, a)
    up.generation += 1  # the engine restarted: what it held is gone
    await res.load_all(up, [bad, a])
    assert up.loads == ["a--v1", "a--v1"] and bad.error == "shape mismatch in q_proj" and bad.refused()
    with pytest.raises(AdapterLoadError) as refused:
        await res.ensure_loaded(up, bad)
    assert "shape mismatch" not in refused.value.message  # vLLM's reason is the admin's, not the tenant's


def test_a_refused_version_is_held_back_for_a_doubling_while_then_tried_again(monkeypatch) -> None:
    from adaptserve.adapters import residency as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    bad = version("bad")
    assert bad.backoff_left() == 0.0 and not bad.refused()
    bad.failed("shape mismatch")
    assert bad.backoff_left() == module.RETRY_FAILED_S and bad.refused()  # Retry-After's source
    now[0] += 3
    assert bad.backoff_left() == module.RETRY_FAILED_S - 3
    now[0] += module.RETRY_FAILED_S
    assert bad.backoff_left() == 0.0 and bad.error is None  # over: the next request tries again
    bad.failed("shape mismatch")  # failed again, in a row: twice as long
    assert bad.backoff_left() == 2 * module.RETRY_FAILED_S
    bad.failures = 30
    assert bad.backoff_left() == module.RETRY_FAILED_MAX_S


async def test_an_adapter_the_routing_keeps_here_is_evicted_only_after_the_others() -> None:
    """`keep_first` (the picker's home sets): an older adapter at its home outlasts a
    newer one that only spilled here."""
    res, up = residency(max_resident=2), RecordingUpstream()
    a, b, c = version("a"), version("b"), version("c")
    res.keep_first = lambda url, name: url == up.url and name == "a--v1"
    for adapter in (a, b):
        with res.lease(adapter):  # a used first, then b: a is the least recently used
            await res.ensure_loaded(up, adapter)
    with res.lease(c):
        await res.ensure_loaded(up, c)
    assert up.unloads == ["b--v1"]  # not a: it is kept here
    res.keep_first = None
    await res.ensure_loaded(up, b)
    assert up.unloads == ["b--v1", "a--v1"]  # without the rule, the least recently used goes
