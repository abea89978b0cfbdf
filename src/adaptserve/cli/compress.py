"""`adaptserve compress prune`: the command-line side of `compress/` (torch and
transformers are imported only when the command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from adaptserve.config import Settings


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("compress", help="make the base model smaller (structural pruning)")
    verbs = group.add_subparsers(dest="verb", required=True)
    prune = verbs.add_parser(
        "prune", parents=[common], help="drop the least important decoder layers, then heal by distillation"
    )
    prune.add_argument("--model", default="default", help='"default" or a model folder')
    size = prune.add_mutually_exclusive_group(required=True)
    size.add_argument("--drop", type=int, help="decoder layers to drop")
    size.add_argument("--target-layers", type=int, help="decoder layers to keep")
    prune.add_argument("--heal-steps", type=int, default=0, help="distillation steps after pruning (default 0)")
    prune.add_argument(
        "--calibration",
        "--text",
        default="rotten-tomatoes",
        help="scoring and healing text: a bundled dataset's training split, or a text/JSONL file",
    )
    prune.add_argument("--samples", type=int, default=256, help="calibration texts the layers are scored on")
    prune.add_argument("--max-length", type=int, default=256, help="tokens per text or healing window")
    prune.add_argument("--batch-size", type=int, default=4, help="healing windows per step")
    prune.add_argument("--lr", type=float, default=5e-5, help="healing learning rate (constant, AdamW)")
    prune.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    prune.add_argument("--save-every", type=int, default=50, help="healing steps between checkpoints")
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--threads", type=int, help="torch threads (default: every CPU)")
    prune.add_argument("--out", type=Path, help="output folder (default: MODELS_DIR/<model>-pruned<N>)")
    prune.set_defaults(run=run_prune)


def run_prune(args: argparse.Namespace, settings: Settings) -> int:
    from adaptserve.compress import surgery
    from adaptserve.compress.heal import HealConfig
    from adaptserve.compress.prune import Job, drop_count, run
    from adaptserve.default_model import resolve_model

    model_dir = resolve_model(args.model, settings.resolved_models_dir)
    drop = drop_count(surgery.layer_count(model_dir), args.drop, args.target_layers)
    out = args.out or settings.resolved_models_dir / f"{model_dir.name}-pruned{drop}"
    heal = HealConfig(
        args.heal_steps, args.batch_size, args.max_length, args.lr, args.temperature, args.save_every, args.seed
    )
    job = Job(model_dir, out, drop, args.calibration, args.samples, heal, args.threads)
    try:
        folder, manifest = run(job)
    except KeyboardInterrupt:
        print("adaptserve: interrupted", flush=True)
        return 130
    _summary(folder, manifest)
    return 0


def _summary(folder: Path, m: dict[str, Any]) -> None:
    scores, ppl = m["layer_scores"], m["perplexity"]
    print(
        f"adaptserve: layer importance {min(scores):.4f} to {max(scores):.4f} over {m['source']['layers']} layers "
        f"({m['calibration']['texts']} texts); dropped {', '.join(map(str, m['dropped']))}"
    )
    ratio = m["size_bytes"] / m["source_size_bytes"]
    print(
        f"adaptserve: wrote {folder} ({m['kept']} layers, {m['size_bytes'] / 1e6:.0f} MB, ×{ratio:.2f} of the source)"
    )
    line = f"source {ppl['source']:.2f}, pruned {ppl['pruned']:.2f}"
    if ppl["healed"] is not None:
        line += f", healed {ppl['healed']:.2f}"
    held = m["held_out"]
    print(f"adaptserve: held-out perplexity ({held['texts']} {held['dataset']} test texts): {line}")
    if m["heal"]:
        heal, kd = m["heal"], m["heal"]["kd_loss"]
        per_step = f"{heal['seconds_per_step']:.1f} s/step" if heal["seconds_per_step"] else "no new steps"
        print(f"adaptserve: healed {heal['steps']} steps ({per_step}); KD loss {kd['before']:.4f} -> {kd['after']:.4f}")
        checkpoint = sum(p.stat().st_size for p in (folder / ".heal").iterdir()) / 1e6
        print(
            f"adaptserve: the healing checkpoint ({checkpoint:.0f} MB) is kept in {folder / '.heal'}: "
            "the same command with more --heal-steps continues from it; delete it when done"
        )
    print(f"adaptserve: serve it with: adaptserve serve --model {folder}")
    print(
        "adaptserve: adapters trained on the unpruned base do not transfer (their layers are gone or renumbered): "
        "train them again on this model"
    )
