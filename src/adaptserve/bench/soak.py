"""The soak test: a few tenants' users send a seeded mix of calls (chat, streamed chat,
classify and generate templates, model lists, admin calls) for a bounded time and
count; it reports errors, latency percentiles per time window and the gateway's
resident memory from start to end. `adaptserve soak` runs it against a server it
starts; the integration tests run a short one against theirs."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from adaptserve_client import AsyncClient

from adaptserve.evaluation import percentile

TEXTS = [
    "A warm, funny and beautifully acted film.",
    "Two hours of my life I will never get back.",
    "The plot wanders, but the cast keeps it afloat.",
    "Write to Ana Ruiz at ana@example.org or call 555-0101 (Acme Corp).",
]
WEIGHTS = {"chat": 30, "chat_stream": 25, "classify": 20, "generate": 5, "models": 5, "admin": 15}


@dataclass(frozen=True)
class SoakPlan:
    duration_s: float = 600.0
    max_requests: int = 100_000
    users: int = 4
    tenants: int = 3
    window_s: float = 60.0
    seed: int = 0


@dataclass
class Outcome:
    at_s: float
    kind: str
    latency_s: float
    error: str | None = None


@dataclass
class Soak:
    """One run's state: what each tenant is, what happened, and the memory samples."""

    plan: SoakPlan
    tenants: list[AsyncClient]
    admin: AsyncClient
    gateway_pid: int
    started: float = field(default_factory=time.perf_counter)
    outcomes: list[Outcome] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)

    def now(self) -> float:
        return time.perf_counter() - self.started

    def over(self) -> bool:
        return self.now() >= self.plan.duration_s or len(self.outcomes) >= self.plan.max_requests


async def setup_tenants(url: str, admin_key: str, tenants: int, adapters: list[str]) -> list[str]:
    """Tenants `soak-T` with one key each; alias `chat` is the base model (tenant 0) or
    an adapter (the others, in turn), and `default` the base model, which the shipped
    templates name. Returns the keys."""
    keys = []
    async with AsyncClient(url, admin_key, max_retries=0, timeout=120) as admin:
        for t in range(tenants):
            name = f"soak-{t}"
            await admin.admin.tenants.create(name)
            keys.append((await admin.admin.keys.create(name))["key"])
            await admin.admin.aliases.set(name, "default", base=True)
            if t == 0 or not adapters:
                await admin.admin.aliases.set(name, "chat", base=True)
            else:
                await admin.admin.aliases.set(name, "chat", adapter=adapters[(t - 1) % len(adapters)])
    return keys


async def run_soak(url: str, admin_key: str, keys: list[str], gateway_pid: int, plan: SoakPlan) -> dict[str, Any]:
    clients = [AsyncClient(url, key, max_retries=0, timeout=300) for key in keys]
    admin = AsyncClient(url, admin_key, max_retries=0, timeout=300)
    soak = Soak(plan, clients, admin, gateway_pid)
    sampler = asyncio.create_task(_sample_memory(soak))
    try:
        await asyncio.gather(*(_user(soak, random.Random(plan.seed * 1000 + u)) for u in range(plan.users)))
    finally:
        sampler.cancel()
        _sample_once(soak)
        for client in [*clients, admin]:
            await client.close()
    return report(soak)


async def _user(soak: Soak, rng: random.Random) -> None:
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    first = rng.sample(kinds, len(kinds))  # every kind once, however slow the machine, then the mix
    while first or not soak.over():
        kind = first.pop() if first else rng.choices(kinds, weights)[0]
        client = rng.choice(soak.tenants)
        started = soak.now()
        error = None
        try:
            await CALLS[kind](soak, client, rng)
        except Exception as exc:  # every failure is counted, whatever raised it
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        soak.outcomes.append(Outcome(started, kind, soak.now() - started, error))


async def _chat(soak: Soak, client: AsyncClient, rng: random.Random) -> None:
    messages = [{"role": "user", "content": rng.choice(TEXTS) + " Summarise in five words."}]
    reply = await client.openai.chat.completions.create(model="chat", messages=messages, max_tokens=8)
    assert reply.choices[0].message.content is not None


