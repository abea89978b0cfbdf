"""Scenarios 1 to 3 of `adaptserve bench`, each measured side by side in one run so the
ratios hold on a noisy machine: the gateway against vLLM direct (and latency against
offered load), the base model against 1..64 adapters (uniform and Zipf), and
adaptserve against a plain transformers+peft server. Sides of a comparison alternate
order by round and never share prompts (the prefix cache would favour the second)."""

from __future__ import annotations

import asyncio
import re
import statistics
from dataclasses import dataclass
from typing import Any

import httpx

from adaptserve.bench.fleet import Fleet
from adaptserve.bench.loadgen import Request, closed_loop, poisson, workload

Models = list[tuple[str, str]]  # (key, model) pairs


@dataclass(frozen=True)
class Load:
    requests: int = 24  # per measured side
    concurrency: int = 8  # closed-loop users
    input_words: int = 32  # synthetic prompt length (about one token a word)
    max_tokens: int = 16  # every answer is exactly this long
    seed: int = 0
    prompts: tuple[str, ...] = ()  # drawn from instead of synthetic ones (a dataset's texts)

    def workload(self, models: Models, popularity: str = "uniform", seed: int = 0) -> list[Request]:
        return workload(
            models,
            self.requests,
            input_words=self.input_words,
            max_tokens=self.max_tokens,
            popularity_kind=popularity,
            prompts=list(self.prompts) or None,
            seed=self.seed + seed,
        )


def closed(url: str, models: Models, load: Load, popularity: str = "uniform", stream: bool = True, seed: int = 0):
    return asyncio.run(closed_loop(url, load.workload(models, popularity, seed), load.concurrency, stream)).summary()


def side_by_side(sides: dict[str, tuple[str, Models]], load: Load, rounds: int, stream: bool = True) -> dict:
    """Every side once per round, the order flipped each round; medians over rounds."""
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            url, models = sides[name]
            seed = 1000 * (r + 1) + list(sides).index(name)
            runs[name].append(closed(url, models, load, stream=stream, seed=seed))
    return {"median": {name: median_of(rs) for name, rs in runs.items()}, "rounds": runs}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        out[key] = statistics.median(values) if isinstance(value, int | float) and values else value
    return out


def gateway_vs_direct(gateway: str, direct: str, base_name: str, fleet: Fleet, load: Load, rounds: int) -> dict:
    """Scenario 1: the same streamed load straight to vLLM and through the gateway."""
    sides = {"vLLM direct": (direct, [("unused", base_name)]), "gateway": (gateway, fleet.base_models())}
    result = side_by_side(sides, load, rounds)
    ours, theirs = result["median"]["gateway"], result["median"]["vLLM direct"]
    result["ratio"] = {
        "throughput": ours["output_tokens_per_s"] / theirs["output_tokens_per_s"],
        "ttft_p50_ms_added": ours["ttft_p50_ms"] - theirs["ttft_p50_ms"],
    }
    return result


def latency_vs_load(gateway: str, fleet: Fleet, load: Load, saturated_rps: float, fractions: list[float]) -> list:
    """Open-loop Poisson arrivals at fractions of the closed-loop request rate."""
    rows = []
    for i, fraction in enumerate(fractions):
        rate = fraction * saturated_rps
        requests = load.workload(fleet.base_models(), seed=500 + i)
        summary = asyncio.run(poisson(gateway, requests, rate, seed=load.seed + i)).summary()
        rows.append({"offered_fraction": fraction, "offered_rps": rate} | summary)
    return rows


def adapter_loads(url: str, admin_key: str) -> float:
    """The gateway's count of adapter loads into vLLM so far (Prometheus text)."""
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30).text
    return sum(float(v) for v in re.findall(r'^adaptserve_adapter_loads_total\{result="ok"\} (\S+)$', text, re.M))


def warm(url: str, models: Models) -> None:
    """One 1-token request per model: adapters resident, first-use costs paid."""
    asyncio.run(closed_loop(url, [Request(key, model, "Hello", 1) for key, model in models], 4, stream=False))


def adapter_scaling(gateway: str, admin_key: str, fleet: Fleet, load: Load, counts: list[int], warm_up: int) -> list:
    """Scenario 2: base only, then 1..N adapters, uniform and Zipf, at a saturating load."""
    warm(gateway, fleet.base_models() + fleet.adapter_models(min(warm_up, len(fleet.adapters))))
    rows = [{"adapters": 0, "popularity": "base", "adapter_loads": 0} | closed(gateway, fleet.base_models(), load)]
    for n in counts:
        for popularity in ("uniform",) if n == 1 else ("uniform", "zipf"):
            before = adapter_loads(gateway, admin_key)
            summary = closed(gateway, fleet.adapter_models(n), load, popularity, seed=n)
            loads = adapter_loads(gateway, admin_key) - before
            rows.append({"adapters": n, "popularity": popularity, "adapter_loads": int(loads)} | summary)
    return rows


def engine_shape(
    default: str, tuned: str, merged: str, fleet: Fleet, tuned_fleet: Fleet, load: Load, rounds: int
) -> dict:
    """The same one-adapter load on the default engine, on one with LoRA layers only where
    the adapter has weights (each beside its base model), and on an engine without LoRA
    serving that adapter merged into the base weights (`merged`, vLLM direct)."""
    sides = {
        "default engine, base": (default, fleet.base_models()),
        "default engine, 1 adapter": (default, fleet.adapter_models(1)),
        "tuned engine, base": (tuned, tuned_fleet.base_models()),
        "tuned engine, 1 adapter": (tuned, tuned_fleet.adapter_models(1)),
        "engine without LoRA, the adapter merged": (merged, [("unused", "merged")]),
    }
    warm(tuned, tuned_fleet.base_models() + tuned_fleet.adapter_models(1))
    result = side_by_side(sides, load, rounds)
    m = {name: s["output_tokens_per_s"] for name, s in result["median"].items()}
    result["ratio"] = {
        "default adapter / base": m["default engine, 1 adapter"] / m["default engine, base"],
        "tuned adapter / base": m["tuned engine, 1 adapter"] / m["tuned engine, base"],
        "tuned adapter / default adapter": m["tuned engine, 1 adapter"] / m["default engine, 1 adapter"],
        "merged / default adapter": m["engine without LoRA, the adapter merged"] / m["default engine, 1 adapter"],
    }
    return result


def versus_peft(gateways: dict[str, tuple[str, Fleet]], peft: str, load: Load, counts: list[int], rounds: int) -> dict:
    """Scenario 3: adaptserve (each of `gateways`) and the transformers+peft server, the
    same adapters and load, not streamed (the baseline cannot stream a batch)."""
    out = {}
    for n in counts:
        sides = {name: (url, fleet.adapter_models(n)) for name, (url, fleet) in gateways.items()}
        sides["transformers+peft"] = (peft, [("unused", f"a{j}") for j in range(n)])
        result = side_by_side(sides, load, rounds, stream=False)
        theirs = result["median"]["transformers+peft"]["output_tokens_per_s"]
        result["ratio"] = {name: result["median"][name]["output_tokens_per_s"] / theirs for name in gateways}
        out[str(n)] = result
    return out
