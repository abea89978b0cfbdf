"""A fine-tuned encoder distilled from the LLM template `sentiment`: unlabelled Rotten
Tomatoes training sentences labelled by the teacher through the server, all-MiniLM-L6-v2
fine-tuned on its probabilities (`adaptserve distill --student encoder`), then served on
its own pooling engine (a `models:` entry of role classify) beside the LLM: teacher and
student answer the same label-balanced test sentences as `distill_head.py`'s through the
same gateway, in batches of 16, taking turns: each one's accuracy, the paired difference
(bootstrap 95% interval, exact McNemar), their agreement, inputs/s of each. Then the
classify engine alone, started as the gateway starts it: its start-up time and memory.

    .venv/bin/python benchmarks/distill_encoder.py --out benchmarks/results/distill-encoder

`--work DIR` keeps the teacher's answers (and the encoder) between runs.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from adaptserve_client import Client

from adaptserve.bench.served import ADMIN_KEY, KEY, Process, Served
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.engine_settings import ModelEntry, VLLMSettings
from adaptserve.fit.verdict import accuracy_interval, mcnemar_p, paired_interval
from adaptserve.upstream.supervisor import PoolingSupervisor, free_port

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from distill_head import BATCH, answers, test_sentences  # noqa: E402  (the same test sentences and batches)

NAME = "sentiment-encoder"
MODELS = Path.home() / ".local/share/adaptserve/models"


def distill(work: Path, texts: list[str], extra: list[str]) -> dict[str, Any]:
    """The teacher through its own gateway (the LLM alone); the student fine-tuned here."""
    (work / "inputs.txt").write_text("\n".join(texts) + "\n")
    (work / "data").mkdir(exist_ok=True)
    served = Served(resolve_model("default", MODELS), work / "data", free_port(), MODELS, templates=ROOT / "templates")
    cmd = [sys.executable, "-m", "adaptserve", "distill", "--student", "encoder", "--inputs", str(work / "inputs.txt")]
    cmd += ["--teacher-template", "sentiment", "--teacher-url", served.url, "--teacher-key", KEY]
    cmd += ["--template", "sentiment", "--templates-dir", str(ROOT / "templates"), "--name", NAME]
    cmd += ["--out", str(work / NAME), *extra]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        served.stop()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout) | {"seconds": time.perf_counter() - started}


def measure(work: Path, texts: list[str], gold: list[str], rounds: int) -> dict[str, Any]:
    """Teacher and student through one gateway (the LLM and the encoder's engine)."""
    (work / "serve").mkdir(exist_ok=True)
    env = {"ADAPTSERVE_MODELS": json.dumps([{"name": NAME, "role": "classify", "path": str(work / NAME)}])}
    served = Served(resolve_model("default", MODELS), work / "serve", free_port(), MODELS, env, ROOT / "templates")
    template = {
        "name": NAME,
        "kind": "classify",
        "encoder": NAME,
        "inputs": {"text": {"type": "string", "max_length": 2000}},
        "labels": [{"name": "negative"}, {"name": "positive"}],
    }
    sides = {"teacher": "sentiment", "student": NAME}
    labels: dict[str, list[str]] = {}
    rates: dict[str, list[float]] = {s: [] for s in sides}
    try:
        with Client(served.url, ADMIN_KEY, timeout=600) as admin:
            admin.admin.templates.apply(NAME, template)
        with Client(served.url, KEY, timeout=600) as client:
            for template_name in sides.values():
                answers(client, template_name, texts[:BATCH])  # warm both paths before timing
            for _ in range(rounds):
                for side, template_name in sides.items():
                    labels[side], rate = answers(client, template_name, texts)
                    rates[side].append(rate)
    finally:
        served.stop()
    return _compare(labels, rates, gold)


def _compare(labels: dict[str, list[str]], rates: dict[str, list[float]], gold: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    correct = {s: [a == g for a, g in zip(labels[s], gold, strict=True)] for s in labels}
    for side, right in correct.items():
        low, high = accuracy_interval(right)
        best = sorted(rates[side])[len(rates[side]) // 2]
        out[side] = {"accuracy": sum(right) / len(right), "low": low, "high": high, "inputs_per_s": best}
    s, t = correct["student"], correct["teacher"]
    low, high = paired_interval(s, t)
    b = sum(x and not y for x, y in zip(s, t, strict=True))
    c = sum(y and not x for x, y in zip(s, t, strict=True))
    agree = sum(x == y for x, y in zip(labels["student"], labels["teacher"], strict=True)) / len(gold)
    diff = out["student"]["accuracy"] - out["teacher"]["accuracy"]
    return out | {
        "difference": diff,
        "difference_low": low,
        "difference_high": high,
        "mcnemar_p": mcnemar_p(b, c),
        "agreement": agree,
        "speedup": out["student"]["inputs_per_s"] / out["teacher"]["inputs_per_s"],
    }


def engine_cost(work: Path) -> dict[str, Any]:
    """The classify engine alone, with the command and environment the gateway gives it:
    seconds until /health answers, and its processes' memory once idle."""
    entry = ModelEntry(name=NAME, role="classify", path=str(work / NAME))
    supervisor = PoolingSupervisor(VLLMSettings(), entry, work / NAME, work / "engine.log")
    process = Process(supervisor.command(), supervisor.url + "/health", work / "engine.log", supervisor.environment())
    try:
        root = psutil.Process(process.process.pid)
        tree = [root, *root.children(recursive=True)]
        memory = [p.memory_full_info() for p in tree]
        mib = 2**20
        return {
            "startup_s": process.startup_s,
            "rss_mib": sum(m.rss for m in memory) / mib,
            "pss_mib": sum(m.pss for m in memory) / mib,
            "uss_mib": sum(m.uss for m in memory) / mib,
            "processes": len(tree),
            "weights_mib": (work / NAME / "model.safetensors").stat().st_size / mib,
        }
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--inputs", type=int, default=2000, help="unlabelled training sentences")
    parser.add_argument("--test", type=int, default=400, help="label-balanced test sentences")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes of each side (median inputs/s)")
    parser.add_argument("--work", type=Path, help="keep the teacher's answers and the encoder here")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-temperature", type=float, default=1.0)
    args = parser.parse_args()
    pool = [e.text for e in load_dataset("rotten-tomatoes", "train")]
    texts = random.Random(0).sample(pool, args.inputs)  # the labels are never read: distill_head.py's sample
    extra = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", str(args.batch_size)]
    extra += ["--teacher-temperature", str(args.teacher_temperature)]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        distilled = distill(work, texts, extra)
        measured = measure(work, *test_sentences(args.test), args.rounds)
        engine = engine_cost(work)
    result = {"command": " ".join(["benchmarks/distill_encoder.py", *sys.argv[1:]]), "distilled": distilled}
    result |= measured | {"engine": engine}
    result["distilled"].pop("models_entry", None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "distilled"}, indent=2))


if __name__ == "__main__":
    main()