async def _chat_stream(soak: Soak, client: AsyncClient, rng: random.Random) -> None:
    messages = [{"role": "user", "content": rng.choice(TEXTS) + " Summarise in five words."}]
    stream = await client.openai.chat.completions.create(model="chat", messages=messages, max_tokens=8, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert pieces


async def _classify(soak: Soak, client: AsyncClient, rng: random.Random) -> None:
    answer = await client.classify("sentiment", text=rng.choice(TEXTS))
    assert answer.label in answer.scores


async def _generate(soak: Soak, client: AsyncClient, rng: random.Random) -> None:
    answer = await client.templates.run("extract-contact", {"message": TEXTS[-1]}, max_tokens=64)
    assert answer.finish_reason is not None


async def _models(soak: Soak, client: AsyncClient, rng: random.Random) -> None:
    listed = await client.openai.models.list()
    assert "chat" in {m.id for m in listed.data}


async def _admin(soak: Soak, client: AsyncClient, rng: random.Random) -> None:
    admin = soak.admin.admin
    action = rng.randrange(4)
    if action == 0:
        await admin.adapters.list()
    elif action == 1:
        await admin.usage(tenant="soak-0")
    elif action == 2:
        await admin.tenants.set_quotas(f"soak-{rng.randrange(len(soak.tenants))}", requests_per_minute=100_000)
    else:
        await admin.tenants.list()


CALLS: dict[str, Callable[[Soak, AsyncClient, random.Random], Awaitable[None]]] = {
    "chat": _chat,
    "chat_stream": _chat_stream,
    "classify": _classify,
    "generate": _generate,
    "models": _models,
    "admin": _admin,
}


async def _sample_memory(soak: Soak, every_s: float = 5.0) -> None:
    while True:
        _sample_once(soak)
        await asyncio.sleep(every_s)


def _sample_once(soak: Soak) -> None:
    rss = psutil.Process(soak.gateway_pid).memory_info().rss / 2**20
    soak.rss_mb.append((round(soak.now(), 1), round(rss, 1)))


def report(soak: Soak) -> dict[str, Any]:
    outcomes, width = soak.outcomes, soak.plan.window_s
    windows = []
    for w in range(int(max((o.at_s for o in outcomes), default=0) // width) + 1):
        inside = [o for o in outcomes if w * width <= o.at_s < (w + 1) * width]
        windows.append({"start_s": w * width, **_stats(inside)})
    errors = [o for o in outcomes if o.error]
    rss = [mb for _, mb in soak.rss_mb]
    return {
        "plan": asdict(soak.plan),
        "elapsed_s": round(soak.now(), 1),
        **_stats(outcomes),
        "calls": dict(Counter(o.kind for o in outcomes)),
        "by_kind": {kind: _stats([o for o in outcomes if o.kind == kind]) for kind in WEIGHTS},
        "errors_by_kind": dict(Counter(o.kind for o in errors)),
        "error_samples": sorted({o.error for o in errors if o.error})[:10],
        "windows": windows,
        "gateway_rss_mb": {"start": rss[0], "end": rss[-1], "max": max(rss)} if rss else {},
        "gateway_rss_samples": soak.rss_mb,
    }


def _stats(outcomes: list[Outcome]) -> dict[str, Any]:
    latencies = [o.latency_s * 1000 for o in outcomes if not o.error]
    return {
        "requests": len(outcomes),
        "errors": sum(1 for o in outcomes if o.error),
        **{f"p{q}_ms": round(percentile(latencies, q), 1) if latencies else None for q in (50, 90, 99)},
    }


def markdown(result: dict[str, Any]) -> str:
    rss = result["gateway_rss_mb"]
    lines = [
        "# Soak test",
        "",
        f"{result['requests']} calls in {result['elapsed_s']} s, {result['errors']} errors; calls: {result['calls']}.",
        f"Gateway memory (RSS): {rss.get('start')} MB at the start, {rss.get('end')} MB at the end, "
        f"{rss.get('max')} MB at most.",
        "",
        "| window (s) | calls | errors | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for w in result["windows"]:
        lines.append(
            f"| {w['start_s']:.0f}– | {w['requests']} | {w['errors']} | {w['p50_ms']} | {w['p90_ms']} | {w['p99_ms']} |"
        )
    lines += ["", "| call | count | errors | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for kind, k in result["by_kind"].items():
        lines.append(f"| {kind} | {k['requests']} | {k['errors']} | {k['p50_ms']} | {k['p90_ms']} | {k['p99_ms']} |")
    if result["error_samples"]:
        lines += ["", "Errors:", *(f"- {e}" for e in result["error_samples"])]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "soak.md").write_text(markdown(result))
