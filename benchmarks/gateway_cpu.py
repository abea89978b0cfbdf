"""The gateway's own CPU per request: the fake vLLM (`adaptserve.bench.fake_engine`) and the
gateway (`adaptserve serve`'s app and listener, SQLite) each in its own process, the client
in this one; the gateway process's user + system time over N non-streamed chat requests on
an adapter alias (`--endpoint embeddings`: N `/v1/embeddings` calls of 16 sentences, base64
vectors, on an embedding model of `models:`; the fake's vectors have 8 dimensions), divided
by N, beside each request's latency through the gateway and straight to the fake engine.
Unlike `gateway_cost.py` (everything in one process), no client or engine time is counted
in the gateway's.

    .venv/bin/python benchmarks/gateway_cpu.py --requests 1500 --runs 3

`--compare OLD_SRC` starts a second gateway on another checkout's `src` (by `PYTHONPATH`)
beside this one, behind the same fake vLLM, and alternates the runs between the two;
`--profile FILE` runs this checkout's gateway under cProfile and writes its stats there
when it stops (read them with `python -m pstats FILE`).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from adaptserve.bench.fake_engine import BASE
from adaptserve.upstream.supervisor import free_port

HERE = Path(__file__).parent
BODY = {"messages": [{"role": "user", "content": "hello there"}]}
ENCODER = "fake-encoder"  # the embedding model's name on the fake vLLM
# `--endpoint embeddings`: a batch of 16 short sentences, base64 vectors (what the openai SDK asks for)
EMBED_BODY = {"input": [f"sentence number {i} of a small batch" for i in range(16)], "encoding_format": "base64"}
ENDPOINTS = {  # endpoint -> (path, body, the gateway's model, the engine's model)
    "chat": ("/v1/chat/completions", BODY, "alpha", BASE),
    "embeddings": ("/v1/embeddings", EMBED_BODY, "minilm", ENCODER),
}


def _serve_fake(port: int) -> None:
    import uvicorn

    from adaptserve.bench.fake_engine import FakeState, create_fake_vllm

    uvicorn.run(create_fake_vllm(FakeState(served=[BASE, ENCODER])), port=port, log_level="warning")


def _serve_gateway(port: int, fake: str, profile: str) -> None:
    import cProfile

    import uvicorn
    from served import MODELS_DIR  # benchmarks/ is the script's folder

    from adaptserve.bench.fleet import make_adapter
    from adaptserve.config import Settings
    from adaptserve.default_model import DEFAULT_MODEL_NAME
    from adaptserve.server import listen
    from adaptserve.server.app import create_app

    root = Path(tempfile.mkdtemp(prefix="adaptserve-cpu-"))
    base = MODELS_DIR / DEFAULT_MODEL_NAME
    settings = Settings(
        api_key="sk-cpu",
        admin_key="sk-cpu-admin",
        data_dir=root,
        model=str(base),
        served_model_name=BASE,
        upstreams=[fake],
        adapters={"alpha": make_adapter(base, root / "alpha", seed=1)},
        models=[{"name": "minilm", "role": "embed", "upstreams": [fake], "served_model_name": ENCODER}],
        log_level="warning",
        port=port,
    )
    (config,) = listen.configs(create_app(settings), settings)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        # uvicorn raises the signal that stopped it again once stopped: ignored here, so
        # that the stats are written
        signal.signal(signal.SIGTERM, lambda *_: None)
        profiler.enable()
    uvicorn.Server(config).run()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)


def _up(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _latencies(client: httpx.Client, url: str, body: dict, headers: dict, n: int, path: str) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        client.post(url + path, json=body, headers=headers).raise_for_status()
        out.append(time.perf_counter() - start)
    return out


def _start(kind: str, port: int, fake: str, profile: str = "", src: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH", "")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, str(port), fake, profile]
    return subprocess.Popen(command, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", metavar="OLD_SRC", help="another checkout's src folder, alternated with this one")
    parser.add_argument("--profile", metavar="FILE", default="", help="cProfile this checkout's gateway into FILE")
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="chat", help="what each request calls")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)  # internal: fake|gateway PORT FAKE_URL PROFILE
    args = parser.parse_args()
    if args.serve:
        kind, port, fake, profile = args.serve
        _serve_fake(int(port)) if kind == "fake" else _serve_gateway(int(port), fake, profile)
        return
    fake_port = free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    processes = [_start("fake", fake_port, "")]
    gateways: list[tuple[str, str, subprocess.Popen]] = []
    sides = [("old", args.compare), ("new", None)] if args.compare else [("this", None)]
    for name, src in sides:
        port = free_port()
        process = _start("gateway", port, fake_url, args.profile if src is None else "", src)
        processes.append(process)
        gateways.append((name, f"http://127.0.0.1:{port}", process))
    try:
        _up(fake_url + "/health")
        for _, url, _ in gateways:
            _up(url + "/ready")
        print(f"loadavg at start: {Path('/proc/loadavg').read_text().strip()}")
        print(
            "| run | gateway | fake vLLM direct, median ms | through the gateway, median ms | gateway CPU ms/request |"
        )
        print("|---|---|---|---|---|")
        path, body, model, engine_model = ENDPOINTS[args.endpoint]
        with httpx.Client(timeout=30) as client:
            key = {"Authorization": "Bearer sk-cpu"}
            for _, url, _ in gateways:
                _latencies(client, url, body | {"model": model}, key, 50, path)  # warm-up
            for run in range(1, args.runs + 1):
                for name, url, process in gateways:
                    direct = _latencies(client, fake_url, body | {"model": engine_model}, {}, args.requests, path)
                    before = _cpu_s(process.pid)
                    through = _latencies(client, url, body | {"model": model}, key, args.requests, path)
                    cpu = (_cpu_s(process.pid) - before) / args.requests
                    d, g = statistics.median(direct) * 1e3, statistics.median(through) * 1e3
                    print(f"| {run} | {name} | {d:.2f} | {g:.2f} | {cpu * 1e3:.2f} |", flush=True)
        print(f"loadavg at end: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
