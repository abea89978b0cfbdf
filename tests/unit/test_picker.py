"""Which replica serves a request: an adapter stays where it is loaded unless that
replica is far busier, otherwise it goes to its rendezvous home set (the same for every
gateway replica); base traffic goes by load; through a real gateway in front of two fake
engines, an adapter's requests load it on one replica, not on every one. The round-robin
baseline takes every replica in turn."""

from __future__ import annotations

import logging

import pytest

from adaptserve.adapters.residency import Residency
from adaptserve.errors import UpstreamUnavailableError
from adaptserve.metrics import Metrics
from adaptserve.serving.picker import Picker, rendezvous
from adaptserve.upstream.load import EngineLoad
from tests.helpers import API_KEY, adapter_version, replicas, resident, upload

Q = [{"role": "user", "content": "hello there"}]


def test_an_adapter_stays_on_the_replica_that_holds_it_until_that_one_is_far_busier() -> None:
    ready = one, two, three = replicas(3)
    res, a = Residency(4, Metrics()), adapter_version("a")
    resident(res, three, a)
    picker = Picker(res, home_size=2, spill=4)
    three.inflight = 3  # busier than the others, within the spill margin
    assert picker.pick(ready, a) is three
    three.inflight = 4  # four more than the least busy: spill to the home set
    assert picker.pick(ready, a) in rendezvous(a.internal_name, [one, two, three])[:2]


def test_an_adapter_nobody_holds_goes_to_its_home_set_the_same_for_every_gateway() -> None:
    ups = replicas(4)
    names = [f"ad{i}" for i in range(40)]
    homes = {}
    for name in names:
        home = rendezvous(f"{name}--v1", ups)[:2]
        first = Picker(Residency(4, Metrics())).pick(ups, adapter_version(name))
        second = Picker(Residency(4, Metrics())).pick(ups, adapter_version(name))  # another gateway replica
        assert first is second and first in home
        homes[name] = first.url
    assert len(set(homes.values())) >= 3  # adapters spread over the replicas


def test_rendezvous_moves_only_the_keys_of_a_replica_that_leaves() -> None:
    ups = replicas(4)
    keys = [f"k{i}" for i in range(200)]
    before = {k: rendezvous(k, ups)[0] for k in keys}
    after = {k: rendezvous(k, ups[:3])[0] for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert moved and all(before[k] is ups[3] for k in moved)


def test_base_traffic_goes_to_the_least_busy_replica_and_none_ready_is_a_503() -> None:
    ready = one, two = replicas(2)
    picker = Picker(Residency(4, Metrics()))
    one.inflight, two.inflight = 5, 2
    assert picker.pick(list(ready), None) is two
    assert picker.pick(list(ready), None, avoid=[two]) is one  # a retry passes over the one that failed
    with pytest.raises(UpstreamUnavailableError):
        picker.pick([], None)
    with pytest.raises(UpstreamUnavailableError):
        picker.pick([one], None, avoid=[one])


def test_the_engines_queue_counts_as_load_beside_this_gateways_own_requests() -> None:
    """Another gateway replica's requests show only in the engine's /metrics."""
    ready = one, two = replicas(2)
    picker = Picker(Residency(4, Metrics()))
    one.inflight, two.inflight = 1, 2
    assert picker.pick(list(ready), None) is one
    one.engine = EngineLoad(running=4, waiting=0)  # busy with another gateway's requests
    assert picker.pick(list(ready), None) is two
    two.engine = EngineLoad(running=2, waiting=3)  # queued requests count twice
    assert (one.load, two.load) == (4, 8)
    assert picker.pick(list(ready), None) is one


def test_engine_load_is_read_from_vllm_metrics_text() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="base"} 3.0',
            'vllm:num_requests_running{engine="1",model_name="base"} 1.0',
            'vllm:num_requests_waiting{engine="0",model_name="base"} 2.0',
            'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 9.0',
            'vllm:kv_cache_usage_perc{engine="0",model_name="base"} 0.25',
            'vllm:kv_cache_usage_perc{engine="1",model_name="base"} 0.5',
            "vllm:num_preemptions_total 7.0",
        ]
    )
    assert EngineLoad.parse(text) == EngineLoad(running=4.0, waiting=2.0, kv_cache=0.5)
    assert EngineLoad.parse("") == EngineLoad()


