"""SVD reduction and merges of trained adapters, served: accuracy on both bundled tasks'
held-out inputs, size on disk, and engine output tokens/s, side by side in one run with
the unreduced adapters; beside them the baselines a practitioner tries first (TF-IDF
and all-MiniLM-L6-v2 embeddings with logistic regression) on the same training examples.

    python benchmarks/adapter_algebra_report.py [--examples 128] [--n-test 200] [--rank 16]

Phase 1 trains one rank-`--rank` LoRA per task with `adaptserve train` (skipped when its
folder exists). Phase 2 serves the base (`adaptserve serve`, max_lora_rank 32 so a `cat`
of two rank-16 adapters fits), pushes both, and makes every variant through the admin API
(`adapters compress`, `adapters merge`: the gateway's own code). Each variant is bound to
a copy of the task's zero-shot template and scored through the server: a task's own
variants on its task, the merges on both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from adaptation_report import Results, adaptserve, baselines, template
from adaptserve_client import Client
from quantize_report import throughput
from served import ADMIN_KEY, KEY, ROOT, Served
from template_ladder import TASKS  # dataset -> (zero-shot, few-shot template, input field)

from adaptserve.datasets import load_dataset
from adaptserve.evaluation import Evaluator, metrics

OUT = ROOT / "benchmarks" / "results" / "compress" / "adapters.json"
SHORT = {"rotten-tomatoes": "rt", "trec": "trec"}
TENANT = "algebra"


def train(dataset: str, args: argparse.Namespace, work: Path) -> Path:
    out = work / f"{SHORT[dataset]}-r{args.rank}"
    if not (out / "adapter_config.json").is_file():
        adaptserve(
            *("train", "--template", TASKS[dataset][0], "--dataset", dataset, "--limit", str(args.examples)),
            *("--rank", str(args.rank), "--max-steps", str(args.steps), "--out", str(out)),
        )
    return out


def variants(admin: Any, rank: int) -> dict[str, dict[str, Any]]:
    """Every variant as the admin API answers it (version, rank, size, fidelity), timed."""
    made: dict[str, dict[str, Any]] = {}

    def timed(name: str, call: Any) -> None:
        started = time.perf_counter()
        made[name] = call() | {"derive_s": round(time.perf_counter() - started, 2)}
        print(name, json.dumps(made[name]), flush=True)

    for task in SHORT.values():
        stored = admin.adapters.get(task)
        made[task] = {
            "version": stored["active_version"],
            "rank": rank,
            "size_bytes": stored["versions"][0]["size_bytes"],
        }
        for r in (8, 4, 1):
            timed(f"{task}-r{r}", lambda t=task, r=r: admin.adapters.compress(t, rank=r, into=f"{t}-r{r}"))
        timed(f"{task}-e90", lambda t=task: admin.adapters.compress(t, energy=0.9, into=f"{t}-e90"))
    for method in ("linear", "cat", "ties", "dare"):
        name = f"merge-{method}"
        timed(name, lambda m=method, n=name: admin.adapters.merge(n, list(SHORT.values()), method=m))
    return made


def bind(url: str, dataset: str, adapter: str) -> str:
    """A copy of the task's zero-shot template served by `adapter` (alias of the same name)."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    httpx.put(f"{url}/admin/tenants/{TENANT}/models/{adapter}", json={"adapter": adapter}, headers=headers)
    spec = template(TASKS[dataset][0])
    spec = spec.model_copy(update={"name": f"{spec.name}-{adapter}", "model": adapter, "calibration": False})
    response = httpx.put(
        f"{url}/admin/templates/{spec.name}",
        params={"tenant": TENANT},
        content=json.dumps(spec.document()),
        headers=headers,
    )
    response.raise_for_status()
    return spec.name


def accuracy(url: str, key: str, dataset: str, adapter: str | None, test: list) -> dict[str, Any]:
    name = bind(url, dataset, adapter) if adapter else TASKS[dataset][0]
    got = asyncio.run(Evaluator(url, key, name, batch=16, concurrency=2).run(test, TASKS[dataset][2]))
    result = metrics(got.labels, got.gold, got.predicted, got.confidence)
    return {k: round(result[k], 4) for k in ("accuracy", "macro_f1")}


def speed(url: str, key: str, models: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Output tokens/s of each model under the same load, interleaved twice (drift cancels)."""
    seen: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(2):
        for model in models:
            asyncio.run(throughput(url, 1, 1, 1, model, key))  # loads the adapter
            seen[model].append(asyncio.run(throughput(url, args.requests, args.requests, args.tokens, model, key)))
    return {m: round(sum(v) / len(v), 1) for m, v in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=128, help="training examples per task")
    parser.add_argument("--steps", type=int, default=64, help="training steps")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=200, help="held-out inputs per task")
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests of the speed load")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request of the speed load")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "adapter-algebra")
    args = parser.parse_args()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    results = Results(OUT, vars(args) | {"work": "(temporary)"})
    tests = {d: load_dataset(d, "test")[: args.n_test] for d in TASKS}
    folders = {SHORT[d]: train(d, args, args.work) for d in TASKS}
    for dataset, test in tests.items():
        results.put(baselines(dataset, test, args.examples), "baselines", dataset)
    env = {"ADAPTSERVE_VLLM__MAX_LORA_RANK": "32", "ADAPTSERVE_VLLM__MAX_LORAS": "4"}
    args.work.mkdir(parents=True, exist_ok=True)
    served = Served("default", Path(tempfile.mkdtemp(dir=args.work)), 8731, env)
    try:
        with Client(served.url, ADMIN_KEY, timeout=600) as client:
            client.admin.tenants.create(TENANT)
            key = client.admin.keys.create(TENANT)["key"]
            for name, folder in folders.items():
                client.admin.adapters.push(folder, name)
            made = results.put(variants(client.admin, args.rank), "variants")
        for dataset, test in tests.items():
            results.put(accuracy(served.url, KEY, dataset, None, test), "accuracy", dataset, "zero-shot template")
            for name in [n for n in made if n.startswith((SHORT[dataset], "merge"))]:
                results.put(accuracy(served.url, key, dataset, name, test), "accuracy", dataset, name)
                print(dataset, name, results.get("accuracy", dataset, name), flush=True)
        models = ["rt", "rt-r8", "rt-r4", "rt-r1", "merge-cat"]
        results.put(speed(served.url, key, models, args), "tokens_per_s")
    finally:
        served.stop()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
