"""Late binding and the hottest adapters' homes (`serving/picker.py`: `Picker.drains`,
`Picker.order`; `serving/forward.py`: `Forwarder._picked`): which adapter's slot drains
while others wait for one, how long a request is held for it, and where the hottest
adapters live. The picker's other rules: test_picker.py."""

from __future__ import annotations

import asyncio

import pytest

from adaptserve.adapters.catalog import Target
from adaptserve.adapters.residency import AdapterVersion, Residency
from adaptserve.metrics import Metrics
from adaptserve.serving.engines import Engines
from adaptserve.serving.forward import Forwarder
from adaptserve.serving.picker import Picker, rendezvous
from adaptserve.upstream.client import Upstream
from adaptserve.upstream.load import EngineLoad
from adaptserve.upstream.pool import UpstreamPool
from tests.helpers import adapter_version, replicas, resident


def _crowded(one: Upstream, res: Residency, a: AdapterVersion, x: AdapterVersion) -> None:
    """one's batch runs a (one request of this gateway's) and x (three) while y waits."""
    for held in (a, x):
        resident(res, one, held)
    one.engine = EngineLoad(
        running=4,
        waiting=1,
        running_adapters=frozenset({a.internal_name, x.internal_name}),
        waiting_adapters=frozenset({"y--v1"}),
        max_loras=2,
    )
    one.count_in(a.internal_name)
    for _ in range(3):
        one.count_in(x.internal_name)


def test_the_adapter_whose_slot_frees_soonest_drains_while_another_waits_for_a_slot() -> None:
    """vLLM admits a running adapter's new requests at once and skips a waiting one whose
    adapter would be a third: fed without pause, a slot never frees. Of the batch's
    adapters, the one with the fewest of this gateway's requests there is held back."""
    (one,) = replicas(1)
    res, a, x = Residency(4, Metrics()), adapter_version("a"), adapter_version("x")
    _crowded(one, res, a, x)
    picker = Picker(res)
    assert picker.pick([one], a) is one  # its only holder: picked, then held back
    assert picker.drains(one, a) and not picker.drains(one, x)  # x has three requests there: a's slot frees first
    assert not picker.drains(one, None)  # the base model takes no slot
    assert not Picker(res, round_robin=True).drains(one, a)  # the baseline is as it was
    one.engine = EngineLoad(running=4, running_adapters=one.engine.running_adapters, max_loras=2)
    assert not picker.drains(one, a)  # y got its slot elsewhere: nobody waits, a is fed again
    one.engine = EngineLoad(
        running=4, running_adapters=one.engine.running_adapters, waiting_adapters=frozenset({"y--v1"}), max_loras=2
    )
    one.count_out(a.internal_name)
    assert not picker.drains(one, a)  # a's last request there ended: y gets the slot at the next step
    one.count_in(a.internal_name)
    for _ in range(3):
        one.count_in(a.internal_name)  # a has four there now
    one.engine = EngineLoad(
        running=6, running_adapters=one.engine.running_adapters, waiting_adapters=frozenset({"y--v1"}), max_loras=2
    )
    assert picker.drains(one, x) and not picker.drains(one, a)  # now x's slot frees first


async def test_a_request_held_back_goes_once_its_adapters_slot_no_longer_drains() -> None:
    """Late binding: the gateway holds the request instead of feeding the slot the
    waiting adapter needs, and picks again once it may go."""
    (one,) = replicas(1)
    res, a, x, metrics = Residency(4, Metrics()), adapter_version("a"), adapter_version("x"), Metrics()
    _crowded(one, res, a, x)
    picker = Picker(res)
    looks = [0]
    drains = picker.drains

    def counted(upstream: Upstream, version: AdapterVersion | None) -> bool:
        looks[0] += 1
        return drains(upstream, version)

    picker.drains = counted  # type: ignore[method-assign]
    forwarder = Forwarder(UpstreamPool([one], _no_on_up), picker, res, Engines([]), metrics)
    sent: list[Upstream] = []

    async def send(upstream: Upstream) -> str:
        sent.append(upstream)
        return "answer"

    task = asyncio.create_task(forwarder.forward(Target("a", a.internal_name, a), send))
    while looks[0] < 3:  # it looked, and looked again: held
        await asyncio.sleep(0.005)
    assert sent == [] and not task.done()
    one.count_out(a.internal_name)  # a's last request there ended: its slot goes to y, who waited first
    assert await asyncio.wait_for(task, 10) == "answer"  # the held request goes (and waits there its turn)
    assert sent == [one] and metrics.requests_held._value.get() == 1


async def _no_on_up(upstream: Upstream, ready: list[Upstream]) -> None:
    return None


