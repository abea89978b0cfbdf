"""Servers a benchmark starts itself and stops: `adaptserve serve` on a free data folder
(ready when `/ready` says so), and any other command with a health URL (the peft
baseline); what `make serve` adds beside the LLM (`MAKE_SERVE_MODELS`); a server's
Prometheus samples summed (`metric_sums`). One definition for every benchmark and report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adaptserve.engine_settings import MINILM

KEY = "sk-benchmark"
ADMIN_KEY = "sk-benchmark-admin"
# ADAPTSERVE_MODELS as the Makefile's `serve` sets it: MiniLM for /v1/embeddings as `minilm`
MAKE_SERVE_MODELS = json.dumps([{"name": "minilm", "role": "embed", "path": MINILM}])


def metric_sums(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each of the named samples of the server's `/metrics` (a counter's `_total`, a
    histogram's `_sum`), summed over its label sets, read with Prometheus' own parser."""
    out = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name in out:
                out[sample.name] += sample.value
    return out


class Process:
    """A command whose `health` URL answers 200 once it is ready; its output goes to `log`."""

    def __init__(self, cmd: list[str], health: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.health, self.log = health, log
        started = time.perf_counter()
        full_env = {**os.environ, **(env or {})}
        with open(log, "wb") as out:
            self.process = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(log.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        self.startup_s = time.perf_counter() - started

    def _ready(self) -> bool:
        try:
            return httpx.get(self.health, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)


class Served(Process):
    """`adaptserve serve --model MODEL` with the benchmark keys; `.vllm` is its engine's URL."""

    def __init__(
        self,
        model: Path | str,
        data: Path,
        port: int,
        models_dir: Path,
        env: dict[str, str] | None = None,
        templates: Path | None = None,
        args: list[str] | None = None,
    ) -> None:
        env = {
            "ADAPTSERVE_DATA_DIR": str(data),
            "ADAPTSERVE_MODELS_DIR": str(models_dir),  # the converted default model is shared
            "ADAPTSERVE_API_KEY": KEY,
            "ADAPTSERVE_ADMIN_KEY": ADMIN_KEY,
            **(env or {}),
        }
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "adaptserve", "serve", "--model", str(model), "--port", str(port)]
        cmd += ["--templates", str(templates)] if templates else []
        super().__init__([*cmd, *(args or [])], self.url + "/ready", data / "gateway.log", env)
        found = re.search(r"starting vLLM on (http://127\.0\.0\.1:\d+)", self.log.read_text())
        self.vllm = found.group(1) if found else None  # None when fronting --upstream servers

    def engine_rss_mb(self) -> float:
        """Resident memory of the engine's processes (the front end, the core, the worker)."""
        port = (self.vllm or "").rsplit(":", 1)[-1]
        pids = subprocess.run(["pgrep", "-f", f"vllm_main serve .*--port {port}"], capture_output=True, text=True)
        total = 0
        for pid in pids.stdout.split():
            tree = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
            for p in [pid, *tree]:
                status = Path(f"/proc/{p}/status")
                found = re.search(r"VmRSS:\s+(\d+)", status.read_text()) if status.is_file() else None
                total += int(found.group(1)) if found else 0
        return total / 1024


def plain_engine(model: Path, port: int, log: Path, name: str, extra: tuple[str, ...] = (), kv_gib: int = 1) -> Process:
    """`vllm serve MODEL` without LoRA, eager as the LoRA engine is on CPU (no
    torch.compile), with the supervisor's KV cache size: what serves a merged adapter."""
    cmd = [sys.executable, "-m", "adaptserve.upstream.vllm_main", "serve", str(model), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--served-model-name", name, "--dtype", "bfloat16", "--max-model-len", "2048"]
    cmd += ["--enforce-eager", *extra]  # eager, as the LoRA engine runs on CPU: no torch.compile
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_gib), "TORCHDYNAMO_DISABLE": "1"}
    return Process(cmd, f"http://127.0.0.1:{port}/health", log, env)
