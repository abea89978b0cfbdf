"""Issue 34's `sentiment` target against the matmuls it needs: in one run, the template
under `make serve`'s defaults (the LLM and MiniLM, one input per call) with the tokens its
engine prefilled per input (vLLM's own counters), then, with the server stopped, the same
linear layers timed alone on one core (vLLM's `auto` binding gives the LLM worker one)
in the engine's dtype at that many tokens, and a large square matmul as the core's peak.

    .venv/bin/python benchmarks/prefill_roofline.py --out benchmarks/results/prefill-roofline

What it prints: inputs/s measured; the model FLOPs per input (2 × the linear weights ×
prefilled tokens, plus attention's score and value products); the rate that implies; how
long the linear layers take alone per input at the measured shapes, so the most inputs/s
the matmuls would allow if nothing else ran; and the core's peak for scale. The time per
input is split by the engine's own histograms: its whole request (front end to answer),
the wait to be scheduled, and the step that prefills; the rest of the client's time is the
gateway, the two HTTP hops and vLLM's front end (each input is a `/tokenize` call and a
one-token completion).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adaptserve.bench.classify_race import template_side
from adaptserve.bench.served import KEY, MAKE_SERVE_MODELS, Served, metric_sums
from adaptserve.config import Settings
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.upstream.supervisor import free_port

# The engine's own counters, and the sums of its request-time histograms (seconds)
COUNTERS = ("vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total", "vllm:request_success_total")
TIMES = (
    "vllm:e2e_request_latency_seconds_sum",  # from the engine's front end receiving it to the answer
    "vllm:request_queue_time_seconds_sum",  # waiting to be scheduled
    "vllm:request_prefill_time_seconds_sum",  # scheduled to first token: the forward pass and its step
)


def served_template(inputs: int, rounds: int, root: Path) -> dict[str, Any]:
    """`sentiment` one input per call on a `make serve` gateway: inputs/s per round and the
    engine's prompt and prefix-cache-hit tokens per input over all rounds."""
    models_dir = Settings().resolved_models_dir
    (root / "data").mkdir(parents=True)
    env = {"ADAPTSERVE_MODELS": MAKE_SERVE_MODELS}
    served = Served(
        resolve_model("default", models_dir),
        root / "data",
        free_port(),
        models_dir,
        env=env,
        templates=Path("templates"),
    )
    try:
        assert served.vllm is not None
        texts = load_dataset("rotten-tomatoes", "test")
        asyncio.run(template_side(served.url, KEY, "sentiment", texts[-8:], "text", 1, 1))  # calibration, warm-up
        before, per_round = metric_sums(served.vllm, COUNTERS + TIMES), []
        started = time.perf_counter()
        for r in range(rounds):
            chunk = texts[r * inputs : (r + 1) * inputs]
            per_round.append(asyncio.run(template_side(served.url, KEY, "sentiment", chunk, "text", 1, 1)))
        wall = time.perf_counter() - started
        after = metric_sums(served.vllm, COUNTERS + TIMES)
    finally:
        served.stop()
    n = inputs * rounds
    delta = {k: after[k] - before[k] for k in after}
    return {
        "ms_per_input": {
            "client": 1000 * wall / n,
            **{k.removeprefix("vllm:").removesuffix("_seconds_sum"): 1000 * delta[k] / n for k in TIMES},
        },
        "engine_requests_per_input": delta["vllm:request_success_total"] / n,
        "inputs_per_s_rounds": [r["throughput"]["inputs_per_s"] for r in per_round],
        "inputs_per_s": statistics.median(r["throughput"]["inputs_per_s"] for r in per_round),
        "accuracy": statistics.median(r["calibrated"]["accuracy"] for r in per_round),
        "prompt_tokens_per_input": (after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]) / n,
        "cached_tokens_per_input": (after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]) / n,
        "startup_s": served.startup_s,
    }


