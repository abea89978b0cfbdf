"""Scenario `routing` of `adaptserve bench` (issue 17): the gateway's replica picker
against round robin (`routing: round_robin`), side by side in one run, each mode with
a fresh gateway (`adaptserve serve --upstream ...`) in front of fresh simulated engines
(`sim_engine.py`; three vLLM engines do not fit on the 2-core development machine).

Each mode: `engines` simulated engines, a gateway with `adapters` tiny adapters spread
over `tenants` tenants' aliases, `slots` adapters per engine batch and `resident` kept
loaded per engine, no base
route through a zero adapter. A warm-up, then the measured requests (Zipf-popular
adapters, s = 1.1, the same seeded sequence in both modes) from `concurrency`
streaming clients. Once `join_after` of them have finished, one more engine comes up:
its URL was among the gateway's upstreams from the start, so the pool's probe finds
it and places adapters on it before it takes traffic. Measured: adapter loads (at
the engines) per 100 requests and the requests that waited on one, output tokens/s,
TTFT (client side) and where it went (gateway, engine queue, first step), and for the
new engine the time from up to ready in the gateway and to its first adapter token.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families
from safetensors.numpy import save_file

from adaptserve.bench.fake_engine import BASE
from adaptserve.bench.fleet import build_fleet, make_adapters
from adaptserve.bench.loadgen import Record, Request, Run, send, workload
from adaptserve.bench.routing_split import load_split, tail_split
from adaptserve.bench.served import ADMIN_KEY, Served
from adaptserve.bench.sim_engine import Sequence, SimEngine, SimServer, SimTiming
from adaptserve.evaluation import percentile
from adaptserve.upstream.supervisor import free_port

MODES = ("round_robin", "picker")
ZIPF_S = 1.1  # loadgen.popularity's default


@dataclass(frozen=True)
class RoutingPlan:
    engines: int = 3  # from the start; one more joins mid-run
    adapters: int = 16
    slots: int = 2  # each engine's max_loras: adapters one batch can hold
    resident: int = 8  # the gateway's max_resident_adapters: adapters kept loaded per engine
    requests: int = 1000  # measured, per mode
    warmup: int = 100
    concurrency: int = 24  # streaming clients, closed loop
    input_words: int = 32
    max_tokens: int = 32
    tenants: int = 4
    join_after: float = 0.5  # of the measured requests finished when the extra engine starts
    rounds: int = 2  # each mode once a round, which goes first alternating; the headline is the median
    seed: int = 0
    timing: SimTiming = field(default_factory=SimTiming)
    modes: tuple[str, ...] = MODES


@dataclass
class _Mark:
    """Where each engine's records stood when the measured requests began."""

    loads: list[int]
    unloads: list[int]
    stalled_s: list[float]
    finished: list[int]


def run_routing(plan: RoutingPlan, work: Path) -> dict[str, Any]:
    timing = SimTiming(**{**asdict(plan.timing), "max_loras": plan.slots})
    plan = RoutingPlan(**{**asdict(plan), "timing": timing})
    base = tiny_base(work / "base")
    paths = make_adapters(base, work / "adapters", plan.adapters, rank=8)
    rounds = []
    for r in range(plan.rounds):
        order = plan.modes if r % 2 == 0 else plan.modes[::-1]
        seed = plan.seed + 1000 * r  # the same requests for both modes in a round, others in the next
        runs = {mode: _run_mode(plan, mode, base, paths, work / f"round{r + 1}-{mode}", seed) for mode in order}
        rounds.append({mode: runs[mode] for mode in plan.modes})
    median = {mode: _median([r[mode] for r in rounds]) for mode in plan.modes}
    result: dict[str, Any] = {
        "engines": "simulated (adaptserve.bench.sim_engine), not vLLM: three vLLM engines do not fit on this machine",
        "plan": asdict(plan) | {"zipf_s": ZIPF_S},
        "cpus": os.cpu_count(),
        "median": median,
        "rounds": rounds,
    }
    if {"picker", "round_robin"} <= set(median):
        result |= _compare(median["picker"], median["round_robin"])
    return result


