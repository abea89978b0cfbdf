"""The `sentiment` template against the engine's OpenMP binding on this 2-core machine.

vLLM's CPU worker binds its OpenMP threads by `VLLM_CPU_OMP_THREADS_BIND`: `auto` (the
default) gives the model one core and leaves the other to the front end (the log says
`core ids=[0]`, `reserved_cpus=[1]`); a range like `0-1` gives it both. The gateway passes
its environment (less its own settings) to the engine it supervises, so the operator sets
it where `adaptserve serve` runs. One gateway per binding, each with its own engine
(`make serve`'s settings otherwise), up together; the same fresh Rotten Tomatoes sentences
go to each in turn, one input per call, at 1 and at 4 calls in flight; rounds alternate
the order.

    .venv/bin/python benchmarks/engine_threads.py --out benchmarks/results/engine-threads
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

from adaptserve.bench.classify_race import template_side
from adaptserve.bench.served import KEY, Served
from adaptserve.config import Settings
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.upstream.supervisor import free_port


def start(bind: str, root: Path, templates: Path) -> Served:
    folder = root / f"bind-{bind}"
    (folder / "data").mkdir(parents=True)
    models_dir = Settings().resolved_models_dir  # where `make serve` converted the model
    model = resolve_model("default", models_dir)
    env = {"VLLM_CPU_OMP_THREADS_BIND": bind}
    return Served(model, folder / "data", free_port(), models_dir, env=env, templates=templates)


def measure(served: Served, texts: list[Any], concurrency: int) -> dict[str, float]:
    report = asyncio.run(template_side(served.url, KEY, "sentiment", texts, "text", 1, concurrency))
    return {"inputs_per_s": report["throughput"]["inputs_per_s"], "accuracy": report["calibrated"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine-threads"))
    parser.add_argument("--binds", default="auto,0-1")
    parser.add_argument("--inputs", type=int, default=32, help="fresh inputs per side, round and concurrency")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binds = args.binds.split(",")
    texts = load_dataset("rotten-tomatoes", "test")
    runs: dict[str, dict[int, list[dict[str, float]]]] = {b: {1: [], 4: []} for b in binds}
    startup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        served: dict[str, Served] = {}
        try:
            for b in binds:  # one at a time: starts compete for the two cores
                served[b] = start(b, Path(tmp), Path("templates"))
                startup[b] = served[b].startup_s
                asyncio.run(template_side(served[b].url, KEY, "sentiment", texts[-8:], "text", 1, 4))  # warm up
            n = 0
            for r in range(args.rounds):
                for concurrency in (1, 4):
                    chunk = texts[n : n + args.inputs]
                    n += args.inputs
                    for b in binds if r % 2 == 0 else reversed(binds):
                        runs[b][concurrency].append(measure(served[b], chunk, concurrency))
                        print(f"round {r} bind {b} concurrency {concurrency}: {runs[b][concurrency][-1]}", flush=True)
        finally:
            for s in served.values():
                s.stop()
    median = {b: {c: statistics.median(x["inputs_per_s"] for x in runs[b][c]) for c in (1, 4)} for b in binds}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "command": f"benchmarks/engine_threads.py --binds {args.binds} --inputs {args.inputs} --rounds {args.rounds}",
        "commit": commit,
        "median_inputs_per_s": median,
        "ratio_to_first": {b: {c: median[b][c] / median[binds[0]][c] for c in (1, 4)} for b in binds},
        "startup_s": startup,
        "rounds": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_inputs_per_s"], indent=2), json.dumps(result["ratio_to_first"]))


if __name__ == "__main__":
    main()
