"""A fake vLLM OpenAI server that answers at once, for the unit tests and for measuring
the gateway's own cost (`benchmarks/gateway_cost.py`): the HTTP surface the gateway uses
(/health, /metrics, /v1/models, runtime LoRA load/unload, chat and completions,
streaming, /tokenize, label log-probabilities, /v1/embeddings, /classify) with vLLM's status
codes and error shapes, and a record of what it received. Its /v1/models cards carry
`max_model_len` only when `FakeState.max_model_len` is set (what it enforces is
`MAX_MODEL_LEN` words).

Its answer is deterministic and says which model served it: "[<model>] echo: <words>".
Its tokenizer has one token per word; its chat template renders a message as
`<s> role words </s>` (ids 1 and 2). Its "model" gives a token the log-probability
-3 + (times the token occurs in the prompt) + `label_bias[word]`. Its embedding of an
input is unit-norm and `EMBED_DIM` long, a bag of its words (or token ids) hashed
into buckets: the same input, the same vector; `dimensions` only where `matryoshka`.
As a sequence classifier (`/classify`, over `classes`), an input's logits are its
embedding's first buckets, times 4 (`fake_class_logits`); softmaxed unless the request
says `use_activation: false`, as vLLM does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

BASE = "tiny-base"
MAX_MODEL_LEN = 64  # in words, which this fake counts as tokens
EMBED_DIM = 8


@dataclass
class FakeState:
    healthy: bool = True
    health_calls: int = 0
    waiting: int = 0  # what /metrics reports queued (streams open count as running)
    fail_next: int = 0  # the next requests answered 500, as a failing engine would
    unavailable_next: int = 0  # the next requests answered 503 before any work (an engine shutting down)
    drop_next: int = 0  # the next requests read, then the connection dropped (an engine that died on them)
    refuse_next: str | None = None  # the next request answered 400 with this message (vLLM's may quote it)
    loaded: dict[str, str] = field(default_factory=dict)  # name -> path
    load_calls: list[str] = field(default_factory=list)
    unload_calls: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    token_delay_s: float = 0.0
    streams_open: int = 0
    streams_cancelled: int = 0
    vocab: dict[str, int] = field(default_factory=dict)
    label_bias: dict[str, float] = field(default_factory=dict)
    json_reply: Any = None  # the answer to a request with structured_outputs.json
    tokenize_calls: int = 0
    endless_word: str | None = None  # streams repeat it until the gateway stops reading
    chunks_sent: int = 0
    reply_delay_s: float = 0.0  # before a non-streamed answer
    reply_padding: int = 0  # bytes of padding in a non-streamed answer
    served: list[str] = field(default_factory=lambda: [BASE])  # the names /v1/models lists before adapters
    matryoshka: bool = False  # whether /v1/embeddings takes `dimensions`
    max_model_len: int | None = None  # the context /v1/models reports on each card (None: no such field)
    classes: list[str] = field(default_factory=lambda: ["negative", "positive"])  # /classify's id2label
    cached_tokens: int = 0  # each answer's usage.prompt_tokens_details.cached_tokens (prefix-cache hits)

    def usage(self, prompt: int, completion: int) -> dict[str, Any]:
        """vLLM's usage object (started with `--enable-prompt-tokens-details`)."""
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, prompt)}
        return usage

    def ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(word, len(self.vocab) + 10) for word in text.split()]

    def word(self, token: int) -> str:
        return next(w for w, i in self.vocab.items() if i == token)

    def restart(self) -> None:
        """What a vLLM restart does to state: every runtime-loaded adapter is gone."""
        self.loaded.clear()


def _error(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}}, status)


def _too_long() -> JSONResponse:
    return _error(
        400,
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, your "
        "prompt contains more. (parameter=input_tokens)",
        "BadRequestError",
        "input_tokens",
    )