def linear_shapes(config: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(name, in, out) of one decoder layer's linear layers as vLLM fuses them (Llama)."""
    d, f = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * config.get("head_dim", d // config["num_attention_heads"])
    return [("qkv", d, d + 2 * kv), ("o", d, d), ("gate_up", d, 2 * f), ("down", f, d)]


def best_time(run: Any, seconds: float = 0.5) -> float:
    """Seconds per call of `run`, best of 5 batches after a warm-up."""
    for _ in range(10):
        run()
    reps = 10
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            run()
        if time.perf_counter() - start > seconds / 5:
            break
        reps *= 2
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            run()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def kernels(m: int, k: int, n: int, dtype: Any) -> dict[str, float]:
    """Seconds per (m, k) × (k, n) product: vLLM's CPU GEMM for dense layers (oneDNN with
    its weight prepacked, as `dispatch_cpu_unquantized_gemm` chooses for these sizes) and
    torch's `F.linear` for scale."""
    import torch
    from vllm import _custom_ops as ops

    x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype) * 0.02
    handler = ops.create_onednn_mm(w.t(), 32)
    return {
        "vllm_onednn": best_time(lambda: ops.onednn_mm(handler, x, None)),
        "torch_linear": best_time(lambda: torch.nn.functional.linear(x, w)),
    }


def matmuls(config: dict[str, Any], tokens: int, dtype_name: str) -> dict[str, Any]:
    """One prefill's linear layers on one thread (every layer at `tokens` rows, the
    vocabulary projection at the one sampled row), and a 2048³ product as the peak."""
    import torch

    torch.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    layers = config["num_hidden_layers"]
    shapes = [(name, tokens, k, n, layers) for name, k, n in linear_shapes(config)]
    shapes.append(("lm_head", 1, config["hidden_size"], config["vocab_size"], 1))
    timed = {name: kernels(m, k, n, dtype) for name, m, k, n, _ in shapes}
    flops = {name: 2 * m * k * n * times for name, m, k, n, times in shapes}
    repeat = {name: times for name, *_, times in shapes}
    peak = kernels(2048, 2048, 2048, dtype)
    out: dict[str, Any] = {"dtype": dtype_name, "threads": 1, "tokens": tokens}
    for kernel in ("vllm_onednn", "torch_linear"):
        out[kernel] = {
            "gflop_per_s": {name: flops[name] / repeat[name] / t[kernel] / 1e9 for name, t in timed.items()},
            "ms_per_input": 1000 * sum(repeat[name] * t[kernel] for name, t in timed.items()),
            "peak_gflop_per_s": 2 * 2048**3 / peak[kernel] / 1e9,
        }
    out["linear_gflop_per_input"] = sum(flops.values()) / 1e9
    return out


def attention_gflop(config: dict[str, Any], tokens: int) -> float:
    """Causal attention's two products (scores, weighted values) over a prompt."""
    d = config["hidden_size"]
    return config["num_hidden_layers"] * 2 * tokens * tokens * d / 1e9  # 2 products × 2 FLOPs × t²/2 × d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prefill-roofline"))
    parser.add_argument("--inputs", type=int, default=32, help="fresh inputs per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = Settings()
    model = resolve_model("default", settings.resolved_models_dir)
    config = json.loads((Path(model) / "config.json").read_text())
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        template = served_template(args.inputs, args.rounds, Path(tmp))
    prefilled = template["prompt_tokens_per_input"] - template["cached_tokens_per_input"]
    mm = matmuls(config, round(prefilled), settings.vllm.dtype)
    gflop = mm["linear_gflop_per_input"] + attention_gflop(config, round(prefilled))
    result = {
        "command": "benchmarks/prefill_roofline.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "cpus": os.cpu_count(),
        "template": template,
        "prefilled_tokens_per_input": prefilled,
        "model_gflop_per_input": gflop,
        "achieved_gflop_per_s": gflop * template["inputs_per_s"],
        "matmuls": mm,
        "matmul_bound_inputs_per_s": 1000 / mm["vllm_onednn"]["ms_per_input"],
        "linear_layers_share_of_client_time": mm["vllm_onednn"]["ms_per_input"] / template["ms_per_input"]["client"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roofline.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
