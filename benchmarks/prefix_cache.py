"""The `sentiment` template against the engine's KV block size: how much of each prompt
vLLM's prefix cache serves, and what that does to inputs/s.

A classify template renders everything constant first (the chat template's system turn,
the instruction, the label list) and the caller's text last, so every call of it shares
a prefix: 51 tokens of SmolLM2's ~72 for `sentiment`. vLLM caches whole blocks only; its
CPU default is 128 tokens, longer than that prefix, so nothing is reused. One gateway per
block size (each with its own supervised engine, `make serve`'s settings otherwise) runs
the same fresh Rotten Tomatoes sentences, one input per call; rounds alternate the order.
Cached and prefilled tokens come from each engine's own counters.

    .venv/bin/python benchmarks/prefix_cache.py --out benchmarks/results/prefix-cache
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from adaptserve.bench.classify_race import template_side
from adaptserve.bench.served import KEY, Served, metric_sums
from adaptserve.config import Settings
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.upstream.supervisor import free_port

COUNTERS = ("vllm:prompt_tokens_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")


def start(block: int, root: Path, templates: Path) -> Served:
    folder = root / f"block-{block}"
    (folder / "data").mkdir(parents=True)
    config = folder / "adaptserve.yaml"
    config.write_text(yaml.safe_dump({"vllm": {"block_size": block}}))
    models_dir = Settings().resolved_models_dir  # where `make serve` converted the model
    model = resolve_model("default", models_dir)
    return Served(model, folder / "data", free_port(), models_dir, templates=templates, args=["--config", str(config)])


def measure(served: Served, texts: list[Any], concurrency: int) -> dict[str, float]:
    assert served.vllm is not None
    before = metric_sums(served.vllm, COUNTERS)
    report = asyncio.run(template_side(served.url, KEY, "sentiment", texts, "text", 1, concurrency))
    after = metric_sums(served.vllm, COUNTERS)
    delta = {k: after[k] - before[k] for k in COUNTERS}
    return {
        "inputs_per_s": report["throughput"]["inputs_per_s"],
        "accuracy": report["calibrated"]["accuracy"],
        "prompt_tokens_per_input": delta["vllm:prompt_tokens_total"] / len(texts),
        "cached_tokens_per_input": delta["vllm:prefix_cache_hits_total"] / len(texts),
        "hit_rate": delta["vllm:prefix_cache_hits_total"] / max(1.0, delta["vllm:prefix_cache_queries_total"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prefix-cache"))
    parser.add_argument("--blocks", default="128,64,32")
    parser.add_argument("--inputs", type=int, default=48, help="fresh inputs per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight (1: one caller)")
    args = parser.parse_args()
    blocks = [int(b) for b in args.blocks.split(",")]
    texts = load_dataset("rotten-tomatoes", "test")
    runs: dict[int, list[dict[str, float]]] = {b: [] for b in blocks}
    startup: dict[int, float] = {}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp) / "bench"
        served = {}
        try:
            for b in blocks:  # one at a time: starts compete for the two cores
                served[b] = start(b, root, Path("templates"))
                startup[b] = served[b].startup_s
                asyncio.run(template_side(served[b].url, KEY, "sentiment", texts[-8:], "text", 1, 4))  # warm up
            for r in range(args.rounds):
                chunk = texts[r * args.inputs : (r + 1) * args.inputs]
                for b in blocks if r % 2 == 0 else reversed(blocks):
                    runs[b].append(measure(served[b], chunk, args.concurrency))
                    print(f"round {r} block {b}: {runs[b][-1]}", flush=True)
        finally:
            for s in served.values():
                s.stop()
    median = {b: {k: statistics.median(run[k] for run in runs[b]) for k in runs[b][0]} for b in blocks}
    base = median[blocks[0]]["inputs_per_s"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "command": f"benchmarks/prefix_cache.py --blocks {args.blocks} --inputs {args.inputs} "
        f"--rounds {args.rounds} --concurrency {args.concurrency}",
        "commit": commit,
        "median": median,
        "ratio_to_first": {b: median[b]["inputs_per_s"] / base for b in blocks},
        "startup_s": startup,
        "rounds": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"concurrency-{args.concurrency}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2), json.dumps(result["ratio_to_first"]))


if __name__ == "__main__":
    main()