def test_the_hottest_adapters_are_homed_on_distinct_replicas() -> None:
    """Each nearly always holds a batch slot: two on one engine would leave its other
    adapters no slot to take turns on. The rest keep their rendezvous homes."""
    ready = replicas(3)
    first: dict[str, list[str]] = {}
    for i in range(200):  # adapters whose rendezvous homes are the same replica
        first.setdefault(rendezvous(f"h{i}--v1", ready)[0].url, []).append(f"h{i}")
    same = next(names for names in first.values() if len(names) >= 3)
    hot, warm, cold = adapter_version(same[0]), adapter_version(same[1]), adapter_version(same[2])
    fillers = [adapter_version(f"filler{i}") for i in range(10)]
    now = [0.0]
    res = Residency(4, Metrics())
    picker = Picker(res, clock=lambda: now[0])
    home = rendezvous(hot.internal_name, ready)[0]
    assert picker.pick(ready, warm) is home  # nothing counted yet: its rendezvous home
    resident(res, home, warm)  # and loaded there
    for cycle in range(30):  # 40% hot, 30% warm, 3% each filler
        for turn, version in enumerate([hot] * 4 + [warm] * 3 + fillers[cycle % 10 :][:3]):
            now[0] = cycle + turn * 0.1
            picker.pick(ready, version)
    assert picker.base_size(hot.internal_name) == 1  # both cold by COLD_SHARE: one home replica each
    assert picker.pick(ready, hot) is home and picker.pick(ready, cold) is home  # cold: under HOT_SHARE
    warm_home = picker.pick(ready, warm)  # it leaves the copy it has beside the hottest one
    assert warm_home is not home and warm_home is rendezvous(warm.internal_name, ready)[1]
    assert picker.is_home(warm_home.url, warm.internal_name) and not picker.is_home(home.url, warm.internal_name)


def test_a_base_request_through_the_zero_adapter_is_never_held_nor_homed_apart() -> None:
    """The base route's zero adapter (pinned, on every replica) is base traffic: never
    held for a slot, never one of the hottest adapters homed on one replica."""
    (one,) = replicas(1)
    res, zero, x = Residency(4, Metrics()), adapter_version("SmolLM2-135M-Instruct"), adapter_version("x")
    _crowded(one, res, zero, x)
    picker = Picker(res)
    assert picker.drains(one, zero)  # as any adapter, unpinned
    res.pinned.add(zero.internal_name)
    assert not picker.drains(one, zero)
    ready = replicas(3)
    now = [0.0]
    picker = Picker(res, clock=lambda: now[0])
    for i in range(200):  # 60% base, 40% one adapter: both over HOT_SHARE
        now[0] = i * 0.05
        picker.pick(ready, zero if i % 5 < 3 else x)
    now[0] += 5
    assert set(picker._placed("", ready)) == {x.internal_name}


async def test_a_hold_that_ran_out_is_not_repeated_while_the_same_requests_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long stream of `a` outlasts any hold: the first request waits `HOLD_MAX_S`, the
    next ones go at once until a's requests there have all ended; then holds resume."""
    (one,) = replicas(1)
    res, a, x, metrics = Residency(4, Metrics()), adapter_version("a"), adapter_version("x"), Metrics()
    _crowded(one, res, a, x)  # a: one request there, still running
    monkeypatch.setattr("adaptserve.serving.forward.HOLD_MAX_S", 0.2)
    forwarder = Forwarder(UpstreamPool([one], _no_on_up), Picker(res), res, Engines([]), metrics)

    async def send(upstream: Upstream) -> str:
        return "answer"

    for _ in range(3):
        await forwarder.forward(Target("a", a.internal_name, a), send)
    assert metrics.requests_held._value.get() == 1  # only the first waited
    one.count_out(a.internal_name)  # the long stream ended
    await forwarder.forward(Target("a", a.internal_name, a), send)  # nothing of a there: not held
    one.count_in(a.internal_name)  # that one runs there now, while y still waits
    await forwarder.forward(Target("a", a.internal_name, a), send)
    assert metrics.requests_held._value.get() == 2  # held again


def test_the_hottest_adapters_keep_their_replicas_among_near_equals() -> None:
    """Re-ranked every second, adapters about as popular as each other do not take each
    other's replicas; one `STAY` times as popular as a placed one does."""
    ready = replicas(2)
    now = [0.0]
    picker = Picker(Residency(4, Metrics()), clock=lambda: now[0])
    names = ["p", "q", "r"]  # three near-equals, two replicas
    homes = []
    for second in range(60):
        for turn in range(30):
            now[0] = second + turn / 30
            name = names[(turn + second) % 3] if turn % 10 else names[second % 3]  # the leader changes every second
            picker.pick(ready, adapter_version(name))
        homes.append(dict(picker._placed("", ready)))
    settled = homes[5:]
    assert all(h == settled[0] for h in settled) and len(settled[0]) == 2  # the same two, on the same replicas
    (left,) = set(names) - {n.removesuffix("--v1") for n in settled[0]}
    for turn in range(2000):  # now one of them far ahead of a placed one
        now[0] = 60 + turn / 100
        picker.pick(ready, adapter_version(left if turn % 3 else names[0]))
    assert f"{left}--v1" in picker._placed("", ready)


def test_an_empty_replica_list_ranks_nothing_and_keeps_the_ranking() -> None:
    ready = replicas(2)
    now = [0.0]
    picker = Picker(Residency(4, Metrics()), clock=lambda: now[0])
    for i in range(100):
        now[0] = i * 0.01
        picker.pick(ready, adapter_version("hot"))
    now[0] += 2  # past the last ranking's second
    placed = picker._placed("", ready)
    assert placed and picker._placed("", []) == {}
    assert picker._placed("", ready) is placed  # the cached ranking, not ranked again