def _prompt_words(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        return " ".join(str(m.get("content", "")) for m in body["messages"]).split()
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        return [str(t) for p in prompt for t in p]
    return (prompt if isinstance(prompt, str) else " ".join(map(str, prompt))).split()


def _completion_words(body: dict[str, Any]) -> list[str]:
    words = [f"[{body['model']}]", "echo:", *_prompt_words(body)]
    return words[: body.get("max_tokens") or 16]


def create_fake_vllm(state: FakeState) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> Response:
        state.health_calls += 1
        return Response(status_code=200 if state.healthy else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = [*state.served, *state.loaded]
        said = {} if state.max_model_len is None else {"max_model_len": state.max_model_len}
        return {"object": "list", "data": [{"id": name, "object": "model", **said} for name in names]}

    @app.get("/metrics")
    async def metrics() -> Response:
        labels = f'{{engine="0",model_name="{BASE}"}}'
        lines = [
            f"vllm:num_requests_running{labels} {float(state.streams_open)}",
            f"vllm:num_requests_waiting{labels} {float(state.waiting)}",
            f"vllm:kv_cache_usage_perc{labels} 0.0",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain")

    @app.post("/v1/load_lora_adapter")
    async def load(body: dict[str, Any]) -> Response:
        name, path = body["lora_name"], body["lora_path"]
        state.load_calls.append(name)
        await asyncio.sleep(0.05)  # a load takes a moment, so concurrent first requests overlap
        if name in state.loaded:
            return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if not Path(path).is_dir():
            return _error(404, f"Loading lora {name} failed: No adapter found for <path>", "NotFoundError")
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        if config.get("fake_refuse"):  # stands for whatever makes vLLM fail a load
            return _error(500, "Error in model execution: shape mismatch", "InternalServerError")
        state.loaded[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: dict[str, Any]) -> Response:
        state.unload_calls.append(body["lora_name"])
        if state.loaded.pop(body["lora_name"], None) is None:
            return _error(404, f"The lora adapter '{body['lora_name']}' cannot be found.", "NotFoundError")
        return Response("Success")

    async def generate(request: Request, kind: str) -> Response:
        body = await request.json()
        state.requests.append(body)
        if state.fail_next > 0:
            state.fail_next -= 1
            return _error(500, "EngineCore encountered an issue.", "InternalServerError")
        unwell = _unwell(state)
        if unwell is not None:
            return unwell
        if state.refuse_next is not None:
            message, state.refuse_next = state.refuse_next, None
            return _error(400, message, "BadRequestError")
        if body["model"] not in (BASE, *state.served, *state.loaded):  # served: a second LLM's name
            return _error(404, f"The model `{body['model']}` does not exist.", "NotFoundError", "model")
        if body.get("logprob_token_ids"):  # token-id prompts, each within the context
            if any(len(prompt) > MAX_MODEL_LEN for prompt in body["prompt"]):
                return _too_long()
            return JSONResponse(_label_reads(state, body))
        if len(_prompt_words(body)) > MAX_MODEL_LEN:
            return _too_long()
        words = _completion_words(body)
        if (body.get("structured_outputs") or {}).get("json") is not None:
            words = [json.dumps(state.json_reply)]
        if body.get("stream"):
            return StreamingResponse(_stream(state, body, words, kind), media_type="text/event-stream")
        await asyncio.sleep(state.reply_delay_s)
        text = " ".join(words) + " " * state.reply_padding
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text})
        usage = state.usage(len(_prompt_words(body)), len(words))
        return JSONResponse(
            {
                "id": "x",
                "object": kind,
                "created": int(time.time()),
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, "text_completion")

    @app.post("/v1/embeddings")
    async def embeddings(body: dict[str, Any]) -> Response:
        state.requests.append(body)
        unwell = _unwell(state)
        if unwell is not None:
            return unwell
        if body["model"] not in state.served:
            return _error(404, f"The model `{body['model']}` does not exist.", "NotFoundError", "model")
        if state.refuse_next is not None:
            message, state.refuse_next = state.refuse_next, None
            return _error(400, message, "BadRequestError")
        dims = body.get("dimensions")
        if dims is not None and not state.matryoshka:  # vLLM's words (pooling_params.py)
            return _error(
                400,
                f"Model {body['model']!r} does not support Matryoshka embeddings; dimensions must be unset "
                f"(received dimensions={dims}).",
                "BadRequestError",
            )
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        words = [i.split() if isinstance(i, str) else [str(t) for t in i] for i in inputs]
        if any(len(w) > MAX_MODEL_LEN for w in words):
            return _too_long()
        vectors: list[Any] = [fake_embedding(w, dims) for w in words]
        if body.get("encoding_format") == "base64":  # float32, in the byte order asked for (native: little here)
            order = ">" if body.get("endianness") == "big" else "<"
            vectors = [base64.b64encode(struct.pack(f"{order}{len(v)}f", *v)).decode() for v in vectors]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        used = sum(len(w) + 2 for w in words)  # [CLS] and [SEP]
        usage = {"prompt_tokens": used, "total_tokens": used, "completion_tokens": 0}
        return JSONResponse({"id": "x", "object": "list", "model": body["model"], "data": data, "usage": usage})

    @app.post("/classify")
    async def classify(body: dict[str, Any]) -> Response:
        state.requests.append(body)
        unwell = _unwell(state)
        if unwell is not None:
            return unwell
        if body["model"] not in state.served:
            return _error(404, f"The model `{body['model']}` does not exist.", "NotFoundError", "model")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        words = [i.split() for i in inputs]
        if any(len(w) > MAX_MODEL_LEN for w in words):
            return _too_long()
        data = []
        for i, w in enumerate(words):
            logits = fake_class_logits(w, len(state.classes))
            probs = logits if body.get("use_activation") is False else _softmax(logits)
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": i, "label": state.classes[best], "probs": probs, "num_classes": len(probs)})
        used = sum(len(w) + 2 for w in words)
        usage = {"prompt_tokens": used, "total_tokens": used, "completion_tokens": 0}
        return JSONResponse({"id": "c", "object": "list", "model": body["model"], "data": data, "usage": usage})

    @app.post("/tokenize")
    async def tokenize(body: dict[str, Any]) -> Response:
        state.tokenize_calls += 1
        messages, open_last = body["messages"], body.get("continue_final_message", False)
        ids: list[int] = []
        for i, message in enumerate(messages):
            ids += [1, *state.ids(message["role"]), *state.ids(message["content"])]
            if not (open_last and i == len(messages) - 1):
                ids.append(2)
        if body.get("add_generation_prompt", True) and not open_last:
            ids += [1, *state.ids("assistant")]
        return JSONResponse({"count": len(ids), "max_model_len": 2048, "tokens": ids})

    return app


def fake_embedding(words: list[str], dimensions: int | None = None) -> list[float]:
    """The fake engine's vector for an input's words: counts in hashed buckets (a
    stable hash: crc32), cut to `dimensions`, unit norm (a bucket of one more)."""
    counts = [0.0] * EMBED_DIM
    for word in words:
        counts[zlib.crc32(word.encode()) % EMBED_DIM] += 1.0
    counts = counts[: dimensions or EMBED_DIM]
    counts[0] += 1.0  # no input is the zero vector
    norm = math.sqrt(sum(c * c for c in counts))
    return [c / norm for c in counts]


def fake_class_logits(words: list[str], classes: int) -> list[float]:
    """The fake classifier's logits for an input's words: its embedding's first
    `classes` buckets, times 4."""
    return [4.0 * v for v in fake_embedding(words)[:classes]]


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    return [e / sum(exps) for e in exps]


def _label_reads(state: FakeState, body: dict[str, Any]) -> dict[str, Any]:
    """Completions over token-id prompts, returning the listed ids' log-probabilities."""
    choices = []
    for i, prompt in enumerate(body["prompt"]):
        top = {
            f"token_id:{t}": -3.0 + prompt.count(t) + state.label_bias.get(state.word(t), 0.0)
            for t in body["logprob_token_ids"]
        }
        choices.append({"index": i, "text": "x", "logprobs": {"top_logprobs": [top]}, "finish_reason": "length"})
    usage = state.usage(sum(map(len, body["prompt"])), len(body["prompt"]))
    return {"id": "x", "object": "text_completion", "model": body["model"], "choices": choices, "usage": usage}


def _unwell(state: FakeState) -> Response | None:
    """The next request's failure before any work (503) or after reading it (a dropped
    connection), where the test asked for one."""
    if state.unavailable_next > 0:
        state.unavailable_next -= 1
        return _error(503, "The engine is shutting down.", "ServiceUnavailableError")
    if state.drop_next > 0:
        state.drop_next -= 1
        return StreamingResponse(_dropped())
    return None


async def _dropped() -> AsyncIterator[bytes]:
    """A body that never comes: the server closes the connection after the status line."""
    raise ConnectionResetError("the engine died")
    yield b""  # a generator


def _endless(word: str) -> Iterator[str]:
    while True:
        yield word


async def _stream(state: FakeState, body: dict[str, Any], answer: list[str], kind: str):
    state.streams_open += 1
    words: Iterable[str] = answer if state.endless_word is None else _endless(state.endless_word)
    options = body.get("stream_options") or {}
    prompt_tokens, sent = len(_prompt_words(body)), 0
    try:
        for i, word in enumerate(words):
            await asyncio.sleep(state.token_delay_s)
            piece = word if i == 0 else " " + word
            choice = {"index": 0, "delta": {"content": piece}} if kind == "chat" else {"index": 0, "text": piece}
            chunk = {"id": "x", "object": f"{kind}.chunk", "created": 0, "model": body["model"], "choices": [choice]}
            sent += 1
            if options.get("include_usage") and options.get("continuous_usage_stats"):  # vLLM's running counts
                chunk["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": sent}
            yield f"data: {json.dumps(chunk)}\n\n"
            state.chunks_sent += 1
        if options.get("include_usage"):
            usage = state.usage(prompt_tokens, sent)
            yield f"data: {json.dumps({'id': 'x', 'model': body['model'], 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        state.streams_cancelled += 1
        raise
    finally:
        state.streams_open -= 1
