"""Per-request cost of the gateway itself (authentication in the database, alias
resolution, quota check, forwarding, metering) against an upstream that answers at
once (the test suite's fake vLLM), so the difference is the gateway's own time. The
gateway is served as `adaptserve serve` serves it (h11, which bounds header buffering),
and once more with uvicorn's httptools parser, to show what that choice costs.

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
from tests.servers import ServerThread, free_port
from tests.unit.factories import make_adapter, make_base

from adaptserve.config import Settings
from adaptserve.server import listen
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
    base, alpha = make_base(root / BASE), make_adapter(root / "alpha")
    rows = {}
    try:
        for parser in ("h11", "httptools"):
            settings = Settings(
                api_key="sk-cost",
                admin_key="sk-cost-admin",
                data_dir=root / parser,
                model=str(base),
                upstreams=[fake.url],
                adapters={"alpha": alpha},
                log_level="warning",
                port=free_port(),
            )
            (config,) = listen.configs(create_app(settings), settings)
            config.http = parser
            gateway = ServerThread(None, config=config).start(ready_path="/ready")
            try:
                rows.update(_measure(fake.url, gateway.url, parser, args.requests))
            finally:
                gateway.stop()
    finally:
        fake.stop()
    print("| request | parser | fake vLLM direct (ms) | through the gateway (ms) | gateway cost (ms) |")
    print("|---|---|---|---|---|")
    for (kind, parser), (d, g) in rows.items():
        print(f"| {kind} | {parser} | {d * 1000:.2f} | {g * 1000:.2f} | {(g - d) * 1000:.2f} |")


def _measure(fake: str, gateway: str, parser: str, n: int) -> dict[tuple[str, str], tuple[float, float]]:
    rows = {}
    with httpx.Client(timeout=30) as client:
        for stream in (False, True):
            timings(client, gateway, "sk-cost", "alpha", 20, stream)  # warm-up
            direct = timings(client, fake, "unused", BASE, n, stream)
            through = timings(client, gateway, "sk-cost", "alpha", n, stream)
            rows[("streamed" if stream else "plain", parser)] = (statistics.median(direct), statistics.median(through))
    return rows


if __name__ == "__main__":
    main()
