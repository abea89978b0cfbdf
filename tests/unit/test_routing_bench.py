"""The routing benchmark (`adaptserve bench --scenarios routing`): its simulated engine
schedules like vLLM where routing matters (at most `max_loras` adapters a batch, a load
stalls the steps), and the scenario, at a tiny size, runs both modes in front of real
gateway processes with counts that add up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from adaptserve.bench.fake_engine import BASE
from adaptserve.bench.routing import RoutingPlan, run_routing
from adaptserve.bench.routing_report import markdown
from adaptserve.bench.sim_engine import SimServer, SimTiming
from adaptserve.upstream.load import EngineLoad
from tests.helpers import free_port, make_adapter

FAST = SimTiming(max_loras=2, max_num_seqs=8, step_s=0.01, prefill_token_s=0.0, load_s=0.2, unload_s=0.0)


async def _stream(client: httpx.AsyncClient, url: str, model: str, tag: str, max_tokens: int = 5) -> tuple[float, int]:
    """(seconds to the first token, tokens) of one streamed chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": f"{tag} hello"}], "max_tokens": max_tokens}
    body |= {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"delta"' in line:
                first = first or time.perf_counter() - start
                tokens += 1
    assert first is not None
    return first, tokens


def test_the_simulated_engine_holds_two_adapters_a_batch_and_a_load_stalls_its_steps(tmp_path: Path) -> None:
    server = SimServer(FAST, free_port()).start()
    try:
        engine, url = server.engine, server.url
        for name in ("a", "b", "c"):
            folder = make_adapter(tmp_path / name)
            assert httpx.post(
                url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)}
            ).is_success
        # asyncio's sleep may end up to its clock's resolution early (perf_counter measured 0.5994 s
        # for three 0.2 s loads once): each load stalled the engine for its time, to a millisecond.
        assert engine.stalled_s >= 3 * (FAST.load_s - 0.001) and [e.name for e in engine.loads] == ["a", "b", "c"]
        models = {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert models == {BASE, "a", "b", "c"}
        missing = httpx.post(url + "/v1/chat/completions", json={"model": "z", "messages": [], "max_tokens": 1})
        assert missing.status_code == 404 and "does not exist" in missing.text

        async def three_adapters() -> list[tuple[float, int]]:
            async with httpx.AsyncClient(timeout=30) as client:
                # a and b hold the two slots for 50 steps (0.5 s): c, sent once they run, must wait
                # for one, however late a loaded machine sends it (5 steps, 0.05 s, raced that).
                first_two = [asyncio.create_task(_stream(client, url, m, f"t{m}", 50)) for m in ("a", "b")]
                while len(engine.running) < 2:  # a and b in the batch
                    await asyncio.sleep(0.001)
                rest = [_stream(client, url, m, f"t{m}") for m in ("c", BASE)]
                return await asyncio.gather(*first_two, *rest)

        (_, tokens), _, (ttft_c, _), (ttft_base, _) = asyncio.run(three_adapters())
        assert tokens == 50
        seqs = {seq.tag: seq for seq in engine.finished}
        a, b, c, base = seqs["ta"], seqs["tb"], seqs["tc"], seqs[f"t{BASE}"]
        assert c.slot_waits > 0 and c.admitted >= min(a.finished, b.finished)  # a batch holds two adapters
        assert base.slot_waits == 0 and base.admitted < c.admitted  # the base model takes no adapter slot
        assert ttft_base < ttft_c
        assert EngineLoad.parse(httpx.get(url + "/metrics").text) == EngineLoad(max_loras=2)  # all done, none queued
        assert httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "c"}).is_success
        assert engine.unloads == ["c"] and "c" not in engine.loaded
    finally:
        server.stop()


def test_the_routing_scenario_runs_both_modes_and_the_picker_loads_fewer_adapters(tmp_path: Path) -> None:
    timing = SimTiming(max_num_seqs=8, step_s=0.005, prefill_token_s=0.0, load_s=0.05, unload_s=0.0)
    plan = RoutingPlan(
        requests=64, warmup=8, concurrency=8, input_words=4, max_tokens=4, join_after=0.2, rounds=2, timing=timing
    )
    result = run_routing(plan, tmp_path)
    assert "simulated" in result["engines"] and len(result["rounds"]) == 2
    for round_ in result["rounds"]:
        assert list(round_) == ["round_robin", "picker"]
        for m in round_.values():
            assert m["requests"] == 64 and m["errors"] == 0
            assert sum(e["requests"] for e in m["engines"]) == 64 == m["time"]["requests_matched"]
            assert sum(e["loads"] for e in m["engines"]) == m["adapter_loads"] > 0
            assert m["loads_per_100_requests"] == m["adapter_loads"] * 100 / 64
            assert m["output_tokens_per_s"] > 0 and m["ttft_p99"] >= m["ttft_p50"] > 0
            assert m["join"]["joined"] and 0 < m["join"]["up_to_ready_s"] < 10
        # Zipf over 16 adapters, two resident an engine: round robin loads an adapter wherever
        # the turn falls; the picker keeps each on a few engines.
        assert round_["picker"]["adapter_loads"] < round_["round_robin"]["adapter_loads"]
    median = result["median"]["picker"]["loads_per_100_requests"]
    assert median == sum(r["picker"]["loads_per_100_requests"] for r in result["rounds"]) / 2  # two rounds
    assert result["ratio_picker_over_round_robin"]["loads_per_100_requests"] < 1
    assert len(result["targets"]) == 4 and all(isinstance(t["met"], bool) for t in result["targets"].values())
    text = "\n".join(markdown(result))
    assert "simulated" in text and "| picker / round robin |" in text and "| 2, picker |" in text
