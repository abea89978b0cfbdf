"""Full vs depth-pruned bases (`adaptserve compress prune`), side by side in one run: size
on disk, held-out perplexity, the shipped templates' accuracy and output tokens/s, each
also as a ratio to the first model, with what each pruned folder's manifest says
(layers kept and dropped, healing steps, the in-process perplexity it measured).

    python benchmarks/prune_report.py --model full=default --model drop4=DIR [--model ...]

Each model is served in turn by `quantize_report.measure` (the same measurements as the
quantization report: `adaptserve serve --model M`, base traffic straight to the engine,
perplexity from vLLM one prompt per request); nothing is copied from it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from quantize_report import measure  # benchmarks/ is the script's folder
from served import MODELS_DIR, ROOT

from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model

COMPARED = ("size_mb", "perplexity", "sentiment_accuracy", "question-type-fewshot_accuracy", "output_tokens_per_s")


def pruning(model: Path) -> dict[str, Any] | None:
    """The facts of a pruned folder's manifest; None for a model `compress prune` did not write."""
    path = model / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if "layer_scores" not in manifest:
        return None
    heal = manifest["heal"] or {}
    return {
        "layers": f"{manifest['kept']} of {manifest['source']['layers']}",
        "dropped": manifest["dropped"],
        "heal_steps": heal.get("steps", 0),
        "in_process_perplexity": manifest["perplexity"],
    }


def with_ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each row with `<measure>_ratio`: its value over the first model's."""
    first = next(iter(rows.values()))
    for row in rows.values():
        for key in COMPARED:
            if isinstance(row.get(key), (int, float)) and first.get(key):
                row[f"{key}_ratio"] = row[key] / first[key]
    return rows


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | " + " | ".join(COMPARED) + " |", "|---" * (len(COMPARED) + 1) + "|"]
    for name, row in rows.items():
        cells = [f"{row[k]:.3g} (×{row.get(f'{k}_ratio', float('nan')):.2f})" if k in row else "-" for k in COMPARED]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=default|DIR (repeat; the first is 1.0)")
    parser.add_argument("--n", type=int, default=200, help="held-out inputs per template")
    parser.add_argument("--texts", type=int, default=40, help="held-out sentences for perplexity")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--cold-start", action="store_true", help="start each model twice (first-start time too)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compress" / "prune.json")
    args = parser.parse_args()
    texts = [e.text for e in load_dataset("rotten-tomatoes", "test")[-args.texts :]]
    rows = {}
    for spec in args.model:
        name, _, where = spec.partition("=")
        model = resolve_model(where, MODELS_DIR)
        rows[name] = measure(name, model, args, texts) | {"pruning": pruning(model)}
    rows = with_ratios(rows)
    print(table(rows), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "commit": commit, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
