"""Where an engine step's time goes, with the engine plugin on: the torch profiler of
vLLM's worker (vLLM's own `--profiler-config`), around two loads through the gateway.

1. `classify`: one-input `sentiment` calls (the template's scoring request: a prompt of
   about 90 tokens, one generated token, label log-probabilities), 8 at a time
   (`--concurrency 1 --loads classify`: one at a time, as `profile-classify-1.txt`).
2. `adapter`: streamed chat on one rank-8 q/v adapter, 8 users, 16 tokens each.

vLLM writes the worker's operator table (self CPU time, sorted) when profiling stops;
this script copies each to `--out` as `profile-<load>.txt` with a short header.

    .venv/bin/python benchmarks/profile_engine.py --out benchmarks/results/engine-plugin
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from adaptserve_client import Client

from adaptserve.bench.classify_race import template_side
from adaptserve.bench.fleet import make_adapter
from adaptserve.bench.loadgen import closed_loop, workload
from adaptserve.bench.run import free_port
from adaptserve.bench.served import ADMIN_KEY, KEY, Served
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model

ROWS = 40  # operator rows kept from vLLM's table


def profiled(engine: str, traces: Path, out: Path, name: str, load: Callable[[], object]) -> None:
    httpx.post(engine + "/start_profile", timeout=120).raise_for_status()
    started = time.perf_counter()
    load()
    elapsed = time.perf_counter() - started
    httpx.post(engine + "/stop_profile", timeout=600).raise_for_status()
    deadline, lines, last = time.monotonic() + 300, ["(vLLM wrote no table)"], ""
    while time.monotonic() < deadline:  # the worker writes its tables after exporting the trace
        time.sleep(3)
        tables = [t.read_text() for t in traces.glob("*profiler_out.txt")]
        text = max(tables, key=len, default="")
        if "Self CPU time total" in text and text == last:  # complete, and no longer changing
            lines = text.splitlines()
            break
        last = text
    header = f"# {name}: {elapsed:.1f} s under the profiler (vLLM worker, torch profiler, self CPU time)\n"
    (out / f"profile-{name}.txt").write_text(header + "\n".join(lines[: ROWS + 4]) + "\n")
    for table in traces.glob("*profiler_out.txt"):
        table.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine-plugin"))
    parser.add_argument("--inputs", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8, help="classify calls in flight (1: one at a time)")
    parser.add_argument("--loads", default="classify,adapter", help="which loads to profile")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="adaptserve-profile-"))
    base = resolve_model("default", Path.home() / ".local" / "share" / "adaptserve" / "models")
    traces = work / "traces"
    profiler = {"profiler": "torch", "torch_profiler_dir": str(traces), "torch_profiler_with_stack": False}
    settings = {"vllm": {"extra_args": ["--profiler-config", json.dumps(profiler)]}}
    (work / "adaptserve.yaml").write_text(json.dumps(settings))
    (work / "data").mkdir()
    config = ["--config", str(work / "adaptserve.yaml")]
    served = Served(base, work / "data", free_port(), base.parent, templates=Path("templates").resolve(), args=config)
    try:
        with Client(served.url, ADMIN_KEY, timeout=600) as client:
            client.admin.adapters.push(make_adapter(base, work / "a0", seed=0), "a0")
            client.admin.aliases.set("default", "a0", adapter="a0")
        texts = load_dataset("rotten-tomatoes", "test")[: args.inputs + 4]
        asyncio.run(template_side(served.url, KEY, "sentiment", texts[-4:], "text", 1, 4))  # calibration, warm-up
        requests = workload([(KEY, "a0")], 24, input_words=32, max_tokens=16, seed=3)
        asyncio.run(closed_loop(served.url, requests[:4], 4))  # the adapter loaded
        engine = served.vllm
        assert engine is not None

        def classify() -> None:
            asyncio.run(template_side(served.url, KEY, "sentiment", texts[:-4], "text", 1, args.concurrency))

        loads = args.loads.split(",")
        if "classify" in loads:
            name = "classify" if args.concurrency == 8 else f"classify-{args.concurrency}"
            profiled(engine, traces, args.out, name, classify)
        if "adapter" in loads:
            profiled(engine, traces, args.out, "adapter", lambda: asyncio.run(closed_loop(served.url, requests, 8)))
    finally:
        served.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
