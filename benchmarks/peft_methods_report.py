"""PEFT methods at a similar parameter budget, before and after conversion to the LoRA
vLLM serves, and soft prompts of a few lengths against the zero-shot template: accuracy
on both bundled tasks' held-out inputs, beside the practitioner's first-try baselines
(TF-IDF and all-MiniLM-L6-v2 embeddings with logistic regression) on the same examples.

    python benchmarks/peft_methods_report.py [--examples 128] [--steps 64] [--n-test 200]

Each run is `adaptserve train --method M` in its own process, on the first `--examples`
training examples with the task's zero-shot template. Every model is scored in-process
(`training/scoring.py`: the label scoring the server uses, argmax, no calibration) on
the first `--n-test` inputs of the task's test split: the unconverted peft adapter
(`OUT.METHOD`), the converted LoRA (`OUT`), the soft prompt, and the base alone (the
zero-shot template). Parameters are counted from each saved adapter's tensors.

`--sweep-ranks` converts each trained unconverted adapter again at those ranks (the same
ΔW = W′ − W, `training/convert.py`) and scores each result: the rank a method needs
before its served LoRA answers like the adapter that was trained. Rows are written as
they finish; a re-run skips the rows the JSON has (delete it to measure again).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from adaptation_report import Results, adaptserve, baselines, manifest, score_adapter, template
from served import MODELS_DIR, ROOT
from template_ladder import TASKS  # dataset -> (zero-shot, few-shot template, input field)

from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.training.convert import CONVERTED

OUT = ROOT / "benchmarks" / "results" / "compress" / "peft_methods.json"
# method -> (rank, extra flags): ranks chosen so the weight methods train about the same
# number of parameters as LoRA rank 8 (LoHa has two pairs of factors per module).
RUNS: dict[str, tuple[int | None, tuple[str, ...]]] = {
    "lora": (8, ()),
    "dora": (8, ()),
    "loha": (4, ()),
    "lokr": (8, ()),
    "ia3": (None, ()),
    "prompt-tuning-8": (None, ("--virtual-tokens", "8")),
    "prompt-tuning-32": (None, ("--virtual-tokens", "32")),
}


def parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(folder / "adapter_model.safetensors", "np") as f:
        names = f.keys()  # a safe_open handle is not iterable
        return sum(math.prod(f.get_slice(k).get_shape()) for k in names)


def run(dataset: str, name: str, args: argparse.Namespace, base: Path, test: list) -> dict[str, Any]:
    zero, _, field = TASKS[dataset]
    method = name.removesuffix("-8").removesuffix("-32")
    rank, extra = RUNS[name]
    out = args.work / f"{dataset}-{name}"
    if not (out / "adaptserve-manifest.json").is_file():
        adaptserve(
            *("train", "--template", zero, "--dataset", dataset, "--limit", str(args.examples)),
            *("--method", method, "--max-steps", str(args.steps), "--threads", str(args.threads)),
            *(("--rank", str(rank)) if rank else ()),
            *("--convert-rank", str(args.convert_rank), *extra),
            *("--out", str(out)),
        )
    training = manifest(out)["training"]
    unconverted = out.with_name(f"{out.name}.{method}")
    trained = unconverted if unconverted.is_dir() else out
    row: dict[str, Any] = {
        "method": method,
        "rank": rank,
        "trained_params": parameters(trained),
        "steps": training["steps"],
        "s_per_step": round(training["seconds_per_step"], 2),
        "trained": score_adapter(base, trained, template(zero), field, test),
    }
    if trained != out:
        conversion = training["conversion"]
        row["converted"] = score_adapter(base, out, template(zero), field, test) | {
            "rank": conversion["rank"],
            "params": parameters(out),
            "logprob_diff_max": conversion["logprob_diff_max"],
            "logprob_diff_mean": conversion["logprob_diff_mean"],
            "relative_error_mean": conversion["fidelity"].get("relative_error_mean"),
        }
    print(dataset, name, json.dumps(row), flush=True)
    return row


def sweep(dataset: str, name: str, args: argparse.Namespace, base: Path, test: list) -> dict[str, Any]:
    """The trained adapter converted at each of `--sweep-ranks`, scored: rank -> row."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptserve.training.convert import updates, write_lora

    zero, _, field = TASKS[dataset]
    unconverted = args.work / f"{dataset}-{name}.{name}"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), unconverted)
    deltas = updates(model)
    del model
    rows = {}
    for rank in args.sweep_ranks:
        out = args.work / f"{dataset}-{name}-r{rank}"
        summary = write_lora(deltas, base, out, rank, name)[1].summary()
        rows[str(rank)] = score_adapter(base, out, template(zero), field, test) | {
            "params": parameters(out),
            "relative_error_mean": summary["relative_error_mean"],
            "energy_kept_min": summary["energy_kept_min"],
        }
        print(dataset, name, rank, json.dumps(rows[str(rank)]), flush=True)
    return rows


def zero_shot(base: Path, dataset: str, test: list, folder: Path) -> dict[str, Any]:
    """The base alone, scored the same way: an untrained LoRA (B = 0, written to `folder`)
    changes nothing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if not folder.is_dir():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        get_peft_model(model, LoraConfig(r=1, target_modules=["q_proj"])).save_pretrained(folder)
    zero, _, field = TASKS[dataset]
    return score_adapter(base, folder, template(zero), field, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=128, help="training examples per task")
    parser.add_argument("--steps", type=int, default=64, help="training steps")
    parser.add_argument("--convert-rank", type=int, default=16, help="the served LoRA's rank")
    parser.add_argument("--n-test", type=int, default=200, help="held-out inputs per task")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--sweep-ranks", type=int, nargs="*", default=[16, 64, 256], help="conversion ranks swept")
    parser.add_argument("--sweep", nargs="*", default=["dora", "lokr", "ia3"], choices=CONVERTED)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "peft-methods")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = resolve_model("default", MODELS_DIR)
    results = Results(OUT, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    for dataset in TASKS:
        test = load_dataset(dataset, "test")[: args.n_test]
        results.put(baselines(dataset, test, args.examples), "baselines", dataset)
        if results.get("runs", dataset, "zero-shot") is None:  # a re-run skips the rows it has
            results.put(zero_shot(base, dataset, test, args.work / "identity"), "runs", dataset, "zero-shot")
        for name in args.runs:
            if results.get("runs", dataset, name) is None:
                results.put(run(dataset, name, args, base, test), "runs", dataset, name)
        for name in args.sweep:
            if results.get("conversion_ranks", dataset, name) is None:
                results.put(sweep(dataset, name, args, base, test), "conversion_ranks", dataset, name)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