_HEADLINE = (
    "requests",
    "errors",
    "output_tokens_per_s",
    "ttft_p50",
    "ttft_p99",
    "e2e_p50",
    "e2e_p99",
    "adapter_loads",
    "loads_per_100_requests",
    "requests_behind_a_load_pct",
)
_JOIN = ("up_to_ready_s", "up_to_first_adapter_token_s", "ready_to_first_adapter_token_s")


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures' medians over the rounds (each figure on its own)."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in _HEADLINE}
    joined = [r["join"] for r in runs if r["join"]["joined"]]
    out["join"] = {k: _median_or_none([j[k] for j in joined]) for k in _JOIN}
    return out


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def tiny_base(folder: Path) -> Path:
    """A tiny Llama's config and zero weights: what the gateway checks adapters against."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "num_hidden_layers": 2,
        "vocab_size": 100,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    shapes = {"q_proj": (32, 32), "k_proj": (16, 32), "v_proj": (16, 32), "o_proj": (32, 32)}
    tensors = {"model.embed_tokens.weight": np.zeros((100, 32), np.float16)}
    for layer in range(2):
        for name, shape in shapes.items():
            tensors[f"model.layers.{layer}.self_attn.{name}.weight"] = np.zeros(shape, np.float16)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _run_mode(plan: RoutingPlan, mode: str, base: Path, paths: list[Path], folder: Path, seed: int) -> dict[str, Any]:
    servers = [SimServer(plan.timing, free_port()) for _ in range(plan.engines + 1)]
    gateway = None
    try:
        for server in servers[:-1]:
            server.start()
        gateway = _gateway(mode, plan.resident, base, [s.url for s in servers], folder)
        fleet = build_fleet(gateway.url, ADMIN_KEY, paths, plan.tenants)
        models = fleet.adapter_models(plan.adapters)
        warm = _requests(plan, models, plan.warmup, seed + 1, "w")
        asyncio.run(_closed(gateway.url, warm, plan.concurrency, None))
        engines = [s.engine for s in servers]
        mark = _Mark(
            [len(e.loads) for e in engines],
            [len(e.unloads) for e in engines],
            [e.stalled_s for e in engines],
            [len(e.finished) for e in engines],
        )
        measured = _requests(plan, models, plan.requests, seed, "m")
        join = _Join(gateway.url, servers[-1], int(plan.join_after * len(measured)))
        gateway_cpu, own_cpu = psutil.Process(gateway.process.pid), time.process_time()
        cpu_before = sum(gateway_cpu.cpu_times()[:2])
        run, t0 = asyncio.run(_closed(gateway.url, measured, plan.concurrency, join))
        out = _summary(run, t0, servers, mark, join)
        out["cpu_pct_of_one_core"] = {  # how busy the machine was: a saturated one would distort the timings
            "gateway": 100 * (sum(gateway_cpu.cpu_times()[:2]) - cpu_before) / run.wall_s,
            "clients_and_engines": 100 * (time.process_time() - own_cpu) / run.wall_s,
        }
        return out
    finally:
        if gateway is not None:
            gateway.stop()
        for server in servers:
            server.stop()


def _gateway(mode: str, resident: int, base: Path, upstreams: list[str], folder: Path) -> Served:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    settings = {
        "routing": mode,
        "max_resident_adapters": resident,
        "base_via_zero_adapter": False,
        "served_model_name": BASE,
        "log_level": "warning",
    }
    (folder / "adaptserve.yaml").write_text(yaml.safe_dump(settings))
    args = ["--config", str(folder / "adaptserve.yaml")] + [a for url in upstreams for a in ("--upstream", url)]
    return Served(base, folder / "data", free_port(), folder / "models", args=args)


def _requests(plan: RoutingPlan, models: list[tuple[str, str]], count: int, seed: int, tag: str) -> list[Request]:
    """Zipf-popular adapter requests; each prompt starts with its own tag (`tag` and its
    index), which the engines record (`Sequence.tag`)."""
    drawn = workload(
        models, count, input_words=plan.input_words, max_tokens=plan.max_tokens, popularity_kind="zipf", seed=seed
    )
    return [Request(r.key, r.model, f"{tag}{i} {r.prompt}", r.max_tokens) for i, r in enumerate(drawn)]


class _Join:
    """The engine that comes up once `after` requests have finished, and when the
    gateway first reported it in service (its /metrics, polled every 50 ms)."""

    def __init__(self, gateway: str, server: SimServer, after: int) -> None:
        self.gateway, self.server, self.after = gateway, server, after
        self.ready_at: float | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._come_up())

    async def _come_up(self, timeout_s: float = 60.0) -> None:
        await asyncio.to_thread(self.server.start)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        deadline = time.perf_counter() + timeout_s
        async with httpx.AsyncClient(timeout=10) as client:
            while time.perf_counter() < deadline:
                text = (await client.get(self.gateway + "/metrics", headers=headers)).text
                if _in_service(text, self.server.url):
                    self.ready_at = time.perf_counter()
                    return
                await asyncio.sleep(0.05)


def _in_service(metrics: str, url: str) -> bool:
    """The gateway's metrics say upstream `url` is in service (whatever its other labels)."""
    return any(
        sample.name == "adaptserve_upstream_up" and sample.labels.get("upstream") == url and sample.value == 1
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    )


