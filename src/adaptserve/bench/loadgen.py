"""An HTTP load generator for OpenAI-compatible servers: closed-loop concurrency or
open-loop Poisson arrivals, streamed requests timed per token (TTFT, inter-token
latency, end-to-end), and the workload itself (prompts, adapter popularity, tenants),
all from fixed seeds."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from adaptserve.evaluation import percentile

# Common one-token English words: a synthetic prompt of N words is about N tokens.
_SENTENCE = (
    "the of and to in is was for on are with as his they be at one have this from had by word but not what all "
    "were we when your can said there use an each which she do how their if will up other about out many then them "
    "these so some her would make like him into time has look two more write go see number no way could people my "
    "than first water been call who oil its now find long down day did get come made may part"
)
WORDS = _SENTENCE.split()


@dataclass(frozen=True)
class Request:
    """One request of a workload: who sends it, to which model, what."""

    key: str
    model: str
    prompt: str
    max_tokens: int
    path: str = "/v1/chat/completions"


@dataclass
class Record:
    """What one request did, in seconds from its start."""

    model: str
    start: float
    ttft: float | None = None
    token_times: list[float] = field(default_factory=list)
    end: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


def synthetic_prompt(rng: random.Random, words: int) -> str:
    return "Continue this text: " + " ".join(rng.choice(WORDS) for _ in range(words))


def popularity(n_models: int, kind: str, rng: random.Random, count: int, zipf_s: float = 1.1) -> list[int]:
    """`count` draws of a model index: uniform, or Zipf (the k-th most popular has weight 1/k^s)."""
    if kind == "uniform":
        return [rng.randrange(n_models) for _ in range(count)]
    if kind != "zipf":
        raise ValueError(f"popularity is uniform or zipf, not {kind!r}")
    weights = [1 / (k + 1) ** zipf_s for k in range(n_models)]
    return rng.choices(range(n_models), weights=weights, k=count)


def workload(
    models: list[tuple[str, str]],
    count: int,
    *,
    input_words: int,
    max_tokens: int,
    popularity_kind: str = "uniform",
    prompts: list[str] | None = None,
    seed: int = 0,
) -> list[Request]:
    """`count` requests over `models` ((key, model) pairs, e.g. one tenant's alias each);
    prompts are synthetic (`input_words` long), or drawn from `prompts` when given."""
    rng = random.Random(seed)
    picks = popularity(len(models), popularity_kind, rng, count)
    out = []
    for pick in picks:
        key, model = models[pick]
        prompt = rng.choice(prompts) if prompts else synthetic_prompt(rng, input_words)
        out.append(Request(key, model, prompt, max_tokens))
    return out


def chat_body(request: Request, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": "user", "content": request.prompt}],
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body | {"ignore_eos": True, "min_tokens": request.max_tokens}  # every answer is max_tokens long


async def send(client: httpx.AsyncClient, url: str, request: Request, stream: bool, t0: float) -> Record:
    """One chat request; streamed ones record when each content chunk arrived."""
    record = Record(request.model, time.perf_counter() - t0)
    headers = {"Authorization": f"Bearer {request.key}"}
    body = chat_body(request, stream)
    try:
        if stream:
            async with client.stream("POST", url + request.path, json=body, headers=headers) as response:
                if response.is_error:
                    await response.aread()
                    record.error = f"{response.status_code} {response.text[:200]}"
                    return record
                async for line in response.aiter_lines():
                    _on_line(record, line, t0)
        else:
            response = await client.post(url + request.path, json=body, headers=headers)
            if response.is_error:
                record.error = f"{response.status_code} {response.text[:200]}"
                return record
            _on_usage(record, response.json().get("usage"))
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return record
    record.end = time.perf_counter() - t0
    if record.ttft is None:  # not streamed: the whole answer is the first token
        record.ttft = record.end - record.start
    return record


def _on_line(record: Record, line: str, t0: float) -> None:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return
    chunk = json.loads(line[6:])
    choices = chunk.get("choices") or []
    if choices and (choices[0].get("delta") or {}).get("content"):
        now = time.perf_counter() - t0
        record.token_times.append(now)
        if record.ttft is None:
            record.ttft = now - record.start
    _on_usage(record, chunk.get("usage"))


def _on_usage(record: Record, usage: dict[str, Any] | None) -> None:
    if usage:
        record.prompt_tokens = usage.get("prompt_tokens") or 0
        record.output_tokens = usage.get("completion_tokens") or 0


def _limits(connections: int) -> httpx.Limits:
    """Idle connections are dropped after 2 s, before any server closes them (uvicorn,
    vLLM's included: 5 s), so no request is sent on a connection being closed."""
    return httpx.Limits(max_connections=connections, keepalive_expiry=2.0)


async def closed_loop(url: str, requests: list[Request], concurrency: int, stream: bool = True) -> Run:
    """`concurrency` users, each sending its next request when the last one ends."""
    queue = list(reversed(requests))
    records: list[Record] = []
    async with httpx.AsyncClient(timeout=600, limits=_limits(concurrency + 4)) as client:
        t0 = time.perf_counter()

        async def user() -> None:
            while queue:
                records.append(await send(client, url, queue.pop(), stream, t0))

        await asyncio.gather(*(user() for _ in range(concurrency)))
        return Run(records, time.perf_counter() - t0)


async def poisson(url: str, requests: list[Request], rate: float, seed: int = 0, stream: bool = True) -> Run:
    """Open loop: requests arrive at `rate` per second on average (exponential gaps),
    whether or not earlier ones have finished."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=600, limits=_limits(1000)) as client:
        t0 = time.perf_counter()
        tasks, due = [], 0.0
        for request in requests:
            due += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, due - (time.perf_counter() - t0)))
            tasks.append(asyncio.create_task(send(client, url, request, stream, t0)))
        records = list(await asyncio.gather(*tasks))
        return Run(records, time.perf_counter() - t0)


@dataclass
class Run:
    records: list[Record]
    wall_s: float

    def summary(self) -> dict[str, Any]:
        done = [r for r in self.records if r.error is None]
        tokens = sum(r.output_tokens for r in done)
        out: dict[str, Any] = {
            "requests": len(self.records),
            "errors": len(self.records) - len(done),
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": len(done) / self.wall_s,
            "output_tokens_per_s": tokens / self.wall_s,
            "mean_prompt_tokens": sum(r.prompt_tokens for r in done) / max(1, len(done)),
        }
        series = {
            "ttft": [r.ttft for r in done if r.ttft is not None],
            "itl": [x for r in done for x in r.itl],
            "e2e": [r.end - r.start for r in done if r.end is not None],
        }
        for name, values in series.items():
            for q in (50, 90, 99):
                out[f"{name}_p{q}_ms"] = 1000 * percentile(values, q) if values else None
        if out["errors"]:
            out["first_error"] = next(r.error for r in self.records if r.error)
        return out
