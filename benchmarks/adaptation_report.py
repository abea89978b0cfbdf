"""The adaptation quality bars, in one run: for Rotten Tomatoes and TREC-6, trained
adapters (LoRA with 64 and 256 examples, AdaLoRA at the same budget with 256) against
the zero-shot and few-shot calibrated templates on the same held-out inputs, and a
student distilled from the few-shot template behind the zero-shot prompt.

    python benchmarks/adaptation_report.py [--n-test 500] [--sizes 64 256] [--distill 512]

Phase 1 (no server): each training run is `adaptserve train` in its own process
(wall time, seconds per step, peak memory from its manifest); its adapter is scored
in-process with peft on the held-out inputs, by the label scoring the server uses.
Phase 2 starts `adaptserve serve --templates templates`: the prompt-only templates
are scored through it, the teacher labels the distillation inputs through it, and
teacher and student are raced on the same fresh inputs (requests/s, one input per
request), with the student pushed to the server and bound to a copy of the zero-shot
template, so its served answers are checked against the in-process ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from served import ADMIN_KEY, KEY, MODELS_DIR, ROOT, Served
from template_ladder import TASKS  # dataset -> (zero-shot, few-shot template, input field)

from adaptserve.cli.remote import push_adapter
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.evaluation import Evaluator, metrics, report
from adaptserve.fit.baselines import on_examples
from adaptserve.templates.calibration import argmax
from adaptserve.templates.spec import TemplateSpec, load_document
from adaptserve.training.scoring import scan
from adaptserve.training.task import Task


def template(name: str) -> TemplateSpec:
    return load_document((ROOT / "templates" / f"{name}.yaml").read_text())


def adaptserve(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "adaptserve", *args], check=True)


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "adaptserve-manifest.json").read_text())


def score_adapter(base: Path, adapter: Path, spec: TemplateSpec, field: str, examples: list) -> dict[str, Any]:
    """Accuracy and macro-F1 of an adapter on held-out examples, scored in-process."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    task = Task.load(base, spec)
    items = [task.classify_item({field: e.text}, task.label_index(e.label)) for e in examples]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    started = time.perf_counter()
    _, scores = scan(model, task, items)
    predicted = [argmax(row) for row in scores]
    labels = [label.name for label in spec.labels]
    result = metrics(labels, [e.label for e in examples], [labels[p] for p in predicted], [1.0] * len(examples))
    result = {k: result[k] for k in ("accuracy", "macro_f1")}
    return result | {"inputs_per_s_in_process": len(examples) / (time.perf_counter() - started)}


def baselines(dataset: str, test: list, examples: int) -> dict[str, dict[str, float]]:
    """The practitioner's first tries (`fit/baselines.py`: class-balanced logistic regression
    on TF-IDF or MiniLM embeddings, C and TF-IDF features chosen by inner cross-validation on
    the training examples; the majority class) fitted on the first `examples` training
    examples (those the adapters train on), scored on `test`."""
    labels = [label.name for label in template(TASKS[dataset][0]).labels]
    found = on_examples(test, load_dataset(dataset, "train")[:examples], labels)
    return {k: {m: round(v[m], 4) for m in ("accuracy", "macro_f1")} for k, v in found.items()}


def training_run(dataset: str, method: str, size: int, work: Path, base: Path, test: list) -> dict[str, Any]:
    zero, _, field = TASKS[dataset]
    out = work / f"{dataset}-{method}-{size}"
    adaptserve(
        *("train", "--template", zero, "--dataset", dataset, "--limit", str(size)),
        *("--method", method, "--out", str(out)),
    )
    run = manifest(out)["training"]
    row = {
        "examples": size,
        "method": method,
        "rank": run["config"]["rank"],
        "steps": run["steps"],
        "wall_s": run["seconds"],
        "s_per_step": run["seconds_per_step"],
        "peak_rss_mb": run["peak_rss_mb"],
        "held_out_slice": {"before": run["before"], "after": run["after"]},
        "adapter_rank_served": json.loads((out / "adapter_config.json").read_text())["r"],
    }
    row |= score_adapter(base, out, template(zero), field, test)
    print(dataset, method, size, json.dumps(row), flush=True)
    return row


def prompt_only(served: Served, dataset: str, test: list) -> dict[str, Any]:
    rows = {}
    for kind, name in zip(("zero-shot", "few-shot"), TASKS[dataset][:2], strict=False):
        evaluator = Evaluator(served.url, KEY, name, batch=16, concurrency=2)
        started = time.perf_counter()
        got = asyncio.run(evaluator.run(test, TASKS[dataset][2]))
        result = report(got, True, time.perf_counter() - started, {})
        for part in ("uncalibrated", "calibrated"):
            rows[f"{kind} {part}"] = {k: result[part][k] for k in ("accuracy", "macro_f1")}
        print(dataset, kind, json.dumps(rows), flush=True)
    return rows


def prompt_tokens(base: Path, name: str, field: str, examples: list) -> float:
    task = Task.load(base, template(name))
    return sum(len(task.prompt({field: e.text})) for e in examples) / len(examples)


