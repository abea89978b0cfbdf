"""Everything the test suites share, in one place: the keys the run uses, servers on
loopback (an ASGI app in a thread, `adaptserve serve` in a subprocess), small model and
adapter folders, tenants, and the checks several modules make. Fixtures stay in the
conftest files; test modules import helpers from here and never from each other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import uvicorn
import yaml
from safetensors.numpy import save_file

API_KEY = "sk-test-key"  # every gateway the run starts uses these two
ADMIN_KEY = "sk-test-admin"
START_TIMEOUT_S = 900  # `adaptserve serve` with vLLM and LoRA: about a minute here
ADAPTERS = ("a1", "a2", "a3")  # the integration server's good adapters (settings file)
BAD_ADAPTERS = ("corrupt", "rank64", "wrongbase")  # and the ones it must refuse
MAX_LORAS = 2  # fewer engine slots than adapters in the mix
EMBED_MODEL = "minilm"  # the integration gateway's embedding model (conftest.py's embed_server)
FAKE_ENCODER = "fake-encoder"  # the name the unit tests' fake encoder (conftest.py's `encoder`) answers to


def replicas(n: int) -> list[Any]:
    """`n` ready upstreams (no server behind them) for the picker's tests."""
    from adaptserve.upstream.client import State, Upstream

    upstreams = [Upstream(f"http://engine-{i}:8000", 5.0) for i in range(n)]
    for u in upstreams:
        u.state, u.generation = State.READY, 1
    return upstreams


def adapter_version(name: str) -> Any:
    """An adapter version `name--v1` (no files) for the picker's tests."""
    from adaptserve.adapters.residency import AdapterVersion

    return AdapterVersion(name, "v1", Path("/adapters") / name, 8)


def resident(res: Any, upstream: Any, version: Any) -> None:
    """Mark `version` loaded on `upstream` in `res` (a Residency), as a load would."""
    res._resident.setdefault(upstream.url, {})[version.internal_name] = upstream.generation


def embed_entry(fake: Any, **extra: Any) -> dict[str, Any]:
    """A `models:` entry for an embedding model served by the fake engine `fake`."""
    return {"name": "embedder", "role": "embed", "upstreams": [fake.url], "served_model_name": FAKE_ENCODER} | extra


def random_head(labels: list[str], seed: int = 0, **changes: Any) -> dict[str, Any]:
    """A head document as `train --method head` writes it, with random weights over the
    fake encoder's vectors (embedding model `embedder`)."""
    import numpy as np

    from adaptserve.bench.fake_engine import EMBED_DIM

    rng = np.random.default_rng(seed)
    doc = {
        "labels": labels,
        "embedding_model": "embedder",
        "dim": EMBED_DIM,
        "coef": rng.normal(size=(len(labels), EMBED_DIM)).tolist(),
        "intercept": rng.normal(size=len(labels)).tolist(),
    }
    return doc | changes


# -- servers ---------------------------------------------------------------------------
# Ports come from a block of this process's own, below the kernel's ephemeral range (32768
# and up: what bind(0) and outgoing connections draw from), one block per xdist worker (gw0:
# 20000-20999, gw1, ...; at most 11 workers) and one for a serial run (31000-31999: the
# integration tests, or a unit run beside them in another terminal, take none of its ports).
# Two processes never probe the same port, so neither can take a port the other has just
# probed, nor one that a test freed and binds again (a restarted engine keeps its port); each
# block is walked from a random start, so that a run in another checkout seldom walks the
# same ports at once.
PORT_BLOCK_BASE, PORT_BLOCK_SIZE, SERIAL_BLOCK = 20000, 1000, 11


def _port_block() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    first = PORT_BLOCK_BASE + PORT_BLOCK_SIZE * (int(worker.removeprefix("gw")) if worker else SERIAL_BLOCK)
    offset = random.randrange(PORT_BLOCK_SIZE)
    while True:
        offset = (offset + 1) % PORT_BLOCK_SIZE
        yield first + offset


_PORTS = _port_block()


