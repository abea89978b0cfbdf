"""Gateway overhead: the same streamed chat load sent to vLLM directly and through
the gateway, alternating rounds in one run so the ratio holds on a noisy machine.

Starts one `adaptserve serve` (with a vLLM child), then for each round sends
N requests (C at a time) to each side and reports output tokens/s and median
time to first token (TTFT) per side, and their ratios.

    python benchmarks/gateway_overhead.py --requests 32 --concurrency 8 --max-tokens 64 --rounds 3

Note: with `base_via_zero_adapter` on (the default), base requests through the gateway
carry the all-zero LoRA while direct ones do not, so the difference also includes the
cost of that guarantee. `--model <adapter>`-style comparisons use the same LoRA on both
sides; `--direct-model zero` sends the zero adapter directly too, isolating the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KEY = "sk-bench"
PROMPT = "Write a short paragraph about the history of the city of {}."
CITIES = ["Paris", "Rome", "Cairo", "Lima", "Oslo", "Kyoto", "Quito", "Accra"]


async def one_request(client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT.format(CITIES[i % len(CITIES)])}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream(
        "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return ttft or 0.0, tokens


async def run_side(url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def bounded(i: int) -> tuple[float, int]:
            async with semaphore:
                return await one_request(client, url, model, i, max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(i) for i in range(requests)))
        elapsed = time.perf_counter() - start
    tokens = sum(t for _, t in results)
    return {
        "tokens_per_s": tokens / elapsed,
        "median_ttft_s": statistics.median(t for t, _ in results),
        "elapsed_s": elapsed,
        "tokens": tokens,
    }


def start_server(data: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "ADAPTSERVE_DATA_DIR": str(data),
        "ADAPTSERVE_API_KEY": KEY,
        "ADAPTSERVE_MODELS_DIR": os.environ.get(
            "ADAPTSERVE_MODELS_DIR", str(Path.home() / ".local/share/adaptserve/models")
        ),
    }
    log = open(data / "gateway.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "adaptserve", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError((data / "gateway.log").read_text()[-3000:])
        time.sleep(1)
    raise TimeoutError("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gateway_overhead.json")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="adaptserve-bench-"))
    port = 18000 + os.getpid() % 1000
    process = start_server(data, port)
    try:
        gateway = f"http://127.0.0.1:{port}"
        log = (data / "gateway.log").read_text()
        direct = re.search(r"starting vLLM on (http://127\.0\.0\.1:\d+)", log).group(1)
        zero = re.search(r"loaded (SmolLM2-135M-Instruct--\w+)", log).group(1)
        sides = {  # name -> (url, model)
            "direct (no LoRA)": (direct, "SmolLM2-135M-Instruct"),
            "direct (zero LoRA)": (direct, zero),
            "gateway": (gateway, "default"),
        }
        asyncio.run(run_side(gateway, "default", 8, 8, 8))  # warm-up
        rounds: dict[str, list[dict]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name, (url, model) in sides.items():
                result = asyncio.run(run_side(url, model, args.requests, args.concurrency, args.max_tokens))
                rounds[name].append(result)
                print(
                    f"round {r + 1} {name:20s} {result['tokens_per_s']:7.1f} tok/s  "
                    f"median TTFT {result['median_ttft_s'] * 1000:7.1f} ms",
                    flush=True,
                )
    finally:
        process.terminate()
        process.wait(timeout=60)
    report(rounds, args)


def report(rounds: dict[str, list[dict]], args: argparse.Namespace) -> None:
    summary = {
        name: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "median_ttft_ms": 1000 * statistics.median(r["median_ttft_s"] for r in rs),
        }
        for name, rs in rounds.items()
    }
    ref = summary["direct (zero LoRA)"]
    gw, plain = summary["gateway"], summary["direct (no LoRA)"]
    print("\n| side | tokens/s | median TTFT (ms) |\n|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['tokens_per_s']:.1f} | {s['median_ttft_ms']:.1f} |")
    print(
        f"\ngateway / direct (same zero LoRA): throughput x{gw['tokens_per_s'] / ref['tokens_per_s']:.3f}, "
        f"TTFT {gw['median_ttft_ms'] - ref['median_ttft_ms']:+.1f} ms"
    )
    ratio = ref["tokens_per_s"] / plain["tokens_per_s"]
    delta = ref["median_ttft_ms"] - plain["median_ttft_ms"]
    print(f"zero-LoRA guarantee / plain base (direct): throughput x{ratio:.3f}, TTFT {delta:+.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "summary": summary,
                "rounds": rounds,
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "commit": commit,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