def test_a_home_set_grows_while_its_adapter_queues_and_shrinks_back_with_hysteresis() -> None:
    ready = replicas(4)
    now = [0.0]
    picker = Picker(Residency(4, Metrics()), home_size=2, spill=4, shrink_after_s=30, clock=lambda: now[0])
    a = adapter_version("hot")
    order = rendezvous(a.internal_name, ready)
    order[0].inflight = order[1].inflight = 6  # both home replicas queue; the others are idle
    assert picker.pick(ready, a) is order[2]  # the set grew to three
    assert picker.homed_on(order[2], ready, [a]) == [a]
    order[0].inflight = order[1].inflight = 3  # under the spill margin, not under half of it
    now[0] = 100.0
    assert picker.pick(ready, a) is order[2]  # still three: the smaller set would still queue
    order[0].inflight = order[1].inflight = 1
    now[0] = 110.0
    assert picker.pick(ready, a) is order[2]  # calm, but not for long enough yet
    now[0] = 131.0
    assert picker.pick(ready, a) in order[:2]  # shrunk back to two
    assert picker.homed_on(order[2], ready, [a]) == []


def test_a_replica_coming_up_is_home_to_the_adapters_that_rank_it_first() -> None:
    one, two, three = replicas(3)
    picker = Picker(Residency(4, Metrics()), home_size=1)
    adapters = [adapter_version(f"ad{i}") for i in range(30)]
    homed = picker.homed_on(three, [one, two], adapters)
    assert homed and len(homed) < len(adapters)
    assert all(rendezvous(a.internal_name, [one, two, three])[0] is three for a in homed)


def test_round_robin_mode_takes_every_ready_replica_in_turn_whatever_it_holds() -> None:
    """The benchmark's baseline (`routing: round_robin`): no home sets, no load."""
    ready = one, two, three = replicas(3)
    res, a = Residency(4, Metrics()), adapter_version("a")
    resident(res, one, a)
    picker = Picker(res, round_robin=True)
    two.inflight = 50  # busy: round robin does not look
    assert [picker.pick(list(ready), a) for _ in range(6)] == [one, two, three] * 2
    assert [picker.pick(list(ready), None, avoid=[two]) for _ in range(2)] == [one, three]
    with pytest.raises(UpstreamUnavailableError):
        picker.pick([one], a, avoid=[one])
    adapters = [adapter_version(f"ad{i}") for i in range(5)]
    assert picker.homed_on(three, [one, two], adapters) == adapters  # a replica that comes up gets them all


def test_through_the_gateway_an_adapter_loads_on_one_replica_and_the_count_returns_to_zero(
    start_gateway, fake, second_fake, adapters
) -> None:
    gw = start_gateway(upstreams=[fake.url, second_fake.url], base_via_zero_adapter=False)
    assert upload(gw, "alpha", adapters["alpha"]).status_code == 201  # not a start-up adapter: loaded on demand
    assert gw.admin("PUT", "/tenants/default/models/alpha", json={"adapter": "alpha"}).status_code == 200
    for i in range(12):
        stream = i % 2 == 1
        body = {"model": "alpha", "messages": Q, "max_tokens": 4, "stream": stream}
        assert gw.post("/v1/chat/completions", body, key=API_KEY).status_code == 200
    loads = [[c for c in f.load_calls if c.startswith("alpha--")] for f in (fake, second_fake)]
    assert sorted(len(x) for x in loads) == [0, 1]  # round-robin would load it on both
    served = [sum(1 for r in f.requests if str(r.get("model", "")).startswith("alpha--")) for f in (fake, second_fake)]
    assert sorted(served) == [0, 12]
    pool = gw.server.server.config.app.state.gateway.pool  # this process's gateway
    assert [u.inflight for u in pool.upstreams] == [0, 0]  # every call and stream counted out again


