"""The CPU one non-streamed upstream call costs the gateway, by HTTP client: httpx (what
`upstream/client.py` uses) against aiohttp (installed with vLLM, not a gateway
dependency), each posting the same chat body to the fake vLLM in another process and
reading the answer whole, one call at a time on uvloop, alternated run by run. The
figure is this process's user + system time over the calls, divided by their number.

    .venv/bin/python benchmarks/upstream_client_cpu.py --requests 3000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import uvloop

from adaptserve.bench.fake_engine import BASE
from adaptserve.upstream.supervisor import free_port

BODY = {"model": BASE, "messages": [{"role": "user", "content": "hello there"}], "cache_salt": "tenant-x"}


def _serve_fake(port: int) -> None:
    import uvicorn

    from adaptserve.bench.fake_engine import FakeState, create_fake_vllm

    uvicorn.run(create_fake_vllm(FakeState()), port=port, log_level="warning")


async def _measure(call: Callable[[], Awaitable[dict]], n: int) -> float:
    for _ in range(50):  # warm-up: connections open
        await call()
    start = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - start) / n


async def _runs(url: str, requests: int, runs: int) -> None:
    httpx_client = httpx.AsyncClient(base_url=url, timeout=30)
    aiohttp_session = aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=30))

    async def with_httpx() -> dict:
        response = await httpx_client.post("/v1/chat/completions", json=BODY)
        return json.loads(response.content)

    async def with_aiohttp() -> dict:
        async with aiohttp_session.post("/v1/chat/completions", json=BODY) as response:
            return json.loads(await response.read())

    print("| run | httpx CPU ms/call | aiohttp CPU ms/call | aiohttp / httpx |")
    print("|---|---|---|---|")
    try:
        for run in range(1, runs + 1):
            a = await _measure(with_httpx, requests)
            b = await _measure(with_aiohttp, requests)
            print(f"| {run} | {a * 1e3:.3f} | {b * 1e3:.3f} | {b / a:.2f} |", flush=True)
    finally:
        await httpx_client.aclose()
        await aiohttp_session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: the fake vLLM's port
    args = parser.parse_args()
    if args.serve:
        _serve_fake(args.serve)
        return
    port = free_port()
    fake = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        print(f"loadavg at start: {Path('/proc/loadavg').read_text().strip()}")
        uvloop.run(_runs(url, args.requests, args.runs))
        print(f"loadavg at end: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
