"""A trained adapter on each depth-pruned base (`adaptserve compress prune`), side by side
with the same adapter trained on the full base in one run: held-out accuracy on both
bundled tasks of the zero-shot template alone and of a rank-8 LoRA trained on that base,
each also as points gained or lost against the first model, beside the practitioner's
first-try baselines (TF-IDF and all-MiniLM-L6-v2 embeddings with logistic regression) on
the same training examples.

    python benchmarks/pruned_adapters_report.py --model full=default --model drop4h=DIR [...]

Adapters do not transfer between bases (the registry refuses a LoRA whose shapes do not
match), so each base gets its own: `adaptserve train --model BASE --template ZERO-SHOT
--dataset D --limit 128 --max-steps 64 --rank 8`, the recipe of `peft_methods_report.py`'s
LoRA row. Scoring is in-process and uncalibrated (`adaptation_report.score_adapter`, the
label scoring the server uses) on the first `--n-test` inputs of each test split; the
template alone is scored through an untrained LoRA (B = 0). Rows are written as they
finish; a re-run skips the rows the JSON has (delete it to measure again).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from adaptation_report import Results, adaptserve, baselines, manifest, score_adapter, template
from peft_methods_report import parameters, zero_shot
from served import MODELS_DIR, ROOT
from template_ladder import TASKS  # dataset -> (zero-shot, few-shot template, input field)

from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model

OUT = ROOT / "benchmarks" / "results" / "compress" / "pruned_adapters.json"


def trained(name: str, base: Path, dataset: str, test: list, args: argparse.Namespace) -> dict[str, Any]:
    """A rank-8 LoRA trained on `base` with the task's zero-shot template, scored."""
    zero, _, field = TASKS[dataset]
    out = args.work / f"{name}-{dataset}"
    if not (out / "adaptserve-manifest.json").is_file():
        adaptserve(
            *("train", "--model", str(base), "--template", zero, "--dataset", dataset),
            *("--limit", str(args.examples), "--max-steps", str(args.steps), "--rank", "8"),
            *("--threads", str(args.threads), "--out", str(out)),
        )
    run = manifest(out)["training"]
    return score_adapter(base, out, template(zero), field, test) | {
        "params": parameters(out),
        "steps": run["steps"],
        "s_per_step": round(run["seconds_per_step"], 2),
        "held_out_slice": {"before": run["before"], "after": run["after"]},
    }


def table(results: dict[str, Any]) -> str:
    """Accuracy per base and task, the points against the first base in brackets."""
    datasets = list(TASKS)
    first = next(iter(results.values()))
    lines = [
        "| base | " + " | ".join(f"{d} template | {d} adapter" for d in datasets) + " |",
        "|---" * (2 * len(datasets) + 1) + "|",
    ]
    for name, rows in results.items():
        cells = []
        for dataset in datasets:
            for kind in ("template", "adapter"):
                value = rows.get(dataset, {}).get(kind, {}).get("accuracy")
                reference = first.get(dataset, {}).get(kind, {}).get("accuracy")
                if value is None:
                    cells.append("-")
                    continue
                points = "" if reference is None else f" ({100 * (value - reference):+.1f})"
                cells.append(f"{value:.3f}{points}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=default|DIR (repeat; the first is 0)")
    parser.add_argument("--examples", type=int, default=128, help="training examples per task")
    parser.add_argument("--steps", type=int, default=64, help="training steps")
    parser.add_argument("--n-test", type=int, default=200, help="held-out inputs per task")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pruned-adapters")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = dict(spec.split("=", 1) for spec in args.model)
    results = Results(OUT, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    for dataset in TASKS:
        test = load_dataset(dataset, "test")[: args.n_test]
        if results.get("baselines", dataset) is None:
            results.put(baselines(dataset, test, args.examples), "baselines", dataset)
        for name, model in models.items():
            base = resolve_model(model, MODELS_DIR)
            if results.get("bases", name, dataset, "template") is None:  # a re-run skips the rows it has
                identity = args.work / f"{name}-identity"
                results.put(zero_shot(base, dataset, test, identity), "bases", name, dataset, "template")
            if results.get("bases", name, dataset, "adapter") is None:
                results.put(trained(name, base, dataset, test, args), "bases", name, dataset, "adapter")
            print(name, dataset, json.dumps(results.get("bases", name, dataset)), flush=True)
    print(table(results.get("bases")))
    print("baselines:", json.dumps(results.get("baselines")))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
