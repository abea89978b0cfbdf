"""`adaptserve quantize`: the command-line side of `quantize/`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptserve.config import Settings
from adaptserve.datasets import DATASETS


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from adaptserve.quantize.recipes import SCHEMES

    parser = commands.add_parser(
        "quantize", parents=[common], help="quantize the base model with llm-compressor (own environment)"
    )
    parser.add_argument("--model", default="default", help='"default" or a model folder')
    parser.add_argument("--scheme", required=True, choices=list(SCHEMES))
    parser.add_argument("--group-size", type=int, help="4-bit schemes: weights per scale (default: from the shapes)")
    parser.add_argument(
        "--calibration",
        default="rotten-tomatoes",
        help=f"a text/JSONL file, or a bundled dataset ({', '.join(DATASETS)})",
    )
    parser.add_argument("--samples", type=int, default=128, help="calibration samples")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per calibration sample")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the run")
    parser.add_argument("--out", type=Path, help="output folder (default: MODELS_DIR/<model>-<scheme>)")
    parser.set_defaults(run=run_quantize)


def run_quantize(args: argparse.Namespace, settings: Settings) -> int:
    from adaptserve.default_model import resolve_model
    from adaptserve.quantize.env import Job, run

    model_dir = resolve_model(args.model, settings.resolved_models_dir)
    out = args.out or settings.resolved_models_dir / f"{model_dir.name}-{args.scheme}"
    job = Job(model_dir, args.scheme, out, args.calibration, args.samples, args.max_length, args.group_size)
    job.threads = args.threads
    folder = run(job, settings.data_dir / "envs")
    manifest = json.loads((folder / "manifest.json").read_text())
    ratio = manifest["size_bytes"] / manifest["base_size_bytes"]
    print(f"adaptserve: wrote {folder} ({manifest['size_bytes'] / 1e6:.0f} MB, ×{ratio:.2f} of the base)")
    print(f"adaptserve: sanity: {manifest['sanity']['question']} -> {manifest['sanity']['answer']}")
    print(f"adaptserve: serve it with: adaptserve serve --model {folder}")
    return 0
