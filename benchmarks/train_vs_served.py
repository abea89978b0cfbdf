"""The gap the `fit` issue found, measured: a LoRA adapter trained with `adaptserve train`
on 128 labelled examples of a task the product ships nothing for (product-review
sentiment), served behind a README-style zero-shot template with `calibration: true`.

Four numbers for the same adapter: training's held-out accuracy (argmax, in-process);
`train`'s new "as served" figure for that slice (the template's calibration applied,
in-process); the same slice through the server; and 200 test inputs through the
server, calibrated and not. Also the zero-shot template alone, for reference.

Needs `make serve` running (keys in the data folder). From the repository root:

    .venv/bin/python benchmarks/train_vs_served.py --out benchmarks/results/fit/train-vs-served
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from adaptserve.datasets import Example, load_dataset
from adaptserve.training.train import split_holdout

TEMPLATE = {
    "name": "tvs",
    "kind": "classify",
    "instruction": "Is the sentiment of this product review positive or negative?",
    "inputs": {"text": {"type": "string", "max_length": 2000}},
    "labels": [{"name": "negative"}, {"name": "positive"}],
    "calibration": True,
}


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "adaptserve", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"adaptserve {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def evaluate(template: str, data: Path, out: Path) -> dict:
    cli("eval", template, "--data", str(data), "--out", str(out))
    report = json.loads((out / f"{template}-{data.stem}.json").read_text())
    return {k: report[k]["accuracy"] for k in ("uncalibrated", "calibrated") if k in report}


def write(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fit/train-vs-served"))
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_rows = load_dataset("product-reviews", "train")[:128]
    train = write(out / "train.jsonl", train_rows)
    test = write(out / "test.jsonl", load_dataset("product-reviews", "test")[:200])
    # The slice `train` holds out: the same seeded split of the same rows.
    held = write(out / "heldout.jsonl", split_holdout(train_rows, 0.15, 0)[1])  # type: ignore[arg-type]
    (out / "tvs.yaml").write_text(yaml.safe_dump(TEMPLATE))
    cli("templates", "apply", str(out / "tvs.yaml"))
    result: dict = {"zero_shot_test": evaluate("tvs", test, out)}
    printed = cli(
        "train", "--template", str(out / "tvs.yaml"), "--data", str(train), "--out", str(out / "adapter"),
        "--push", "--tenant", "default", "--alias", "tvs-lora", "--name", "tvs-lora",
    )  # fmt: skip
    manifest = json.loads((out / "adapter" / "adaptserve-manifest.json").read_text())
    training = manifest["training"]
    (out / "tvs-adapter.yaml").write_text(yaml.safe_dump(TEMPLATE | {"name": "tvs-adapter", "model": "tvs-lora"}))
    cli("templates", "apply", str(out / "tvs-adapter.yaml"))
    result |= {
        "train_printed": printed[-1500:],
        "held_out_n": training["examples"]["held_out"],
        "held_out_training_accuracy": training["after"].get("accuracy"),
        "held_out_as_served_in_process": training["served"],
        "held_out_through_server": evaluate("tvs-adapter", held, out),
        "adapter_test_through_server": evaluate("tvs-adapter", test, out),
        "train_seconds": training["seconds"],
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "train_printed"}, indent=2))


if __name__ == "__main__":
    main()
