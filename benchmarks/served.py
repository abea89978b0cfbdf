"""`adaptserve serve` started by a benchmark on a free data folder, ready, and stopped:
one definition for every report that measures a server it starts itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[1]
KEY = "sk-benchmark"
ADMIN_KEY = "sk-benchmark-admin"
MODELS_DIR = Path(os.environ.get("ADAPTSERVE_MODELS_DIR", Path.home() / ".local/share/adaptserve/models"))


class Served:
    def __init__(self, model: Path | str, data: Path, port: int, env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ,
            "ADAPTSERVE_DATA_DIR": str(data),
            "ADAPTSERVE_MODELS_DIR": str(MODELS_DIR),
            "ADAPTSERVE_API_KEY": KEY,
            "ADAPTSERVE_ADMIN_KEY": ADMIN_KEY,
            **(env or {}),
        }
        self.url = f"http://127.0.0.1:{port}"
        self.log = data / "gateway.log"
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "adaptserve", "serve", "--model", str(model), "--port", str(port)]
        cmd += ["--templates", str(ROOT / "templates")]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            time.sleep(0.5)
        self.startup_s = time.perf_counter() - started
        self.vllm = re.search(r"starting vLLM on (http://127\.0\.0\.1:\d+)", self.log.read_text()).group(1)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def engine_rss_mb(self) -> float:
        """Resident memory of the engine's processes (the front end, the core, the worker)."""
        port = self.vllm.rsplit(":", 1)[1]
        pids = subprocess.run(["pgrep", "-f", f"vllm_main serve .*--port {port}"], capture_output=True, text=True)
        total = 0
        for pid in pids.stdout.split():
            tree = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
            for p in [pid, *tree]:
                status = Path(f"/proc/{p}/status")
                if status.is_file():
                    total += int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1))
        return total / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)