def test_every_routing_decision_is_explained_in_a_debug_line(caplog) -> None:
    ready = _, two = replicas(2)
    res, a = Residency(4, Metrics()), adapter_version("a")
    resident(res, two, a)
    with caplog.at_level(logging.DEBUG, logger="adaptserve.serving.picker"):
        Picker(res).pick(list(ready), a)
        Picker(res).pick(list(ready), adapter_version("b"))
        Picker(res).pick(list(ready), None)
    lines = [r.getMessage() for r in caplog.records]
    assert f"route a--v1: the least busy replica holding it (unknown) → {two.url}" in lines[0]
    assert "b--v1: the least busy of its 2 home replicas" in lines[1]
    assert lines[2].startswith("route base: the least busy replica")


def test_a_replica_whose_batch_runs_the_adapter_beats_one_whose_batch_is_full() -> None:
    """vLLM's lora_requests_info: where the adapter already runs, no slot is waited for."""
    ready = one, two = replicas(2)
    res, a = Residency(4, Metrics()), adapter_version("a")
    for u in ready:
        resident(res, u, a)
    full = EngineLoad(running=2, running_adapters=frozenset({"x--v1", "y--v1"}), max_loras=2)
    running = EngineLoad(running=3, running_adapters=frozenset({"a--v1", "x--v1"}), max_loras=2)
    one.engine, two.engine = full, running
    assert Picker(res).pick(list(ready), a) is two  # busier by one request, but no wait for a slot
    one.engine, two.engine = running, full
    assert Picker(res).pick(list(ready), a) is one
    assert full.slot_for("a--v1") == "full" and running.slot_for("a--v1") == "running"
    assert EngineLoad(max_loras=2).slot_for("a--v1") == "free" and EngineLoad().slot_for("a--v1") == "unknown"


def test_the_newest_lora_info_series_is_the_engines_batch() -> None:
    text = "\n".join(
        [
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a--v1,b--v1",waiting_lora_adapters=""} 1.7e9',
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="c--v1",waiting_lora_adapters="d--v1"} 1.8e9',
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.6e9',
        ]
    )
    load = EngineLoad.parse(text)
    assert (load.running_adapters, load.waiting_adapters, load.max_loras) == ({"c--v1"}, {"d--v1"}, 2)
    assert load.slot_for("d--v1") == "waiting" and load.slot_for("e--v1") == "free"


def test_this_gateways_own_requests_bring_the_scraped_batch_up_to_date() -> None:
    """The scrape is a quarter second old; the requests this gateway sent since fill slots."""
    ready = one, two = replicas(2)
    res, a, x, y = Residency(4, Metrics()), adapter_version("a"), adapter_version("x"), adapter_version("y")
    for u in ready:
        for held in (a, x, y):
            resident(res, u, held)
        u.engine = EngineLoad(max_loras=2)  # the scrape: an empty batch on both
    one.count_in(x.internal_name)
    one.count_in(y.internal_name)  # since then: two other adapters' requests on one
    for _ in range(3):
        two.count_in("base")  # the base model takes no adapter slot
    assert (one.load, two.load) == (2, 3)
    assert one.engine.slot_for(a.internal_name, frozenset(one.models)) == "full"
    assert Picker(res).pick(list(ready), a) is two  # busier by one, but a slot is free there
    one.count_out(x.internal_name)  # x's request ended: a slot is free again
    assert one.models == {y.internal_name: 1} and one.inflight == 1
    assert Picker(res).pick(list(ready), a) is one  # the less busy, with a free slot
    running = EngineLoad(running=1, running_adapters=frozenset({"a--v1"}), max_loras=2)
    assert running.slot_for("a--v1", frozenset({"x--v1", "y--v1"})) == "blocking"  # three want two slots


