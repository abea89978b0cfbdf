"""A classifier head distilled from the LLM template `sentiment`: unlabelled Rotten
Tomatoes training sentences labelled by the teacher through the server, the head learnt
from its probabilities over MiniLM's vectors (`adaptserve distill --method head`), then
teacher and student answer the same label-balanced test sentences through the same
gateway, in batches of 16: each one's accuracy, the paired difference (bootstrap 95%
interval, exact McNemar), their agreement, and inputs/s of each, side by side.

One gateway as `make serve` runs it (the LLM, MiniLM as `minilm`, `--templates templates`).

    .venv/bin/python benchmarks/distill_head.py --out benchmarks/results/distill-head
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

from adaptserve_client import Client

from adaptserve.bench.served import ADMIN_KEY, KEY, Served
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.fit.head import head_template
from adaptserve.fit.verdict import accuracy_interval, mcnemar_p, paired_interval
from adaptserve.templates.spec import load_document
from adaptserve.upstream.supervisor import free_port

ROOT = Path(__file__).parents[1]
LABELS = ["negative", "positive"]
BATCH = 16


def answers(client: Client, template: str, texts: list[str]) -> tuple[list[str], float]:
    """The template's labels for `texts`, in batches of BATCH, and the inputs/s."""
    labels: list[str] = []
    started = time.perf_counter()
    for at in range(0, len(texts), BATCH):
        results = client.templates.run_batch(template, [{"text": t} for t in texts[at : at + BATCH]])
        labels += [r.label for r in results]
    return labels, len(texts) / (time.perf_counter() - started)


def distill(served: Served, work: Path, texts: list[str]) -> dict[str, Any]:
    (work / "inputs.txt").write_text("\n".join(texts) + "\n")
    cmd = [sys.executable, "-m", "adaptserve", "distill", "--method", "head", "--inputs", str(work / "inputs.txt")]
    cmd += ["--teacher-template", "sentiment", "--teacher-url", served.url, "--teacher-key", KEY]
    cmd += ["--template", "sentiment", "--templates-dir", str(ROOT / "templates"), "--embedding-model", "minilm"]
    cmd += ["--name", "sentiment-head", "--global", "--embed-key", KEY, "--out", str(work / "head.json")]
    cmd += ["--url", served.url, "--admin-key", ADMIN_KEY]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout) | {"seconds": time.perf_counter() - started}


def test_sentences(n: int) -> tuple[list[str], list[str]]:
    examples = load_dataset("rotten-tomatoes", "test")
    chosen = [e for label in LABELS for e in [x for x in examples if x.label == label][: n // 2]]
    return [e.text for e in chosen], [e.label for e in chosen]


def measure(served: Served, texts: list[str], gold: list[str]) -> dict[str, Any]:
    teacher = load_document((ROOT / "templates" / "sentiment.yaml").read_text()).document()
    with Client(served.url, ADMIN_KEY, timeout=600) as admin:  # the teacher's inputs and labels, no prompt
        admin.admin.templates.apply("sentiment-head", head_template(teacher, "sentiment-head"))
    out: dict[str, Any] = {}
    with Client(served.url, KEY, timeout=600) as client:
        answers(client, "sentiment", texts[:BATCH])  # warm both paths before timing
        answers(client, "sentiment-head", texts[:BATCH])
        for side in ("sentiment", "sentiment-head"):
            labels, rate = answers(client, side, texts)
            correct = [a == g for a, g in zip(labels, gold, strict=True)]
            low, high = accuracy_interval(correct)
            out[side] = {"accuracy": sum(correct) / len(correct), "low": low, "high": high, "inputs_per_s": rate}
            out[side]["correct"], out[side]["labels"] = correct, labels
    teacher, student = out["sentiment"], out["sentiment-head"]
    low, high = paired_interval(student["correct"], teacher["correct"])
    b = sum(s and not t for s, t in zip(student["correct"], teacher["correct"], strict=True))
    c = sum(t and not s for s, t in zip(student["correct"], teacher["correct"], strict=True))
    agree = sum(s == t for s, t in zip(student["labels"], teacher["labels"], strict=True)) / len(texts)
    return {
        "teacher": {k: v for k, v in teacher.items() if k not in ("correct", "labels")},
        "student": {k: v for k, v in student.items() if k not in ("correct", "labels")},
        "difference": student["accuracy"] - teacher["accuracy"],
        "difference_low": low,
        "difference_high": high,
        "mcnemar_p": mcnemar_p(b, c),
        "agreement": agree,
        "speedup": student["inputs_per_s"] / teacher["inputs_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--inputs", type=int, default=2000, help="unlabelled training sentences")
    parser.add_argument("--test", type=int, default=400, help="label-balanced test sentences")
    args = parser.parse_args()
    pool = [e.text for e in load_dataset("rotten-tomatoes", "train")]
    texts = random.Random(0).sample(pool, args.inputs)  # the labels are never read
    models = Path.home() / ".local/share/adaptserve/models"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {"ADAPTSERVE_MODELS": json.dumps([{"name": "minilm", "role": "embed", "path": "minilm"}])}
        (work / "data").mkdir()
        served = Served(resolve_model("default", models), work / "data", free_port(), models, env, ROOT / "templates")
        try:
            distilled = distill(served, work, texts)
            measured = measure(served, *test_sentences(args.test))
        finally:
            served.stop()
    result = {"command": " ".join(["benchmarks/distill_head.py", *sys.argv[1:]]), "distilled": distilled, **measured}
    result["distilled"].pop("file", None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "distilled"}, indent=2))


if __name__ == "__main__":
    main()
