"""A simulated vLLM server for the routing benchmark (`bench/routing.py`): the fake
engine's HTTP contract (`fake_engine.py`: /health, /metrics, /v1/models, runtime LoRA
load and unload, chat and completions, streamed with running usage) over a scheduler
that behaves like vLLM's in what routing changes, timed with real sleeps:

- A batch holds at most `max_num_seqs` sequences and at most `max_loras` distinct
  adapters. A waiting request whose adapter would be one too many is skipped for this
  step and later ones may go ahead (vLLM v1's scheduler does the same): requests of
  adapters scattered over an engine queue behind each other.
- A step costs `step_s`, plus `prefill_token_s` per prompt token of the sequences it
  admits (chunked prefill shares the step), and gives every running sequence one
  token; a new sequence's first token comes at the end of the step that admitted it.
- `/v1/load_lora_adapter` costs `load_s` and stalls the steps while it runs: vLLM's API
  server hands the load to the engine core (`add_lora`, a utility call) and the core's
  busy loop runs it between two steps, reading the weights from disk. Unloads too
  (`remove_lora`), for `unload_s`. Loaded adapters stay loaded until unloaded (vLLM's
  CPU cache of adapters is not modelled).
- `/metrics` reports vllm:num_requests_running and _waiting, vllm:kv_cache_usage_perc and
  vllm:lora_requests_info (the batch's and the queue's adapters).

Timings are `SimTiming`'s, not a measurement of vLLM on any machine; the benchmark
writes them beside its results. Answers are the fake engine's words ("[<model>] echo:
...", repeated to `max_tokens`), one token a word. Every sequence and load is recorded
(`SimEngine.finished`, `.loads`) so a benchmark can say where time went.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from adaptserve.bench.fake_engine import BASE, _error, _prompt_words


@dataclass(frozen=True)
class SimTiming:
    max_loras: int = 2  # distinct adapters in one batch (vLLM's --max-loras)
    max_num_seqs: int = 16  # sequences in one batch
    step_s: float = 0.020  # one decode step of the batch
    prefill_token_s: float = 0.0001  # per prompt token admitted in a step
    load_s: float = 0.3  # one runtime adapter load; the engine makes no step meanwhile
    unload_s: float = 0.005
    kv_tokens: int = 16 * 2048  # the KV cache, for kv_cache_usage_perc


@dataclass
class Sequence:
    """One request in the engine, with its times (perf_counter)."""

    model: str
    tag: str  # the prompt's first word: how a benchmark finds its request again
    prompt_tokens: int
    max_tokens: int
    arrived: float
    out: asyncio.Queue[int] = field(default_factory=asyncio.Queue, repr=False)  # tokens so far, once per step
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    generated: int = 0
    slot_waits: int = 0  # steps it was passed over for want of an adapter slot


@dataclass
class LoadEvent:
    name: str
    asked: float
    started: float = 0.0
    ended: float = 0.0


class SimEngine:
    """The engine core: a waiting queue, a running batch and the utility calls (loads),
    stepped by `run` on the server's event loop."""

    def __init__(self, timing: SimTiming = SimTiming()) -> None:
        self.timing = timing
        self.loaded: dict[str, str] = {}
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.finished: list[Sequence] = []
        self.loads: list[LoadEvent] = []
        self.unloads: list[str] = []
        self.stalled_s = 0.0  # in loads and unloads
        self.up_at: float | None = None  # when it started serving
        self._utilities: deque[tuple[float, LoadEvent | None, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._last_end = 0.0

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self._wake.set()

    def abort(self, seq: Sequence) -> None:
        """The client left: the sequence leaves the queue or the batch."""
        with contextlib.suppress(ValueError):
            self.waiting.remove(seq)
        with contextlib.suppress(ValueError):
            self.running.remove(seq)

    async def utility(self, seconds: float, load: LoadEvent | None = None) -> None:
        """Run between two steps for `seconds`, the steps stalled meanwhile."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._utilities.append((seconds, load, done))
        self._wake.set()
        await done

    async def run(self) -> None:
        while True:
            if not (self.waiting or self.running or self._utilities):
                self._wake.clear()
                await self._wake.wait()
                self._last_end = time.perf_counter()
            await self._run_utilities()
            prefill = self._schedule()
            if self.running:
                await self._step(self.timing.step_s + prefill * self.timing.prefill_token_s)

    async def _run_utilities(self) -> None:
        while self._utilities:
            seconds, load, done = self._utilities.popleft()
            started = time.perf_counter()
            await asyncio.sleep(seconds)
            self._last_end = time.perf_counter()
            self.stalled_s += self._last_end - started
            if load is not None:
                load.started, load.ended = started, self._last_end
            if not done.done():
                done.set_result(None)

    def _schedule(self) -> int:
        """Admit waiting sequences in order, within the batch and its adapter slots;
        the prompt tokens admitted (this step's prefill)."""
        loras = {s.model for s in self.running if s.model != BASE}
        kept: deque[Sequence] = deque()
        prefill, now = 0, time.perf_counter()
        while self.waiting and len(self.running) < self.timing.max_num_seqs:
            seq = self.waiting.popleft()
            if seq.model != BASE and seq.model not in loras and len(loras) >= self.timing.max_loras:
                seq.slot_waits += 1
                kept.append(seq)
                continue
            if seq.model != BASE:
                loras.add(seq.model)
            seq.admitted = now
            self.running.append(seq)
            prefill += seq.prompt_tokens
        kept.extend(self.waiting)
        self.waiting = kept
        return prefill

    async def _step(self, seconds: float) -> None:
        """One step of the batch; a step late (a busy machine) is caught up on the next
        one, so the engine keeps its pace over time."""
        end = max(self._last_end + seconds, time.perf_counter())
        await asyncio.sleep(end - time.perf_counter())
        self._last_end = end
        now = time.perf_counter()
        for seq in list(self.running):
            seq.generated += 1
            seq.first_token = seq.first_token or now
            seq.out.put_nowait(seq.generated)
            if seq.generated >= seq.max_tokens:
                seq.finished = now
                self.running.remove(seq)
                self.finished.append(seq)

    def metrics_text(self) -> str:
        labels = f'{{engine="0",model_name="{BASE}"}}'
        kv = sum(s.prompt_tokens + s.generated for s in self.running) / self.timing.kv_tokens
        lines = [
            f"vllm:num_requests_running{labels} {float(len(self.running))}",
            f"vllm:num_requests_waiting{labels} {float(len(self.waiting))}",
            f"vllm:kv_cache_usage_perc{labels} {min(kv, 1.0)}",
            self._lora_info(),
        ]
        return "\n".join(lines) + "\n"

    def _lora_info(self) -> str:
        """vLLM's `lora_requests_info`: the batch's and the queue's adapters (its value:
        when it was set, as vLLM's is)."""
        running = ",".join(sorted({s.model for s in self.running if s.model != BASE}))
        waiting = ",".join(sorted({s.model for s in self.waiting if s.model != BASE}))
        labels = (
            f'max_lora="{self.timing.max_loras}",running_lora_adapters="{running}",waiting_lora_adapters="{waiting}"'
        )
        return f"vllm:lora_requests_info{{{labels}}} {time.time()}"


def create_sim_vllm(engine: SimEngine) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.run())
        engine.up_at = time.perf_counter()
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in [BASE, *engine.loaded]]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics_text(), media_type="text/plain")

    @app.post("/v1/load_lora_adapter")
    async def load(body: dict[str, Any]) -> Response:
        name, path = body["lora_name"], body["lora_path"]
        if name in engine.loaded:
            return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if not Path(path).is_dir():
            return _error(404, f"Loading lora {name} failed: No adapter found for <path>", "NotFoundError")
        event = LoadEvent(name, time.perf_counter())
        engine.loads.append(event)
        await engine.utility(engine.timing.load_s, event)
        engine.loaded[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: dict[str, Any]) -> Response:
        name = body["lora_name"]
        if engine.loaded.pop(name, None) is None:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        engine.unloads.append(name)
        await engine.utility(engine.timing.unload_s)
        return Response("Success")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _generate(engine, await request.json(), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(engine, await request.json(), "text_completion")

    return app


async def _generate(engine: SimEngine, body: dict[str, Any], kind: str) -> Response:
    model = body["model"]
    if model != BASE and model not in engine.loaded:
        return _error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    prompt = _prompt_words(body)
    seq = Sequence(
        model, prompt[0] if prompt else "", len(prompt), int(body.get("max_tokens") or 16), time.perf_counter()
    )
    engine.submit(seq)
    words = [f"[{model}]", "echo:", *prompt]
    if body.get("stream"):
        return StreamingResponse(_stream(engine, seq, body, words, kind), media_type="text/event-stream")
    try:
        while await seq.out.get() < seq.max_tokens:
            pass
    finally:
        if seq.finished is None:
            engine.abort(seq)
    text = " ".join(words[i % len(words)] for i in range(seq.max_tokens))
    choice = {"index": 0, "finish_reason": "length"}
    choice.update({"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text})
    usage = {"prompt_tokens": seq.prompt_tokens, "completion_tokens": seq.max_tokens}
    return JSONResponse({"id": "x", "object": kind, "model": model, "choices": [choice], "usage": usage})


async def _stream(engine: SimEngine, seq: Sequence, body: dict[str, Any], words: list[str], kind: str):
    options = body.get("stream_options") or {}
    running_usage = options.get("include_usage") and options.get("continuous_usage_stats")
    try:
        sent = 0
        while sent < seq.max_tokens:
            sent = await seq.out.get()
            piece = words[(sent - 1) % len(words)] if sent == 1 else " " + words[(sent - 1) % len(words)]
            choice = {"index": 0, "delta": {"content": piece}} if kind == "chat" else {"index": 0, "text": piece}
            chunk: dict[str, Any] = {"id": "x", "object": f"{kind}.chunk", "model": seq.model, "choices": [choice]}
            if running_usage:
                chunk["usage"] = {"prompt_tokens": seq.prompt_tokens, "completion_tokens": sent}
            yield f"data: {json.dumps(chunk)}\n\n"
        if options.get("include_usage"):
            usage = {"prompt_tokens": seq.prompt_tokens, "completion_tokens": sent}
            yield f"data: {json.dumps({'id': 'x', 'model': seq.model, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if seq.finished is None:
            engine.abort(seq)


class SimServer:
    """A simulated engine served by uvicorn on loopback in a thread; `start` returns
    once it answers /health. A stopped one can be started again on the same port."""

    def __init__(self, timing: SimTiming, port: int) -> None:
        self.timing, self.port = timing, port
        self.url = f"http://127.0.0.1:{port}"
        self.engine = SimEngine(timing)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> SimServer:
        config = uvicorn.Config(create_sim_vllm(self.engine), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name=f"sim engine {self.port}")
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not _answers(self.url + "/health"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} did not come up")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
