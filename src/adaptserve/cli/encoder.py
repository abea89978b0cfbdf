"""`adaptserve train --method encoder` and `adaptserve distill --student encoder`: the
command-line side of `training/encoder.py`. The encoder (`--encoder-model`, default the
bundled `minilm`) is fine-tuned in this process on labelled rows (`--data`/`--dataset`)
or on a teacher template's probabilities, and written to `--out` (default
encoders/NAME) as a `BertForSequenceClassification` folder with its manifest. It is
served by adding it to the server's settings as a `models:` entry of role classify
(each fine-tuned encoder is its own engine: a restart, not a push); what to add is
printed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from adaptserve.cli import head
from adaptserve.engine_settings import MINILM
from adaptserve.errors import ConfigurationError


def flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--method encoder")
    group.add_argument(
        "--encoder-model", default=MINILM, help=f'the encoder fine-tuned: a folder, or "{MINILM}" (the default)'
    )
    group.add_argument("--max-length", type=int, default=128, help="tokens per text; longer ones are cut")
    group.add_argument(
        "--teacher-temperature",
        type=float,
        default=1.0,
        help="distill: the teacher's probabilities to the power 1/T before the student learns them "
        "(below 1: sharper, the same top label)",
    )


def out_folder(args: argparse.Namespace) -> Path:
    if not args.name and args.out is None:
        raise ConfigurationError("--method encoder needs --name (or --out)")
    return Path(args.out or Path("encoders") / args.name)


def run(args: argparse.Namespace, spec: Any) -> int:
    """`train --method encoder`: labelled rows → a fine-tuned classifier folder. Its
    labels: the template's (`--template`), else the data's, sorted."""
    import numpy as np

    from adaptserve.training.encoder import hard_targets

    out = out_folder(args)
    texts, labels = head.examples(args)
    names = [label.name for label in spec.labels] if spec is not None else sorted(set(labels))
    targets = hard_targets(labels, names)
    source = str(args.data or args.dataset) + (f" (first {args.limit})" if args.limit else "")
    facts = _fine_tune(args, texts, np.asarray(targets), names, out, source, balanced=True)
    return _finish(args, out, facts)


def distilled(args: argparse.Namespace, spec: Any, answers: list[dict[str, Any]]) -> int:
    """`distill --student encoder`: the teacher's answers (its probabilities; a chat
    teacher's label as certain) → an encoder that learns them."""
    import numpy as np

    from adaptserve.templates.render import embedding_text
    from adaptserve.training.encoder import sharpened

    names = [label.name for label in spec.labels]
    named = [a for a in answers if a.get("label") is not None]
    if len(named) < len(answers):
        print(
            f"adaptserve: {len(answers) - len(named)} teacher answers named no label and were left out", file=sys.stderr
        )
    targets = np.array([head.teacher_target(a, names) for a in named], dtype=np.float64).reshape(len(named), len(names))
    targets = sharpened(targets, args.teacher_temperature)
    texts = [embedding_text(spec, a["inputs"]) for a in named]
    out = out_folder(args)
    teacher = {"name": args.teacher_template or args.teacher_model, "temperature": args.teacher_temperature}
    facts = _fine_tune(args, texts, targets, names, out, str(args.inputs), balanced=False, teacher=teacher)
    return _finish(args, out, facts)


def _fine_tune(
    args: argparse.Namespace, texts: list[str], targets: Any, names: list[str], out: Path, source: str, **how: Any
) -> dict[str, Any]:
    from adaptserve.default_model import resolve_encoder
    from adaptserve.training.encoder import EncoderConfig, fine_tune, write_manifest

    base = resolve_encoder(args.encoder_model)
    config = EncoderConfig(
        epochs=args.epochs,
        learning_rate=args.lr or 5e-5,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=args.max_steps,
        seed=args.seed,
        threads=args.threads,
    )
    teacher = how.pop("teacher", None)
    facts = fine_tune(base, texts, targets, names, out, config, **how)
    if teacher is not None:
        facts["teacher"] = teacher
    write_manifest(out, base=base, texts=texts, source=source, config=config, **facts)
    return facts


def _finish(args: argparse.Namespace, out: Path, facts: dict[str, Any]) -> int:
    name = args.name or out.name
    entry = {"name": name, "role": "classify", "path": str(out.resolve())}
    print(json.dumps({"encoder": name, "folder": str(out), **facts, "models_entry": entry}, indent=2))
    print(
        f"adaptserve: serve it by adding {json.dumps(entry)} to the settings' models: (its own engine; a restart), "
        f"then apply a classify template with encoder: {name}",
        file=sys.stderr,
    )
    return 0