def free_port() -> int:
    """A loopback port nothing listens on (probed by binding it), from this process's block."""
    for _ in range(PORT_BLOCK_SIZE):
        port = next(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in this process's block of {PORT_BLOCK_SIZE}")


class _PromptServer(uvicorn.Server):
    """uvicorn's server, woken when told to stop, and stopping without a fixed pause: its
    own main loop looks at `should_exit` every 0.1 s, and its shutdown sleeps 0.1 s more,
    which every test that starts a server paid on its way out, twice."""

    async def main_loop(self) -> None:
        self.wake = asyncio.Event()  # before `loop`: `exit_now` reads `loop`, then uses `wake`
        self.loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's `Server.shutdown` (0.55.0, copied; less its two log lines), without its
        fixed 0.1 s pause after asking the connections to close: here they get up to that
        long and are left as soon as they have closed (an idle keep-alive one closes at
        once). Another uvicorn runs its own, pause and all, until this copy is checked again."""
        if uvicorn.__version__ != "0.55.0":
            return await super().shutdown(sockets)
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        for _ in range(20):
            if not self.server_state.connections:
                break
            await asyncio.sleep(0.005)
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                await self._wait_tasks_to_complete()
        except TimeoutError:
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    def exit_now(self) -> None:
        self.should_exit = True
        if (loop := getattr(self, "loop", None)) is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed already
                loop.call_soon_threadsafe(self.wake.set)


class ServerThread:
    """An ASGI app served by uvicorn on loopback in a background thread."""

    def __init__(self, app: object, port: int | None = None, config: uvicorn.Config | None = None) -> None:
        """Serve `app` on loopback (`port` or a free one), or exactly as `config` says."""
        if config is None:
            config = uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), log_level="warning")
        self.port = config.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = _PromptServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, ready_path: str = "/health", timeout_s: float = 60.0) -> ServerThread:
        # 60 s: a gateway migrates its database while it starts, which a loaded CI machine
        # (two test workers, PostgreSQL beside them) can stretch to seconds; one that does
        # not start fails the same, only later.
        self.thread.start()
        # Its own server, not whatever else answers on the port: uvicorn sets `started` once
        # it holds the socket, and its thread ends when it cannot bind.
        started = lambda: self.server.started or not self.thread.is_alive()  # noqa: E731
        wait_for(started, timeout_s, f"{self.url} did not start", every_s=0.005)
        if not self.server.started:
            raise RuntimeError(f"{self.url}: the server did not start (is the port taken?)")
        wait_for(lambda: _answers(self.url + ready_path), timeout_s, f"{self.url}{ready_path} did not come up")
        return self

    def stop(self) -> None:
        stop_all([self])


def stop_all(servers: list[ServerThread]) -> None:
    """Stop servers together: each winds down its connections and lifespan at once, not in turn."""
    for server in servers:
        server.server.exit_now()
    for server in servers:
        server.thread.join(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


class RunningGateway:
    """A gateway in this process (unit tests) in front of the fake engine."""

    def __init__(self, url: str, settings: Any = None, admin_url: str | None = None) -> None:
        self.url = url
        self.settings = settings
        self.admin_url = admin_url or url
        self.server: ServerThread | None = None  # set when it runs in this process

    def client(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=10)

    def post(self, path: str, body: Any = None, key: str | None = API_KEY, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=10, **kw)

    def admin(self, method: str, path: str, key: str = ADMIN_KEY, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.admin_url + "/admin" + path, headers={"Authorization": f"Bearer {key}"}, timeout=10, **kw
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until /ready says 200 (a loaded machine's first probes and adapter loads can take seconds)."""
        wait_for(lambda: _answers_200(self.url + "/ready"), timeout_s, "gateway not ready", every_s=0.01)


def _answers_200(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.ConnectError:  # a gateway process still starting
        return False


@dataclass
class Server:
    """`adaptserve serve` in a subprocess (integration tests), gateway and vLLM child."""

    url: str
    process: subprocess.Popen
    log_path: Path
    vllm_log: Path

    def client(self, api_key: str = API_KEY, **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, timeout=300, **kw)

    def admin(self, method: str, path: str, key: str = ADMIN_KEY, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.url + "/admin" + path, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kw
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def troubles(self) -> str:
        """The gateway log's warnings and errors, newest last: what a failed check shows."""
        lines = [line for line in self.log().splitlines() if " WARNING " in line or " ERROR " in line]
        return "\n".join(lines[-20:])

    def vllm_url(self) -> str:
        found = re.search(r"starting vLLM on (http://127\.0\.0\.1:\d+)", self.log())
        assert found is not None, "this gateway started no engine"
        return found.group(1)

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
            if _answers_200(self.url + "/ready"):
                return
            time.sleep(1)
        raise TimeoutError(f"not ready after {timeout_s}s:\n{self.log()[-5000:]}\n{self.vllm_log.read_text()[-5000:]}")


def models_dir() -> Path:
    """Share the converted default model with `make serve` (the same cache folder)."""
    data = os.environ.get("ADAPTSERVE_DATA_DIR") or Path.home() / ".local" / "share" / "adaptserve"
    return Path(os.environ.get("ADAPTSERVE_MODELS_DIR") or Path(data) / "models")


@contextlib.contextmanager
def running_server(data: Path, args: list[str]) -> Iterator[Server]:
    """`adaptserve serve ARGS` on a free port with `data` as its data folder, ready;
    stopped (and checked to leave no engine behind) on exit."""
    port = free_port()
    env = {
        **os.environ,
        "ADAPTSERVE_DATA_DIR": str(data),
        "ADAPTSERVE_MODELS_DIR": str(models_dir()),
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
    wait_for(lambda: not any(_alive(p) for p in children), 30, "vLLM outlived the gateway")


def pooling_engine(server: Any, model: str = "minilm", role: str = "embed") -> tuple[re.Match[str], Any]:
    """The log line that started `model`'s pooling engine (time, URL, port), and its process."""
    import psutil

    started = rf"^(.{{23}}) INFO .*starting vLLM for model {model} \({role}\) on (http://127\.0\.0\.1:(\d+))"
    found = re.search(started, server.log(), re.M)
    assert found is not None, server.troubles()
    port = found.group(3)
    (process,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "--runner" in (args := p.info["cmdline"] or [])
        and "--port" in args
        and args[args.index("--port") + 1] == port
    ]
    return found, process


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(
    check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition not met", every_s: float = 0.05
) -> None:
    """Until `check()` holds, else TimeoutError(what). The default timeout leaves a loaded
    CI machine room; a test whose point is how soon something happens asserts that itself."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every_s)


# -- tenants and calls -----------------------------------------------------------------
def new_tenant(gateway: Any, name: str, alias_body: dict | None = None, alias: str = "support") -> openai.OpenAI:
    """A tenant with one key (and an alias, when `alias_body` says what it points at);
    returns a client with that key. `gateway`: a RunningGateway or a Server."""
    assert gateway.admin("POST", "/tenants", json={"name": name}).status_code == 201
    if alias_body is not None:
        assert gateway.admin("PUT", f"/tenants/{name}/models/{alias}", json=alias_body).status_code == 200
    return gateway.client(api_key=gateway.admin("POST", f"/tenants/{name}/keys").json()["key"])


def tar_gz(folder: Path, top: str | None = "adapter") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=top or ".")
    return buf.getvalue()


def usage(server: Any, key: str) -> list[dict]:
    """The tenant's own usage rows (`GET /v1/usage`)."""
    return httpx.get(server.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()["data"]


def wait_for_usage(server: Any, key: str, requests: int = 1, timeout_s: float = 30) -> list[dict]:
    """Usage is written about once a second: wait until `requests` are recorded."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = usage(server, key)
        if sum(row["requests"] for row in rows) >= requests:
            return rows
        assert time.monotonic() < deadline, f"fewer than {requests} requests recorded: {rows}"
        time.sleep(0.5)


def upload(gateway: Any, name: str, folder: Path, key: str | None = None) -> httpx.Response:
    """Upload an adapter folder as a tarball (the admin API's multipart form), with the
    operator's key or `key` (a tenant admin's)."""
    files = {"file": ("a.tar.gz", tar_gz(folder, top=name))}
    return gateway.admin("POST", "/adapters", data={"name": name}, files=files, **({"key": key} if key else {}))


def run_template(gateway: Any, name: str, body: dict, key: str = API_KEY) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/templates/{name}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300
    )


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and isinstance(error["type"], str)
    assert error["code"] == code and error["param"] == param
    return error


SENTIMENT = {
    "name": "sent",
    "kind": "classify",
    "instruction": "Is this review positive or negative?",
    "inputs": {"text": {"type": "string", "max_length": 200}},
    "labels": [{"name": "negative"}, {"name": "positive"}],
    "calibration": False,
}
CONTACT = {
    "name": "contact",
    "kind": "generate",
    "instruction": "Extract the contact.",
    "inputs": {"message": {}},
    "schema": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
}


# -- the gateway's metrics ----------------------------------------------------------------
def gateway_metric(gateway: Any, name: str, **labels: str) -> float:
    """The sum of the gateway's `name` samples whose labels include `labels` (0: none)."""
    text = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    found = [line for line in text.splitlines() if line.startswith((name + "{", name + " "))]
    return sum(float(line.rsplit(" ", 1)[1]) for line in found if all(f'{k}="{v}"' in line for k, v in labels.items()))


# -- tenant admins ----------------------------------------------------------------------
def tenant_admin_key(gw: Any, tenant: str) -> str:
    """A new admin-role key of `tenant`, made with the operator's key."""
    response = gw.admin("POST", f"/tenants/{tenant}/keys", json={"role": "admin"})
    assert response.status_code == 201 and response.json()["role"] == "admin"
    return response.json()["key"]


def png(width: int = 4, height: int = 3, rgb: tuple[int, int, int] = (31, 95, 191)) -> bytes:
    """A small, real PNG of one colour (what a browser decodes), built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def fit_report(plot: bytes | None = None, **changes: Any) -> dict[str, Any]:
    """A fit report as `adaptserve fit` pushes it (`PUT /admin/fit-reports/NAME`)."""
    rows = [
        {"candidate": "lora", "kind": "llm", "n": 64, "accuracy": 0.81, "accuracy_low": 0.7, "accuracy_high": 0.89},
        {
            "candidate": "minilm",
            "kind": "baseline",
            "n": 64,
            "accuracy": 0.75,
            "accuracy_low": 0.63,
            "accuracy_high": 0.84,
        },
    ]
    decision = {
        "verdict": "lora and minilm tie; minilm is cheaper",
        "choice": "baseline",
        "llm": "lora",
        "baseline": "minilm",
    }
    report = {
        "source": "reviews.jsonl",
        "examples": 64,
        "decision": decision,
        "candidates": rows,
        "served": "Served: template reviews.",
    }
    if plot is not None:
        report["plot_png"] = base64.b64encode(plot).decode()
    return report | changes


def call_as(gw: Any, key: str, method: str, path: str, **kw: Any) -> httpx.Response:
    """Any route of the gateway with `key`."""
    return httpx.request(method, gw.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10, **kw)


def make_two_tenants(gateway: Any, adapters: dict[str, Path]) -> dict[str, str]:
    """acme and globex, each with a tenant admin key, an API key, an alias, an adapter
    of its own and a template; beside the global adapters alpha and beta (the settings
    file's)."""
    keys = {}
    for name, folder in (("acme", "alpha"), ("globex", "beta")):
        gateway.admin("POST", "/tenants", json={"name": name})
        keys[name] = tenant_admin_key(gateway, name)
        assert upload(gateway, f"{name}-ad", adapters[folder], key=keys[name]).status_code == 201
        alias = call_as(gateway, keys[name], "PUT", f"/admin/tenants/{name}/models/m", json={"adapter": f"{name}-ad"})
        assert alias.status_code == 200
        doc = json.dumps(SENTIMENT | {"model": "m"})
        assert call_as(gateway, keys[name], "PUT", "/admin/templates/sent", content=doc).status_code == 201
        keys[name + "-api"] = call_as(gateway, keys[name], "POST", f"/admin/tenants/{name}/keys").json()["key"]
    return keys


# -- answers from the real engine ------------------------------------------------------
def chat(client: openai.OpenAI, model: str, content: str, max_tokens: int = 24) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0
    )
    return reply.choices[0].message.content or ""


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


# -- secrets ---------------------------------------------------------------------------
GENERATED_KEY = re.compile(rb"sk-as-[A-Za-z0-9_-]{40,}")


def leaked_keys(logs: list[Path], keys: list[str]) -> list[str]:
    """Where a key (one of `keys`, or any key the server generated) appears in `logs`."""
    found = []
    for path in logs:
        content = path.read_bytes()
        found += [f"{key[:8]}... in {path}" for key in keys if key.encode() in content]
        generated = GENERATED_KEY.search(content)
        if generated is not None:
            found.append(f"a generated key {generated.group()[:12].decode()}... in {path}")
    return found


# -- model and adapter folders ---------------------------------------------------------
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 32, 4, 2, 8, 2
MODULE_SHAPES = {  # module -> (out, in), as in a Llama
    "self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN),
    "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
}


def make_base(path: Path) -> Path:
    """A tiny Llama's config and zero weights (numpy + safetensors, no torch)."""
    path.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_hidden_layers": LAYERS,
        "vocab_size": 100,
    }
    (path / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": np.zeros((100, HIDDEN), np.float32)}
    for layer in range(LAYERS):
        for module, shape in MODULE_SHAPES.items():
            tensors[f"model.layers.{layer}.{module}.weight"] = np.zeros(shape, np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def make_adapter(
    path: Path,
    r: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    hidden: int = HIDDEN,
    seed: int = 0,
    **config_overrides: object,
) -> Path:
    """A LoRA folder for `make_base`'s model as peft writes it, with random weights."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in range(LAYERS):
        for module, (fan_out, fan_in) in MODULE_SHAPES.items():
            if module.rsplit(".", 1)[-1] not in targets:
                continue
            fan_in = hidden if fan_in == HIDDEN else fan_in
            stem = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{stem}.lora_A.weight"] = rng.standard_normal((r, fan_in)).astype(np.float32)
            tensors[f"{stem}.lora_B.weight"] = rng.standard_normal((fan_out, r)).astype(np.float32)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(targets), "bias": "none"}
    config.update(config_overrides)
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


# Real LoRA adapters for the real model, made with peft (imported here only: the unit
# suite never pays for torch). Weights are random (init_lora_weights=False) and scaled
# up (lora_alpha = 2r) so each adapter's greedy output differs from the base and the
# others on open-ended prompts while staying coherent text; at 4r the text degenerates
# and tiny bf16 differences between batch shapes flip greedy choices, which would hide
# real mix-ups in noise.
def make_lora(
    base_path: Path, out: Path, seed: int, r: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def make_wrong_base_lora(out: Path) -> Path:
    """An adapter for another (tiny) Llama: vLLM would load it and serve altered text."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    other = LlamaForCausalLM(LlamaConfig(**shape, num_key_value_heads=2, vocab_size=49152))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(other, config).save_pretrained(out)
    return out


def make_corrupt_lora(good: Path, out: Path) -> Path:
    shutil.copytree(good, out)
    (out / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return out


# -- the deployment (deploy/) ------------------------------------------------------------
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "rules.yaml"
DASHBOARD_FILE = DEPLOY / "grafana" / "adaptserve.json"


def deploy_rules() -> list[dict[str, Any]]:
    """Every recording and alert rule of the Prometheus rules file."""
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> Iterator[str]:
    """Every PromQL expression of the Grafana dashboard's panels (nested rows too)."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", []))
            yield from walk(panel.get("panels", []))

    yield from walk(json.loads(DASHBOARD_FILE.read_text())["panels"])


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
PROMQL_WORDS |= {"offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left after strings, label
    matchers, ranges, grouping lists, functions and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    words = re.findall(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {w for w in words if w.lower() not in PROMQL_WORDS}


# -- a tiny real Llama (the pruning tests) ------------------------------------------------
TINY_WORDS = (  # noqa: SIM905 (a line of words reads better than a column of them)
    "the a movie film story actor actress plot good bad great dull funny sad long short scene music "
    "ending hero villain city night love war house friend family dark bright slow fast old new"
).split()


def tiny_texts(count: int, seed: int = 0) -> list[str]:
    """Sentences of `TINY_WORDS`, 4 to 24 words each, the same for a seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(4, 24))) for _ in range(count)]


def make_tiny_llama(path: Path, layers: int = 6, seed: int = 0, noop_layer: int | None = None) -> Path:
    """A random float32 `LlamaForCausalLM` (hidden 32, tied embeddings) with a byte-level BPE
    tokenizer trained here on `tiny_texts` (no download), saved as a model folder.
    `noop_layer`'s o_proj and down_proj are zero: that layer returns its input."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator(tiny_texts(200, seed=99), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=layers,
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        initializer_range=0.05,  # not near-uniform logits: each layer matters, distillation has work to do
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if noop_layer is not None:
        with torch.no_grad():
            model.model.layers[noop_layer].self_attn.o_proj.weight.zero_()
            model.model.layers[noop_layer].mlp.down_proj.weight.zero_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(path)
    return path


# -- the deployment's rendered manifests (test_deploy*.py) -------------------------------
# An overlay is applied as one or more kustomizations (production: the application,
# foundation/, secrets/); rendering one renders them all, with kubectl's Kustomize.
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
CPU_OVERLAY = "cpu"  # a laptop cluster: no GPU, no KEDA, Prometheus Operator or Grafana objects
GPU_OVERLAYS = [o for o in OVERLAYS if o != CPU_OVERLAY]
GATEWAY_DEPLOYMENT, ENGINE_DEPLOYMENT = "adaptserve", "vllm"
K8sObj = dict[str, Any]


def deploy_parts(overlay: str) -> list[Path]:
    """The kustomizations an overlay is applied as: its own folder and every folder under
    it with a kustomization (production: the application, foundation/, secrets/)."""
    root = DEPLOY / "overlays" / overlay
    return sorted(k.parent for k in root.rglob("kustomization.yaml"))


def kustomize(path: Path) -> tuple[K8sObj, ...]:
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def with_examples(part: Path, work: Path) -> Path:
    """`part` itself, or where it reads a git-ignored file it ships only as `X.example`
    (the Secrets' env file), a copy of it with each example in place of its file. Such
    a part must be self-contained: nothing it names lies outside its folder."""
    examples = [e for e in part.glob("*.example") if not e.with_suffix("").exists()]
    if not examples:
        return part
    assert "../" not in (part / "kustomization.yaml").read_text(), f"{part} must be self-contained"
    copy = work / part.relative_to(DEPLOY).as_posix().replace("/", "-")
    shutil.copytree(part, copy)
    for example in examples:
        shutil.copy(example, copy / example.with_suffix("").name)
    return copy


@cache
def _render(overlay: str) -> tuple[K8sObj, ...]:
    with tempfile.TemporaryDirectory() as work:
        return tuple(o for part in deploy_parts(overlay) for o in kustomize(with_examples(part, Path(work))))


def render_overlay(overlay: str) -> tuple[K8sObj, ...]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in Kustomize) is not installed")
    return _render(overlay)


def all_of(objects: tuple[K8sObj, ...], kind: str) -> list[K8sObj]:
    return [o for o in objects if o["kind"] == kind]


def one_of(objects: tuple[K8sObj, ...], kind: str, name: str) -> K8sObj:
    found = [o for o in all_of(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the render"
    return found[0]


def pod_labels(deployment: K8sObj) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def container_of(deployment: K8sObj) -> K8sObj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container expected"
    return containers[0]


def env_of(deployment: K8sObj) -> dict[str, K8sObj]:
    return {e["name"]: e for e in container_of(deployment).get("env", [])}


def selector_matches(selector: K8sObj, labels: dict[str, str]) -> bool:
    """Kubernetes' label selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        held = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values}
        held |= {"Exists": key in labels, "DoesNotExist": key not in labels}
        if not held[op]:
            return False
    return True


def selected_deployments(objects: tuple[K8sObj, ...], selector: K8sObj) -> set[str]:
    return {d["metadata"]["name"] for d in all_of(objects, "Deployment") if selector_matches(selector, pod_labels(d))}


def port_number(deployment: K8sObj, port: int | str) -> int:
    """A probe's or Service's target port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container_of(deployment).get("ports", [])}
    assert port in named, f"{deployment['metadata']['name']} has no container port named {port}"
    return named[port]


def on_cpu(objects: tuple[K8sObj, ...]) -> bool:
    """The engines run without a GPU (the CPU overlay)."""
    return "nvidia.com/gpu" not in container_of(one_of(objects, "Deployment", ENGINE_DEPLOYMENT))["resources"]["limits"]


def flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def secret_value(objects: tuple[K8sObj, ...], name: str, key: str) -> str:
    secret = one_of(objects, "Secret", name)
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    assert key in secret.get("data", {}), f"Secret {name} has no key {key}"
    return base64.b64decode(secret["data"][key]).decode()


def config_value(objects: tuple[K8sObj, ...], name: str, key: str) -> str:
    config = one_of(objects, "ConfigMap", name)
    assert key in config.get("data", {}), f"ConfigMap {name} has no key {key}"
    return str(config["data"][key])


def _has_key(objects: tuple[K8sObj, ...], ref: K8sObj) -> bool:
    secrets = [s for s in all_of(objects, "Secret") if s["metadata"]["name"] == ref["name"]]
    return any(ref["key"] in s.get("data", {}) | s.get("stringData", {}) for s in secrets)


def resolved_env(objects: tuple[K8sObj, ...], container: K8sObj) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps first,
    then env, each value, Secret key and ConfigMap key looked up in the render."""
    env = {}
    for source in container.get("envFrom", []):
        env |= one_of(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {})
        if "secretKeyRef" in ref and ref["secretKeyRef"].get("optional") and not _has_key(objects, ref["secretKeyRef"]):
            continue
        if "secretKeyRef" in ref:
            env[entry["name"]] = secret_value(objects, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        elif "configMapKeyRef" in ref:
            env[entry["name"]] = config_value(objects, ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
        else:
            env[entry["name"]] = entry["value"]
    return env


def expanded_args(objects: tuple[K8sObj, ...], deployment: K8sObj) -> list[str]:
    """The container's args with $(NAME) replaced as the kubelet does; a reference to no
    variable would reach the program verbatim, so none may be left."""
    container = container_of(deployment)
    env = resolved_env(objects, container)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in container["args"]]
    assert not [a for a in args if re.search(r"\$\(\w+\)", a)], f"unresolved in {args}"
    return args


def pod_specs(objects: tuple[K8sObj, ...]) -> list[K8sObj]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]


def images_of(objects: tuple[K8sObj, ...]) -> list[str]:
    return [c["image"] for spec in pod_specs(objects) for c in spec["containers"] + spec.get("initContainers", [])]


def image_registry(image: str) -> str | None:
    """The registry host an image reference names, or None where it names none (a bare
    `name:tag` or `org/name:tag` goes to whatever default registry the runtime has)."""
    first, _, rest = image.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else None


# -- a browser: headless Chromium driven over the W3C WebDriver protocol ---------------
# (plain HTTP and JSON to Debian's chromedriver: no Selenium, no Playwright, no Node)
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the protocol's key for an element reference
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"]


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) from Debian's packages (scripts/chromium.sh installs
    them), or None where either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.access(p, os.X_OK)), None
    )
    return (browser, driver) if browser and driver else None


class ChromeDriver:
    """A chromedriver process on loopback; `session()` opens a fresh browser."""

    def __init__(self, browser: str, driver: str) -> None:
        self.browser = browser
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [driver, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: _answers(self.url + "/status"), 20, "chromedriver did not start")

    def session(self, args: list[str] | None = None) -> Browser:
        return Browser(self.url, self.browser, args or CHROMIUM_ARGS)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class WebDriverError(AssertionError):
    pass


class Browser:
    """One headless Chromium session: navigate, find by CSS, click, type, read text,
    run a script, take a screenshot. Element lookups wait up to `implicit_s`."""

    def __init__(self, driver_url: str, browser: str, args: list[str], implicit_s: float = 30) -> None:
        self.http = httpx.Client(base_url=driver_url, timeout=60)
        options = {"binary": browser, "args": args}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
        self.id = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]
        self._call("POST", self._path("/timeouts"), {"implicit": int(implicit_s * 1000), "script": 30_000})

    def _path(self, tail: str) -> str:
        return f"/session/{self.id}{tail}"

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        if body is None and method == "POST":
            body = {}  # the protocol wants a JSON body on every POST
        response = self.http.request(method, path, json=body)
        value = response.json().get("value")
        if response.status_code >= 400:
            raise WebDriverError(f"{method} {path}: {value.get('error')}: {value.get('message', '')[:500]}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", self._path("/url"), {"url": url})

    def find(self, css: str) -> str:
        return self._call("POST", self._path("/element"), {"using": "css selector", "value": css})[ELEMENT]

    def find_all(self, css: str) -> list[str]:
        found = self._call("POST", self._path("/elements"), {"using": "css selector", "value": css})
        return [e[ELEMENT] for e in found]

    def click(self, css: str) -> None:
        self._call("POST", self._path(f"/element/{self.find(css)}/click"))

    def type(self, css: str, text: str, clear: bool = True) -> None:
        element = self.find(css)
        if clear:
            self._call("POST", self._path(f"/element/{element}/clear"))
        self._call("POST", self._path(f"/element/{element}/value"), {"text": text})

    def text(self, css: str) -> str:
        return self._call("GET", self._path(f"/element/{self.find(css)}/text"))

    def attribute(self, element: str, name: str) -> str | None:
        return self._call("GET", self._path(f"/element/{element}/attribute/{name}"))

    def js(self, script: str, *args: Any) -> Any:
        return self._call("POST", self._path("/execute/sync"), {"script": script, "args": list(args)})

    def wait_text(self, css: str, contains: str, timeout_s: float = 30) -> str:
        """The text of `css` once it contains `contains`."""
        wait_for(lambda: contains in self.js(_TEXT_OF, css), timeout_s, f"{css} never showed {contains!r}")
        return self.text(css)

    def color_scheme(self, scheme: str) -> None:
        """Emulate the system's `light` or `dark` preference (prefers-color-scheme)."""
        features = [{"name": "prefers-color-scheme", "value": scheme}]
        self._call(
            "POST",
            self._path("/goog/cdp/execute"),
            {"cmd": "Emulation.setEmulatedMedia", "params": {"features": features}},
        )

    def window(self, width: int, height: int) -> None:
        self._call("POST", self._path("/window/rect"), {"width": width, "height": height})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", self._path("/screenshot"))))

    def console_errors(self) -> list[str]:
        """The page's console messages at SEVERE level (script errors, CSP violations)."""
        entries = self._call("POST", self._path("/se/log"), {"type": "browser"})
        return [e["message"] for e in entries if e.get("level") == "SEVERE"]

    def loaded_urls(self) -> list[str]:
        """Every URL the page loaded or called (the Resource Timing entries)."""
        return self.js("return [location.href, ...performance.getEntries().map(e => e.name)];")

    def quit(self) -> None:
        with contextlib.suppress(httpx.HTTPError, WebDriverError):
            self._call("DELETE", self._path(""))
        self.http.close()


_TEXT_OF = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"


def console_sign_in(browser: Browser, url: str, key: str, admin: bool = False) -> None:
    """Open the console at `url` (a gateway's) and sign in with `key`, by real clicks."""
    browser.get(url + "/console/")
    browser.type("#key", key)
    if admin:
        browser.click("input[name=kind][value=admin]")
    browser.click("#signin-button")
    browser.find("#signout")  # the pages of the key's kind are shown