async def _closed(url: str, requests: list[Request], concurrency: int, join: _Join | None) -> tuple[Run, float]:
    """`concurrency` users, each sending its next request when its last one ends; the
    records in the requests' order."""
    queue = list(reversed(list(enumerate(requests))))
    records: list[Record | None] = [None] * len(requests)
    done = 0
    limits = httpx.Limits(max_connections=concurrency + 4, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()

        async def user() -> None:
            nonlocal done
            while queue:
                i, request = queue.pop()
                records[i] = await send(client, url, request, True, t0)
                done += 1
                if join is not None and done == join.after:
                    join.start()

        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        if join is not None and join.task is not None:
            await join.task
    return Run([r for r in records if r is not None], wall), t0


def _summary(run: Run, t0: float, servers: list[SimServer], mark: _Mark, join: _Join) -> dict[str, Any]:
    engines = [s.engine for s in servers]
    loads = [e.loads[m:] for e, m in zip(engines, mark.loads, strict=True)]
    seqs = {s.tag: (i, s) for i, e in enumerate(engines) for s in e.finished[mark.finished[i] :]}
    s = run.summary()
    n = len(run.records)
    out: dict[str, Any] = {k: s[k] for k in ("requests", "errors", "wall_s", "requests_per_s", "output_tokens_per_s")}
    out |= {k: s[f"{k}_ms"] for k in ("ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p99", "e2e_p50", "e2e_p99")}
    out["adapter_loads"] = sum(map(len, loads))
    out["loads_per_100_requests"] = 100 * out["adapter_loads"] / max(n, 1)
    out["unloads"] = sum(len(e.unloads) - m for e, m in zip(engines, mark.unloads, strict=True))
    out["time"] = _where_time_went(run, t0, seqs, loads)
    out["requests_behind_a_load_pct"] = out["time"]["requests_behind_a_load_pct"]
    measured = {f"m{i}": r for i, r in enumerate(run.records) if r.error is None and r.ttft is not None}
    ttfts = {tag: r.ttft for tag, r in measured.items() if tag in seqs and r.ttft is not None}
    starts = {tag: t0 + r.start for tag, r in measured.items()}
    out["slowest_1pct"] = tail_split(ttfts, starts, seqs, [e.finished for e in engines])
    out["loads_split"] = load_split(loads, seqs)
    out["engines"] = [
        {
            "url": server.url,
            "joined": i == len(servers) - 1,
            "requests": sum(1 for j, _ in seqs.values() if j == i),
            "adapters_served": len({seq.model for j, seq in seqs.values() if j == i}),
            "loads": len(loads[i]),
            "stalled_in_loads_s": round(server.engine.stalled_s - mark.stalled_s[i], 3),
        }
        for i, server in enumerate(servers)
    ]
    joined = [seq for i, seq in seqs.values() if i == len(servers) - 1]
    out["join"] = _join_summary(join, servers[-1].engine, joined, [t0 + r.start for r in run.records])
    return out


def _where_time_went(run: Run, t0: float, seqs: dict, loads: list[list]) -> dict[str, Any]:
    """TTFT in parts, per request (by its tag): in the gateway until the engine had it
    (adapter loads waited on included), in the engine's queue (a full batch, or no
    adapter slot), the first step, and the way back to the client."""
    parts: dict[str, list[float]] = {"gateway": [], "engine_queue": [], "first_step": [], "relay": [], "ttft": []}
    behind_load = slot_waited = 0
    for i, record in enumerate(run.records):
        found = seqs.get(f"m{i}")
        if record.error is not None or record.ttft is None or found is None:
            continue
        engine, seq = found
        start = t0 + record.start
        assert seq.admitted is not None and seq.first_token is not None
        parts["gateway"].append(seq.arrived - start)
        parts["engine_queue"].append(seq.admitted - seq.arrived)
        parts["first_step"].append(seq.first_token - seq.admitted)
        parts["relay"].append(record.ttft - (seq.first_token - start))
        parts["ttft"].append(record.ttft)
        behind_load += any(ev.name == seq.model and start <= ev.ended <= seq.arrived for ev in loads[engine])
        slot_waited += seq.slot_waits > 0
    measured = len(parts["ttft"])
    slowest = sorted(range(measured), key=lambda k: parts["ttft"][k])[int(0.99 * measured) :]
    out: dict[str, Any] = {
        "requests_matched": measured,
        "requests_behind_a_load_pct": 100 * behind_load / max(measured, 1),
        "requests_waiting_for_an_adapter_slot_pct": 100 * slot_waited / max(measured, 1),
    }
    for name, values in parts.items():
        out[name] = {
            "mean_ms": 1000 * sum(values) / max(len(values), 1),
            "p50_ms": 1000 * percentile(values, 50),
            "p99_ms": 1000 * percentile(values, 99),
            "slowest_1pct_mean_ms": 1000 * sum(values[k] for k in slowest) / max(len(slowest), 1),
        }
    return out


def _join_summary(join: _Join, engine: SimEngine, served: list[Sequence], starts: list[float]) -> dict[str, Any]:
    """The engine that came up mid-run: from up (serving /health) to ready in the
    gateway, and to its first adapter token. Ready is when the gateway's /metrics said
    so, or the first request it sent there if that came before the poll saw it (the
    gateway sends nothing to an engine not ready). The adapters placed on it are the
    loads that ended by then: a request's own load ends a load's time after ready."""
    up, ready = engine.up_at, join.ready_at
    if up is None or ready is None:
        return {"joined": False}
    ready = min([ready, *(seq.arrived for seq in served)])
    placed = [ev for ev in engine.loads if ev.ended and ev.ended <= ready]
    first = min((seq.first_token for seq in served if seq.first_token is not None), default=None)
    return {
        "joined": True,
        "up_to_ready_s": ready - up,
        "placed": [_alias(ev.name) for ev in placed],
        "up_to_placed_loaded_s": max(ev.ended for ev in placed) - up if placed else None,
        "up_to_first_adapter_token_s": first - up if first is not None else None,
        "ready_to_first_adapter_token_s": first - ready if first is not None else None,
        "share_of_later_requests": len(served) / max(sum(1 for start in starts if start >= ready), 1),
    }


def _alias(internal: str) -> str:
    return internal.split("--", 1)[0].removeprefix("bench-")


def _compare(picker: dict[str, Any], rr: dict[str, Any]) -> dict[str, Any]:
    keys = ("loads_per_100_requests", "output_tokens_per_s", "ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99")
    ratio = {k: picker[k] / rr[k] if rr[k] else None for k in keys}
    first = picker["join"].get("ready_to_first_adapter_token_s")
    loads, tps, p99 = picker["loads_per_100_requests"], picker["output_tokens_per_s"], picker["ttft_p99"]
    targets = {  # what the picker measured (and what round robin did), and whether it meets the target
        "adapter loads under 5 per 100 adapter requests": (loads < 5, loads, rr["loads_per_100_requests"]),
        "output tokens/s not below round robin's": (tps >= rr["output_tokens_per_s"], tps, rr["output_tokens_per_s"]),
        "TTFT p99 at most half of round robin's (ms)": (p99 <= rr["ttft_p99"] / 2, p99, rr["ttft_p99"]),
        "a new replica serves its adapters within 10 s of ready (s)": (
            first is not None and first <= 10,
            first,
            rr["join"].get("ready_to_first_adapter_token_s"),
        ),
    }
    named = {name: {"met": met, "picker": ours, "round_robin": theirs} for name, (met, ours, theirs) in targets.items()}
    return {"ratio_picker_over_round_robin": ratio, "targets": named}
