"""`adaptserve fit` on four tasks, 128 labelled examples each (a stratified sample of
the train split: its label shares), then the served LLM candidate (refit on the 128,
served with --serve-llm whatever fit's verdict) and the tuned baselines on 200 test
examples fit never saw, with the paired verdict on them.

The tasks: the two the product ships templates for (Rotten Tomatoes sentiment with
`templates/sentiment.yaml`, TREC-6 question types with `templates/question-type.yaml`)
and two nobody prepared templates or settings for (SMS spam, product-review sentiment:
`adaptserve.datasets`), which fit starts from its generic zero-shot template.

Needs a running server with the default model (`make serve`) and its keys in the data
folder. Writes `OUT/<task>/` (fit's report, manifest and state; the eval JSON) and
`OUT/summary.json`; run from the repository root (a task folder holding an earlier
fit of other data or settings is refused: move it away first):

    .venv/bin/python benchmarks/fit_tasks.py --out benchmarks/results/fit

With --serve-choice, fit serves its own choice instead (the MiniLM baseline as a
classifier head where that is the pick: needs `make serve`'s embedding model `minilm`),
and the served template is what the test set measures. Run on a copy of finished task
folders, fit resumes every unit and only serves.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from adaptserve.datasets import load_dataset, stratified_head

TASKS = {  # name → (dataset, starting template or None)
    "rotten-tomatoes": ("rotten-tomatoes", "sentiment"),
    "trec": ("trec", "question-type"),
    "sms-spam": ("sms-spam", None),
    "product-reviews": ("product-reviews", None),
}


def cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "adaptserve", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"adaptserve {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done


def one(task: str, out: Path, size: int, test_size: int, budget: float, serve_llm: bool = True) -> dict:
    dataset, template = TASKS[task]
    folder = out / task
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train.jsonl"
    rows = stratified_head(load_dataset(dataset, "train"), size)  # the train split's label shares
    train.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in rows))
    name = f"fit-{task}"
    started = time.perf_counter()
    # --serve-llm: the best LLM candidate is served (and measured on the test set) even
    # where fit's verdict is that a baseline wins or ties; the summary keeps that verdict.
    # --serve-choice: what fit chose is served and measured (its MiniLM pick as a head).
    args = ["fit", "--data", str(train), "--budget", str(budget), "--out", str(folder), "--name", name]
    cli(*args, *(["--serve-llm"] if serve_llm else []), *(["--template", template] if template else []))
    fit_s = time.perf_counter() - started
    manifest = json.loads((folder / "fit-manifest.json").read_text())
    cli(
        "eval", name, "--dataset", dataset, "--limit", str(test_size), "--baselines",
        "--baseline-data", str(train), "--out", str(folder),
    )  # fmt: skip
    report = json.loads((folder / f"{name}-{dataset}-test.json").read_text())
    served = report.get("calibrated") or report["uncalibrated"]
    baselines = report["baselines"]
    return {
        "task": task,
        "fit_seconds": fit_s,
        "decision": manifest["decision"],
        "served": manifest.get("served"),
        "candidates": {r["candidate"]: r for r in manifest["candidates"]},
        "notes": manifest["notes"],
        "test": {
            "n": served["n"],
            "served_accuracy": served["accuracy"],
            "served_macro_f1": served["macro_f1"],
            "baselines": {k: {"accuracy": v["accuracy"], "macro_f1": v["macro_f1"]} for k, v in baselines.items()},
            "verdict": report.get("verdict"),  # served against the baseline with the best inner score, paired
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fit"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--budget", type=float, default=10.0, help="minutes per fit")
    parser.add_argument(
        "--serve-choice",
        action="store_true",
        help="serve fit's choice (a MiniLM pick as a classifier head) instead of the best LLM candidate",
    )
    args = parser.parse_args()
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for task in args.tasks.split(","):
        summary[task] = one(task, args.out, args.size, args.test_size, args.budget, not args.serve_choice)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        t = summary[task]
        print(f"{task}: {t['decision']['verdict']}; fit {t['fit_seconds']:.0f} s; test {t['test']}", flush=True)


if __name__ == "__main__":
    main()
