"""One real `adaptserve serve` (gateway + vLLM child) for the whole test session,
with three good adapters and three bad ones made at session start."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from adaptserve.models import resolve_model
from tests.integration.makers import make_corrupt_lora, make_lora, make_wrong_base_lora
from tests.servers import free_port

API_KEY = "sk-integration"
ADMIN_KEY = "sk-integration-admin"
ADAPTERS = ("a1", "a2", "a3")
BAD_ADAPTERS = ("corrupt", "rank64", "wrongbase")
MAX_LORAS = 2  # fewer engine slots than adapters in the mix
START_TIMEOUT_S = 900


def _models_dir() -> Path:
    """Share the converted default model with `make serve` (the same cache folder)."""
    data = os.environ.get("ADAPTSERVE_DATA_DIR") or Path.home() / ".local" / "share" / "adaptserve"
    return Path(os.environ.get("ADAPTSERVE_MODELS_DIR") or Path(data) / "models")


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    vllm_log: Path

    def client(self, api_key: str = API_KEY, **kw) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, timeout=300, **kw)

    def admin(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(
            method, self.url + "/admin" + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60, **kw
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def vllm_url(self) -> str:
        return re.search(r"starting vLLM on (http://127\.0\.0\.1:\d+)", self.log()).group(1)

    def vllm_pids(self) -> list[int]:
        if "starting vLLM on" not in self.log():
            return []  # a gateway in front of another's engine (--upstream) has none of its own
        port = self.vllm_url().rsplit(":", 1)[1]
        out = subprocess.run(["pgrep", "-f", f"vllm_main serve .*--port {port}"], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        crashes = self.log().count("vLLM exited")
        while time.monotonic() < deadline:
            if self.log().count("vLLM exited") >= crashes + 2:
                raise RuntimeError(f"vLLM keeps exiting:\n{self.vllm_log.read_text()[-5000:]}")
            if self.process.poll() is not None:
                raise RuntimeError(f"adaptserve exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"not ready after {timeout_s}s:\n{self.log()[-5000:]}\n{self.vllm_log.read_text()[-5000:]}")


@pytest.fixture(scope="session")
def base_model() -> Path:
    return resolve_model("default", _models_dir())


@pytest.fixture(scope="session")
def adapter_dirs(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    dirs = {name: make_lora(base_model, root / name, seed=i) for i, name in enumerate(ADAPTERS, start=1)}
    dirs["a4"] = make_lora(base_model, root / "a4", seed=4)  # not in the settings: uploaded by tests
    dirs["corrupt"] = make_corrupt_lora(dirs["a1"], root / "corrupt")
    dirs["rank64"] = make_lora(base_model, root / "rank64", seed=9, r=64)
    dirs["wrongbase"] = make_wrong_base_lora(root / "wrongbase")
    return dirs


@pytest.fixture(scope="session")
def server(adapter_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("data")
    config = data / "adaptserve.yaml"
    settings = {
        "adapters": {k: str(v) for k, v in adapter_dirs.items() if k != "a4"},
        "templates_dir": str(Path(__file__).parents[2] / "templates"),
        "vllm": {
            "max_loras": MAX_LORAS,
            "max_lora_rank": 16,
            "max_model_len": 2048,
            "kv_cache_gib": 1,
            # usage.prompt_tokens_details.cached_tokens: what the prefix-cache salt hides
            "extra_args": ["--enable-prompt-tokens-details"],
        },
    }
    config.write_text(yaml.safe_dump(settings))
    with running_server(data, ["--config", str(config)]) as srv:
        yield srv


@contextlib.contextmanager
def running_server(data: Path, args: list[str]) -> Iterator[Server]:
    """`adaptserve serve ARGS` on a free port with `data` as its data folder, ready;
    stopped (and checked to leave no engine behind) on exit."""
    port = free_port()
    env = {
        **os.environ,
        "ADAPTSERVE_DATA_DIR": str(data),
        "ADAPTSERVE_MODELS_DIR": str(_models_dir()),
        "ADAPTSERVE_API_KEY": API_KEY,
        "ADAPTSERVE_ADMIN_KEY": ADMIN_KEY,
    }
    log_path = data / "gateway.log"
    data.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "adaptserve", "serve", *args, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    srv = Server(f"http://127.0.0.1:{port}", process, log_path, data / "logs" / "vllm.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        children = srv.vllm_pids() if process.poll() is None else []
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    # Stopping the gateway must stop the engine too: no orphan keeps the port or memory.
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in children if _alive(p)], "vLLM outlived the gateway"


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def chat(client: openai.OpenAI, model: str, content: str, max_tokens: int = 24) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0
    )
    return reply.choices[0].message.content


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def follows_another(answer: str, own: str, others: list[str]) -> bool:
    """A mix-up, not bf16 drift: the answer is another model's solo answer, or follows
    one for 24+ characters and twice as far as it follows its own."""
    if answer == own:
        return False
    n_own = common_prefix(answer, own)
    return any(
        answer == o or (common_prefix(answer, o) >= 24 and common_prefix(answer, o) >= 2 * n_own)
        for o in others
        if o != own
    )


MIX_PROMPTS = (
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "Describe a cat in one sentence.",
    "Give me a tip for learning to cook.",
)


def mixed_batch_mixups(client: openai.OpenAI, models: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    """Send base and adapter requests concurrently (each twice, shuffled) and return the
    answers that follow another model's solo answer: (model, prompt, answer, own)."""
    reference = {(m, p): chat(client, m, p) for m in models for p in MIX_PROMPTS}
    distinct = [p for p in MIX_PROMPTS if len({reference[m, p] for m in models}) == len(models)]
    assert len(distinct) >= 3, f"the models must answer differently for the test to mean anything: {reference}"
    requests = [(m, p) for m in models for p in MIX_PROMPTS] * 2
    random.Random(0).shuffle(requests)
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(lambda mp: chat(client, *mp), requests))
    wrong = []
    for (model, prompt), answer in zip(requests, answers, strict=True):
        others = [reference[m, prompt] for m in models if m != model]
        if follows_another(answer, reference[model, prompt], others):
            wrong.append((model, prompt, answer, reference[model, prompt]))
    return wrong
