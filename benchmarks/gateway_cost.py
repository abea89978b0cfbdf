"""Per-request cost of the gateway itself (authentication in the database, alias
resolution, quota check, forwarding, metering) against an upstream that answers at
once (`adaptserve.bench.fake_engine`, the fake vLLM the unit tests use), so the
difference is the gateway's own time. The base model folder is the default model's
(`make serve` converts it); the engine never runs. The
gateway is served as `adaptserve serve` serves it (h11, which bounds header buffering),
and once more with uvicorn's httptools parser, to show what that choice costs.

    python benchmarks/gateway_cost.py --requests 300
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from served import MODELS_DIR  # benchmarks/ is the script's folder

from adaptserve.bench.fake_engine import BASE, FakeState, create_fake_vllm
from adaptserve.bench.fleet import make_adapter
from adaptserve.config import Settings
from adaptserve.default_model import DEFAULT_MODEL_NAME
from adaptserve.server import listen
from adaptserve.server.app import create_app
from adaptserve.upstream.supervisor import free_port


class Background:
    """A uvicorn server in a thread, ready once `ready_path` answers."""

    def __init__(self, config: uvicorn.Config, ready_path: str) -> None:
        self.url = f"http://127.0.0.1:{config.port}"
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self._answers(ready_path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}{ready_path} did not come up")
            time.sleep(0.05)

    def _answers(self, path: str) -> bool:
        try:
            return httpx.get(self.url + path, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


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
    fake_config = uvicorn.Config(create_fake_vllm(FakeState()), port=free_port(), log_level="warning")
    fake = Background(fake_config, "/health")
    base = MODELS_DIR / DEFAULT_MODEL_NAME
    alpha = make_adapter(base, root / "alpha", seed=1)
    rows = {}
    try:
        for parser in ("h11", "httptools"):
            settings = Settings(
                api_key="sk-cost",
                admin_key="sk-cost-admin",
                data_dir=root / parser,
                model=str(base),
                served_model_name=BASE,  # the name the fake engine answers to
                upstreams=[fake.url],
                adapters={"alpha": alpha},
                log_level="warning",
                port=free_port(),
            )
            (config,) = listen.configs(create_app(settings), settings)
            config.http = parser
            gateway = Background(config, "/ready")
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
