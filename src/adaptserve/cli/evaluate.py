"""`adaptserve eval TEMPLATE`: the command-line side of `evaluation.py` (and, with
`--explain N`, of `explain_page.py`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from adaptserve_client import Template

from adaptserve.cli import remote
from adaptserve.config import Settings
from adaptserve.datasets import DATASETS

if TYPE_CHECKING:
    from adaptserve.evaluation import Evaluator, Predictions


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "eval",
        parents=[common, remote.flags(tenant_key=True, admin_key=False)],
        help="measure a classify template on labelled data",
    )
    parser.add_argument("template")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a JSONL or CSV file of labelled texts")
    source.add_argument("--dataset", choices=list(DATASETS), help="a bundled dataset")
    parser.add_argument("--split", default="test", help="of --dataset: test (default) or train")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--input", help="the template input the text goes to (default: its only one)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--batch", type=int, default=16, help="inputs per request")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    parser.add_argument("--out", type=Path, default=Path("eval-results"), help="folder for the JSON and PNG")
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also score TF-IDF and sentence-embedding classifiers (logistic regression) on the same examples",
    )
    parser.add_argument(
        "--baseline-data",
        type=Path,
        help="their training file (default: --dataset's train split, or cross-validation on --data)",
    )
    parser.add_argument("--baseline-limit", type=int, default=128, help="training examples for them (default 128)")
    parser.add_argument(
        "--explain",
        type=int,
        metavar="N",
        default=0,
        help="also write an HTML page of the N most and N least confident inputs with their attributions",
    )
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from adaptserve.datasets import load_dataset, read_labelled
    from adaptserve.evaluation import Evaluator, against_baselines, report, table, write

    url = remote.server_url(args, settings)
    key = remote.tenant_key(settings, args.key)
    if args.data is not None:
        examples = read_labelled(args.data, args.text_field, args.label_field)
    else:
        examples = load_dataset(args.dataset, args.split)
    examples = examples[: args.limit] if args.limit else examples
    evaluator = Evaluator(url, key, args.template, args.batch, args.concurrency)
    described = evaluator.describe()
    input_field = args.input or _only_input(described)
    started = time.perf_counter()
    with tqdm(total=len(examples), desc=args.template, unit="input") as progress:
        predictions = asyncio.run(evaluator.run(examples, input_field, progress))
    elapsed = time.perf_counter() - started
    source = str(args.data) if args.data else f"{args.dataset}:{args.split}"
    settings_used = {"template": args.template, "version": described.version, "data": source, "url": url}
    settings_used |= {"limit": args.limit, "batch": args.batch, "concurrency": args.concurrency}
    calibrates = bool(described.raw.get("calibration"))  # never for a head or an encoder (false in its summary)
    result = report(predictions, calibrates, elapsed, settings_used)
    if args.baselines:
        result["baselines"] = _baselines(args, examples, described.labels)
        result["verdict"] = against_baselines(predictions, result)
    print(table(result))
    stem = f"{args.template}-{args.data.stem if args.data else f'{args.dataset}-{args.split}'}"
    json_path, png_path = write(result, args.out, stem)
    print(f"\nwrote {json_path} and {png_path}")
    if args.explain > 0:
        print(f"wrote {_explain_page(evaluator, examples, predictions, input_field, args, stem)}")
    return 0


def _explain_page(
    evaluator: Evaluator, examples: list, predictions: Predictions, field: str, args: argparse.Namespace, stem: str
) -> Path:
    """The N most and least confident inputs again, with attributions, as one HTML page."""
    from adaptserve.explain_page import extremes, write_page

    chosen = extremes(predictions.confidence, args.explain)
    inputs = [{field: examples[i].text} for i in chosen]
    answers, _ = asyncio.run(evaluator.explained(inputs, explain="attributions"))
    rows = [(examples[i].text, examples[i].label, a) for i, a in zip(chosen, answers, strict=True)]
    title = f"{args.template}: the {args.explain} most and least confident answers"
    return write_page(args.out / f"{stem}-explained.html", title, field, rows)


def _baselines(args: argparse.Namespace, examples: list, labels: list[str]) -> dict:
    from adaptserve.datasets import load_dataset, read_labelled
    from adaptserve.fit.baselines import on_examples

    if args.baseline_data is not None:
        train = read_labelled(args.baseline_data, args.text_field, args.label_field)[: args.baseline_limit]
    elif args.dataset is not None:
        train = load_dataset(args.dataset, "train")[: args.baseline_limit]
    else:
        train = None  # cross-validated on the evaluated examples themselves
    return on_examples(examples, train, labels)


def _only_input(described: Template) -> str:
    names = list((described.inputs or {})["properties"])
    if len(names) != 1:
        sys.exit(f"adaptserve: template has inputs {names}: say which one gets the text with --input")
    return names[0]