def test_an_adapter_leaves_a_batch_where_other_adapters_wait_for_its_slot() -> None:
    """More of its requests would keep the waiting adapters out ('blocking'): where it
    runs unopposed is better, even a little busier."""
    ready = one, two = replicas(2)
    res, a = Residency(4, Metrics()), adapter_version("a")
    for u in ready:
        resident(res, u, a)
    blocking = EngineLoad(running=2, running_adapters=frozenset({"a--v1", "x--v1"}), max_loras=2)
    blocking = EngineLoad(
        running=2,
        waiting=0,
        running_adapters=blocking.running_adapters,
        waiting_adapters=frozenset({"y--v1"}),
        max_loras=2,
    )
    unopposed = EngineLoad(running=3, running_adapters=frozenset({"a--v1"}), max_loras=2)
    one.engine, two.engine = blocking, unopposed
    assert one.engine.slot_for("a--v1") == "blocking" and two.engine.slot_for("a--v1") == "running"
    assert Picker(res).pick(list(ready), a) is two
    one.engine = EngineLoad(running=2, running_adapters=blocking.running_adapters, max_loras=2)  # y got in elsewhere
    assert Picker(res).pick(list(ready), a) is one


def test_a_cold_adapter_has_one_home_replica_and_a_hot_one_two() -> None:
    ready = replicas(4)
    now = [0.0]
    picker = Picker(Residency(4, Metrics()), home_size=2, clock=lambda: now[0])
    hot, cold = adapter_version("hot"), adapter_version("cold")
    assert picker.base_size(cold.internal_name) == 2  # too few requests counted to tell yet
    for i in range(120):
        now[0] = i * 0.1
        picker.pick(ready, hot if i % 20 else cold)  # 95% hot, 5% cold
    assert picker.base_size(hot.internal_name) == 2 and picker.base_size(cold.internal_name) == 1
    order = rendezvous(cold.internal_name, ready)
    order[0].inflight = 3  # its one home is busier, within the spill margin: it still goes there
    assert picker.pick(ready, cold) is order[0]
    assert picker.is_home(order[0].url, cold.internal_name) and not picker.is_home(order[1].url, cold.internal_name)
    hot_order = rendezvous(hot.internal_name, ready)
    assert [picker.is_home(u.url, hot.internal_name) for u in hot_order] == [True, True, False, False]
    joining = order[1]
    others = [u for u in ready if u is not joining]
    assert picker.homed_on(joining, others, [cold]) == []  # a replica coming up is not its home
    now[0] += 600.0  # ten half-lives later the counts have faded: too few to tell again
    assert picker.base_size(cold.internal_name) == 2


def test_a_replica_that_comes_up_with_no_adapters_in_use_is_counted_as_home() -> None:
    """`homed_on` tells `is_home` of the replica coming up even when it places nothing:
    an adapter whose home set it joins is not evicted first there."""
    ready = replicas(3)
    picker = Picker(Residency(4, Metrics()), home_size=2)
    a = adapter_version("a")
    joining = rendezvous(a.internal_name, ready)[0]
    others = [u for u in ready if u is not joining]
    picker.pick(others, a)
    assert not picker.is_home(joining.url, a.internal_name)  # not up yet
    assert picker.homed_on(joining, others, []) == []
    assert picker.is_home(joining.url, a.internal_name)


def test_an_adapter_does_not_spill_to_where_it_would_wait_for_a_slot_as_long() -> None:
    """The spill margin is measured in cost (load and slot wait), not load alone: an
    idle replica whose batch is full of other adapters is no reason to load it there."""
    ready = one, two = replicas(2)
    res, a = Residency(4, Metrics()), adapter_version("a")
    resident(res, one, a)
    picker = Picker(res, home_size=1, spill=8)
    one.engine = EngineLoad(running=6, waiting=1, waiting_adapters=frozenset({"a--v1"}), max_loras=2)
    two.engine = EngineLoad(running=0, running_adapters=frozenset({"x--v1", "y--v1"}), max_loras=2)
    assert one.load - two.load >= 8  # load 8 and a queued slot (2): by load alone it would spill
    assert picker.pick(list(ready), a) is one  # two: a load, then a wait for a full batch (4): 10 - 4 < 8
    two.engine = EngineLoad(max_loras=2)  # two's batch empties: a free slot there
    two.count_in("base")
    assert picker.pick(list(ready), a) is two  # load 1 and a free slot (1): 10 - 2 >= 8, it spills
