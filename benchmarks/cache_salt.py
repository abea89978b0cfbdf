"""What the per-tenant prefix-cache salt costs, and what it hides: the same long prompt
sent cold, again by the same tenant (a prefix-cache hit), and then by another tenant
(a miss: its salt differs), each round with a fresh prompt. One-token answers, so the
latency is the time to first token; `cached_tokens` comes from vLLM's usage
(`--enable-prompt-tokens-details`).

Before the salt, the third request was a hit too: that difference in latency (and in
`cached_tokens`) is what let one tenant learn that another had sent a prompt, and it is
also what tenants who trust each other give up unless the operator puts them in one
`cache_groups` group.

    .venv/bin/python benchmarks/cache_salt.py --out benchmarks/results/cache-salt
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from adaptserve_client import Client

from adaptserve.bench.run import free_port
from adaptserve.bench.served import ADMIN_KEY, Served
from adaptserve.default_model import resolve_model

WORDS = [
    "the",
    "river",
    "mountain",
    "quiet",
    "evening",
    "window",
    "garden",
    "letter",
    "market",
    "winter",
    "story",
    "bright",
]
SIDES = ("cold (first time)", "same tenant again (hit)", "another tenant (salted: a miss)")


def send(url: str, key: str, prompt: str) -> tuple[float, int]:
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    started = time.perf_counter()
    response = httpx.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    details = response.json()["usage"].get("prompt_tokens_details") or {}
    return elapsed, details.get("cached_tokens") or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cache-salt"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--words", type=int, default=900, help="prompt length (about a token a word)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adaptserve-salt-"))
    base = resolve_model("default", Path.home() / ".local" / "share" / "adaptserve" / "models")
    (work / "adaptserve.yaml").write_text(json.dumps({"vllm": {"extra_args": ["--enable-prompt-tokens-details"]}}))
    (work / "data").mkdir()
    served = Served(base, work / "data", free_port(), base.parent, args=["--config", str(work / "adaptserve.yaml")])
    try:
        keys = []
        with Client(served.url, ADMIN_KEY, timeout=600) as client:
            for name in ("salt-a", "salt-b"):
                client.admin.tenants.create(name)
                client.admin.aliases.set(name, "default", base=True)
                keys.append(client.admin.keys.create(name)["key"])
        send(served.url, keys[0], "warm up")
        rows: dict[str, list[tuple[float, int]]] = {side: [] for side in SIDES}
        for r in range(args.rounds):
            prompt = " ".join(random.Random(r).choices(WORDS, k=args.words))
            for side, key in zip(SIDES, (keys[0], keys[0], keys[1]), strict=True):
                rows[side].append(send(served.url, key, prompt))
    finally:
        served.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args)


def report(rows: dict[str, list[tuple[float, int]]], args: argparse.Namespace) -> None:
    median = {side: statistics.median(t for t, _ in r) * 1000 for side, r in rows.items()}
    cached = {side: statistics.median(c for _, c in r) for side, r in rows.items()}
    cold = median[SIDES[0]]
    lines = [
        "# The per-tenant prefix-cache salt\n",
        f"`.venv/bin/python benchmarks/cache_salt.py --rounds {args.rounds} --words {args.words}`: the same "
        f"{args.words}-word prompt, a fresh one each round, one-token answers; medians of {args.rounds} rounds.\n",
        "| request | latency (ms) | against cold | cached tokens |",
        "|---|---|---|---|",
        *(f"| {side} | {median[side]:.0f} | ×{median[side] / cold:.2f} | {cached[side]:.0f} |" for side in SIDES),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache_salt.md").write_text("\n".join(lines) + "\n")
    (args.out / "cache_salt.json").write_text(json.dumps({"median_ms": median, "cached_tokens": cached, "rows": rows}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
