"""Per-request cost of the gateway itself (authentication in the database, alias
resolution, quota check, forwarding, metering) against an upstream that answers at
once (the test suite's fake vLLM), so the difference is the gateway's own time.

    python benchmarks/gateway_cost.py --requests 300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fakes.fake_vllm import BASE, FakeState, create_fake_vllm
from tests.servers import ServerThread
from tests.unit.factories import make_adapter, make_base

from adaptserve.config import Settings
from adaptserve.server.app import create_app


def timings(client: httpx.Client, url: str, key: str, model: str, n: int, stream: bool) -> list[float]:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], "stream": stream}
    out = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        response.read()
        response.raise_for_status()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="adaptserve-cost-"))
    fake = ServerThread(create_fake_vllm(FakeState())).start()
    settings = Settings(
        api_key="sk-cost",
        admin_key="sk-cost-admin",
        data_dir=root / "data",
        model=str(make_base(root / BASE)),
        upstreams=[fake.url],
        adapters={"alpha": make_adapter(root / "alpha")},
        log_level="warning",
    )
    gateway = ServerThread(create_app(settings)).start(ready_path="/ready")
    rows = {}
    try:
        with httpx.Client(timeout=30) as client:
            for stream in (False, True):
                timings(client, gateway.url, "sk-cost", "alpha", 20, stream)  # warm-up
                direct = timings(client, fake.url, "unused", BASE, args.requests, stream)
                through = timings(client, gateway.url, "sk-cost", "alpha", args.requests, stream)
                rows["streamed" if stream else "plain"] = (statistics.median(direct), statistics.median(through))
    finally:
        gateway.stop()
        fake.stop()
    print("| request | fake vLLM direct (ms) | through the gateway (ms) | gateway cost (ms) |\n|---|---|---|---|")
    for kind, (d, g) in rows.items():
        print(f"| {kind} | {d * 1000:.2f} | {g * 1000:.2f} | {(g - d) * 1000:.2f} |")


if __name__ == "__main__":
    main()
