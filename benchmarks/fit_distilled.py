"""`adaptserve fit` on Rotten Tomatoes with unlabelled inputs: the default candidates and
`distilled-head` (a MiniLM head taught by the zero-shot template on the unlabelled
sentences, `fit/distilled.py`), then the served template on test sentences fit never saw
(`eval --baselines`, the tuned baselines trained on the same labelled examples).

Labelled: a stratified sample of the train split (its label shares, `--labelled`, default
200). Unlabelled: `--unlabelled` (default 1,000) other train sentences, a seeded sample of
those not labelled (their labels are never read). Needs a running server with the default
model and the embedding model `minilm` (`make serve`) and its keys in the data folder;
run from the repository root:

    .venv/bin/python benchmarks/fit_distilled.py --out benchmarks/results/fit/distilled-head

Writes OUT/train.jsonl, OUT/unlabelled.txt, fit's report, manifest and state, the eval
JSON and OUT/summary.json. Re-running resumes fit's finished units.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from adaptserve.datasets import load_dataset, stratified_head

NAME = "fit-rt-distilled"


def cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "adaptserve", *args], capture_output=True, text=True)
    sys.stderr.write(done.stderr[-2000:])
    if done.returncode != 0:
        sys.exit(f"adaptserve {' '.join(args)} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labelled", type=int, default=200)
    parser.add_argument("--unlabelled", type=int, default=1000)
    parser.add_argument("--test", type=int, default=200, help="test sentences for the served template")
    parser.add_argument("--budget", type=float, default=10.0, help="fit's budget, minutes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pool = load_dataset("rotten-tomatoes", "train")
    labelled = stratified_head(pool, args.labelled)
    taken = {e.text for e in labelled}
    rest = [e.text for e in pool if e.text not in taken]
    unlabelled = random.Random(0).sample(rest, args.unlabelled)
    train, extra = args.out / "train.jsonl", args.out / "unlabelled.txt"
    train.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in labelled))
    extra.write_text("".join(text + "\n" for text in unlabelled))
    started = time.perf_counter()
    fit = ["fit", "--data", str(train), "--unlabelled", str(extra), "--template", "sentiment"]
    cli(*fit, "--budget", str(args.budget), "--out", str(args.out), "--name", NAME)
    fit_s = time.perf_counter() - started
    manifest = json.loads((args.out / "fit-manifest.json").read_text())
    summary: dict = {"fit_seconds": fit_s, "decision": manifest["decision"], "served": manifest.get("served")}
    summary["not_served"] = manifest.get("not_served")
    if "served" in manifest:
        cli(
            "eval", NAME, "--dataset", "rotten-tomatoes", "--limit", str(args.test), "--baselines",
            "--baseline-data", str(train), "--out", str(args.out),
        )  # fmt: skip
        report = json.loads((args.out / f"{NAME}-rotten-tomatoes-test.json").read_text())
        served = report.get("calibrated") or report["uncalibrated"]
        summary["test"] = {
            "n": served["n"],
            "served_accuracy": served["accuracy"],
            "baselines": {k: v["accuracy"] for k, v in report["baselines"].items()},
            "verdict": report.get("verdict"),  # the served template against the best-inner baseline, paired
        }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