def distill(served: Served, dataset: str, n: int, work: Path, base: Path, test: list) -> dict[str, Any]:
    zero, few, field = TASKS[dataset]
    pool = load_dataset(dataset, "train")[1000 : 1000 + n]  # labels dropped: the teacher gives them
    inputs = work / f"{dataset}-unlabelled.txt"
    inputs.write_text("".join(e.text.replace("\n", " ") + "\n" for e in pool))
    out = work / f"{dataset}-student"
    started = time.perf_counter()
    adaptserve(
        *("distill", "--template", zero, "--inputs", str(inputs), "--teacher-template", few),
        *("--teacher-url", served.url, "--teacher-key", KEY, "--out", str(out)),
    )
    run = manifest(out)
    row: dict[str, Any] = {
        "unlabelled_inputs": n,
        "soft_targets": run["soft_targets"],
        "wall_s_total": time.perf_counter() - started,
        "train_wall_s": run["training"]["seconds"],
        "student": score_adapter(base, out, template(zero), field, test),
        "teacher_prompt_tokens": prompt_tokens(base, few, field, test[:100]),
        "student_prompt_tokens": prompt_tokens(base, zero, field, test[:100]),
    }
    row["speed"] = race(served, dataset, out, test)
    print(dataset, "distill", json.dumps(row), flush=True)
    return row


def race(served: Served, dataset: str, student: Path, test: list) -> dict[str, Any]:
    """Teacher and student on the same fresh inputs, one input per request, through the
    server: the student is pushed, aliased and bound to a copy of the zero-shot template."""
    zero, few, field = TASKS[dataset]
    tenant, alias = f"bench-{dataset}", "student"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    httpx.post(f"{served.url}/admin/tenants", json={"name": tenant}, headers=headers)
    push_adapter(served.url, ADMIN_KEY, student, f"{dataset}-student", tenant, alias)
    key = httpx.post(f"{served.url}/admin/tenants/{tenant}/keys", headers=headers).json()["key"]
    spec = template(zero).model_copy(update={"name": f"{zero}-student", "model": alias, "calibration": False})
    httpx.put(
        f"{served.url}/admin/templates/{spec.name}",
        params={"tenant": tenant},
        content=json.dumps(spec.document()),
        headers=headers,
    ).raise_for_status()
    fresh = test[-64:]
    out: dict[str, Any] = {}
    for side, name, api_key in (("teacher", few, KEY), ("student", spec.name, key)):
        evaluator = Evaluator(served.url, api_key, name, batch=1, concurrency=8)
        asyncio.run(evaluator.run(test[-72:-64], field))  # warm-up: calibration, first LoRA load
        started = time.perf_counter()
        got = asyncio.run(evaluator.run(fresh, field))
        elapsed = time.perf_counter() - started
        correct = sum(g == p for g, p in zip(got.gold, got.predicted, strict=True))
        out[side] = {"requests_per_s": len(fresh) / elapsed, "accuracy_served": correct / len(fresh)}
    out["inputs"] = len(fresh)
    return out


class Results:
    """The report's JSON, written after every row, so a re-run skips what is done."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"results": {}}
        self.data["settings"] = settings

    def get(self, *keys: str) -> Any:
        node = self.data["results"]
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def put(self, value: Any, *keys: str) -> Any:
        node = self.data["results"]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        self.data["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-test", type=int, default=500, help="held-out inputs per dataset")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--datasets", nargs="+", default=list(TASKS))
    parser.add_argument("--adalora-on", nargs="*", default=list(TASKS), help="datasets for the AdaLoRA run")
    parser.add_argument("--distill-on", nargs="*", default=list(TASKS), help="datasets to distill")
    parser.add_argument("--distill", type=int, default=512, help="unlabelled inputs the teacher labels")
    parser.add_argument("--port", type=int, default=8741)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adaptation_report.json")
    args = parser.parse_args()
    base = resolve_model("default", MODELS_DIR)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = Results(args.out, settings)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for dataset in args.datasets:
            test = load_dataset(dataset, "test")[: args.n_test]
            runs = [("lora", size) for size in args.sizes]
            runs += [("adalora", max(args.sizes))] if dataset in args.adalora_on else []
            for method, size in runs:
                if results.get(dataset, "training", f"{method}-{size}") is None:
                    row = training_run(dataset, method, size, work, base, test)
                    results.put(row, dataset, "training", f"{method}-{size}")
        (work / "data").mkdir()
        # Base traffic straight to the engine (no zero adapter): the prompt-only templates
        # and the teacher run at base speed; teacher and student are raced one after the
        # other, never in one batch, so no base request meets an adapter's weights.
        served = Served("default", work / "data", args.port, {"ADAPTSERVE_BASE_VIA_ZERO_ADAPTER": "false"})
        try:
            for dataset in args.datasets:
                test = load_dataset(dataset, "test")[: args.n_test]
                if results.get(dataset, "prompt_only") is None:
                    results.put(prompt_only(served, dataset, test), dataset, "prompt_only")
                if dataset in args.distill_on and results.get(dataset, "distillation") is None:
                    results.put(distill(served, dataset, args.distill, work, base, test), dataset, "distillation")
        finally:
            served.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
