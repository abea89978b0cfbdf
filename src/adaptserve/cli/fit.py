"""`adaptserve fit --data FILE [--template T] [--budget MIN]`: the command-line side
of `fit/`: labelled data in; a table, a report, a paired verdict, and the choice
served: the best LLM candidate where it beats the baselines (or with --serve-llm),
the MiniLM baseline as a classifier head where it is the choice.

Everything fit does on the server it does as `--tenant` (its admin key, given or made
for the run: `remote.push_as`), so the adapters it pushes are the tenant's, not global,
unless told `--global`; and the tenant's PII policy, read through the admin API, is
applied to the data before anything is trained, stored or served (`pii/data.py`)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptserve.cli import remote
from adaptserve.config import Settings
from adaptserve.errors import ConfigurationError


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from adaptserve.fit.run import CANDIDATES, OFFERED

    parser = commands.add_parser(
        "fit",
        parents=[common, remote.flags(tenant_key=True, admin_key=True)],
        help="find and serve the best classifier for labelled data",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a JSONL or CSV file of labelled texts")
    source.add_argument("--dataset", help="a bundled dataset's train split")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--template", help="the starting template: a file, or a name in --templates-dir")
    parser.add_argument("--templates-dir", type=Path, default=Path("templates"))
    parser.add_argument("--input", help="the template input the text goes to (default: its only one)")
    parser.add_argument("--budget", type=float, default=10.0, help="minutes (LoRA runs only while it lasts)")
    parser.add_argument(
        "--candidates",
        help=f"comma-separated, of {','.join(CANDIDATES + OFFERED)} (default: all but {','.join(OFFERED)}, "
        "and distilled-head with --unlabelled)",
    )
    parser.add_argument(
        "--unlabelled",
        type=Path,
        help="unlabelled inputs (text lines or JSONL, as distill reads them): the distilled-head candidate",
    )
    parser.add_argument("--lora-steps", type=int, help="optimizer steps of each LoRA run (default: the search's)")
    parser.add_argument("--folds", type=int, help="default: 4 up to 1,000 examples, else one 80/20 split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default", help="the base model LoRA trains on (the served one)")
    parser.add_argument("--name", help="the served template's name (default: the template's, or fit-DATA)")
    parser.add_argument("--tenant", default="default", help="whose template, aliases and adapters these are")
    remote.owner_flags(parser)
    parser.add_argument("--no-serve", action="store_true", help="measure only")
    parser.add_argument(
        "--embedding-model",
        default="minilm",
        help="the server's embedding model a winning minilm baseline is served on, as a head (default minilm)",
    )
    parser.add_argument(
        "--serve-llm",
        action="store_true",
        help="serve the best LLM candidate even where a baseline wins or ties",
    )
    parser.add_argument("--out", type=Path, help="results and state (default fit-results/NAME); re-run to resume")
    parser.set_defaults(run=run_fit)


def run_fit(args: argparse.Namespace, settings: Settings) -> int:
    _candidates(args)  # refused before the server is asked anything
    url = remote.server_url(args, settings)
    who = remote.push_as(
        args.tenant, args.tenant_admin_key, lambda: remote.admin_key(settings, args.admin_key), args.global_
    )
    with remote.acting_as(url, who) as admin_key:
        return _run(args, settings, url, admin_key)


def _run(args: argparse.Namespace, settings: Settings, url: str, admin_key: str) -> int:
    from tqdm import tqdm

    from adaptserve.fit import results
    from adaptserve.fit.report import decide, pick_rows, table, write

    fit, name, pii_note = _fit(args, settings, url, admin_key)
    resumed = fit.resume()
    started = time.perf_counter()
    plan = fit.plan()
    try:
        with tqdm(total=len(plan), initial=resumed, desc="fit", unit="run") as bar:
            notes = fit.run(lambda what: (bar.set_postfix_str(what), bar.update(1)))
        rows, selection = results.rows(fit), results.selection(fit)
        decision, picks = decide(selection), pick_rows(selection)
        manifest = {
            "data": {
                "source": fit.config.source,
                "examples": len(fit.examples),
                "sha256": fit.digest,
                "labels": fit.labels,
                "pii": pii_note,
            },
            "folds": [len(t) for t in fit.folds.tests],
            "budget_s": fit.config.budget_s,
            "seconds": time.perf_counter() - started,
            "resumed_units": resumed,
            "notes": notes,
            "candidates": rows,
            "picks": picks,
            "selection": selection,  # per fold the nested picks; per example index whether each pick was right
            "decision": decision.__dict__,
        }
        write(fit.config.out, manifest)  # before serving: a failure there keeps the measurements
        if not args.no_serve:
            manifest |= _serve(fit, decision, name, args)
    finally:
        fit.server.clean()
    print("\n" + table(rows, picks) + "\n\n" + decision.verdict)
    for note in notes:
        print(f"note: {note}")
    paths = write(fit.config.out, manifest)
    if "served" in manifest:
        _push_report(fit, name, manifest)
    _say_served(manifest)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _say_served(manifest: dict[str, Any]) -> None:
    """What was served (or why nothing was), and a winning encoder's way to be served."""
    if "served" in manifest:
        s = manifest["served"]
        how = f"{s['candidate']} as a head on {s['model']}" if "head" in s else s["candidate"]
        print(
            f"served: template {s['template']} ({how}, refit on all {s['refit_on']} examples) for "
            f"tenant {s['tenant']}; the label fit measured on {s['agreement'] * 100:.0f}% of "
            f"{s['checked_inputs']} inputs through it"
        )
    elif "not_served" in manifest:
        print(f"not served: {manifest['not_served']}")
    if "encoder" in manifest:
        won = manifest["encoder"]
        print(f"the encoder won: {won['folder']}; serve it with the models: entry {json.dumps(won['models_entry'])}")
        print(f"and the template {json.dumps(won['template'])} (its own engine: a restart)")


def _push_report(fit: Any, name: str, manifest: dict[str, Any]) -> None:
    """The report, stored on the server beside what was served (its admin API and the
    console show it); a refusal is a note: what was served and written stays."""
    from adaptserve.fit.report import server_report

    try:
        fit.server.push_report(name, server_report(manifest, fit.config.out / "report.png"))
    except ConfigurationError as exc:
        print(f"note: {exc}")


def _serve(fit: Any, decision: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """{"served": …} for what fit chose, where it can serve it: the LLM candidate (or
    with --serve-llm), or the MiniLM baseline as a classifier head on the server's
    embedding model; else {"not_served": why}, or nothing when nothing was chosen."""
    from adaptserve.fit.head import HEADS, serve_head

    if decision.llm and (decision.choice == "llm" or args.serve_llm):
        return {"served": fit.serve(decision.llm, name)}
    if decision.choice is None:
        return {"not_served": f"fit made no choice ({decision.verdict}): nothing was served"}
    if decision.choice != "baseline":
        return {}
    anyway = f" (--serve-llm serves {decision.llm} anyway)" if decision.llm else ""
    if decision.baseline == "encoder":
        return _serve_encoder(fit, decision, name, args)
    if decision.baseline not in HEADS:
        why = f"the baseline ({decision.baseline}) is the choice, and fit serves only {' or '.join(HEADS)} (as a head)"
        return {"not_served": f"{why}: nothing was served{anyway}"}
    try:
        return {"served": serve_head(fit, name, args.embedding_model, decision.baseline)}
    except ConfigurationError as exc:  # e.g. the server has no such embedding model
        why = f"the baseline ({decision.baseline}) is the choice, and serving it failed"
        return {"not_served": f"{why}: {exc}{anyway}"}


def _serve_encoder(fit: Any, decision: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The encoder is the choice: refit on every example into OUT/encoder/ (served by a
    `models:` entry and a restart, which the report prints), and meanwhile the best
    candidate fit can serve (a head, or the LLM pick: the best inner score) is served."""
    from adaptserve.fit import encoder, nested
    from adaptserve.fit.head import HEADS, serve_head

    won = {"encoder": encoder.refit(fit, name)}
    servable = [c for c in HEADS if c in fit.config.candidates] + ([decision.llm] if decision.llm else [])
    best = nested.final(fit.units, servable)
    if best is None:
        return won | {"not_served": "nothing fit can serve without a restart ran"}
    try:
        served = serve_head(fit, name, args.embedding_model, best) if best in HEADS else fit.serve(best, name)
    except ConfigurationError as exc:
        return won | {"not_served": f"serving {best} meanwhile failed: {exc}"}
    return won | {"served": served}


def _fit(args: argparse.Namespace, settings: Settings, url: str, admin_key: str) -> tuple[Any, str, str | None]:
    """The run the arguments describe (the data as the tenant's PII policy lets fit keep
    it), the served template's name, and what was masked."""
    from adaptserve.db import check_name
    from adaptserve.default_model import resolve_model
    from adaptserve.errors import InvalidRequestError
    from adaptserve.fit.candidates import Server
    from adaptserve.fit.run import Fit, FitConfig, default_candidates

    notes: list[str] = []
    examples, source = _examples(args, lambda found: _scrubbed(found, url, admin_key, args.tenant, notes))
    document, field = _document(args, sorted({e.label for e in examples}))
    name = args.name or (document["name"] if args.template else f"fit-{_stem(source)}")
    try:
        check_name(name, "a template name")
        check_name(f"{name}-lora", "a model alias")
    except InvalidRequestError as exc:
        raise ConfigurationError(f"--name {name!r}: {exc.message}") from None
    unlabelled = _unlabelled(
        args, document, field, examples, lambda found: _scrubbed(found, url, admin_key, args.tenant, notes)
    )
    candidates = _candidates(args) or default_candidates(bool(unlabelled))
    server = Server(url, remote.tenant_key(settings, args.key), admin_key, args.tenant)
    base = resolve_model(args.model, settings.resolved_models_dir) if any("lora" in c for c in candidates) else None
    config = FitConfig(
        out=args.out or Path("fit-results") / name,
        document=document,
        field=field,
        budget_s=args.budget * 60,
        candidates=candidates,
        folds=args.folds,
        seed=args.seed,
        base_model=base,
        lora_steps=args.lora_steps,
        source=source,
        unlabelled=unlabelled,
    )
    return Fit(examples, config, server), name, (notes[0] if notes else None)


def _candidates(args: argparse.Namespace) -> tuple[str, ...] | None:
    """--candidates, checked (None: not given)."""
    from adaptserve.fit.run import CANDIDATES, OFFERED

    if not args.candidates:
        return None
    candidates = tuple(c.strip() for c in args.candidates.split(","))
    if unknown := sorted(set(candidates) - set(CANDIDATES + OFFERED)):
        raise ConfigurationError(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES + OFFERED)}")
    if "distilled-head" in candidates and args.unlabelled is None:
        raise ConfigurationError("the distilled-head candidate needs unlabelled inputs: --unlabelled FILE")
    return candidates


def _unlabelled(
    args: argparse.Namespace, document: dict, field: str, examples: list, keep: Callable[[list], list]
) -> tuple[str, ...]:
    """--unlabelled's texts (read as `distill` reads its inputs) as the tenant's PII
    policy lets fit keep them; repeats, and near-copies of a labelled text (`normalise`),
    left out."""
    from adaptserve.datasets import Example
    from adaptserve.fit.folds import normalise
    from adaptserve.templates.spec import TemplateSpec
    from adaptserve.training.distill import read_inputs

    if args.unlabelled is None:
        return ()
    if not args.unlabelled.is_file():
        raise ConfigurationError(f"--unlabelled {args.unlabelled}: no such file")
    rows = read_inputs(args.unlabelled, TemplateSpec.model_validate(document))
    texts = [row[field] for row in rows if isinstance(row.get(field), str)]
    if len(texts) < len(rows):
        print(f"adaptserve: {len(rows) - len(texts)} unlabelled rows without {field!r} left out", file=sys.stderr)
    texts = [e.text for e in keep([Example(text, "") for text in texts])]
    seen = {normalise(e.text) for e in examples}
    kept = []
    for text in texts:
        if normalise(text) not in seen:
            seen.add(normalise(text))
            kept.append(text)
    if len(kept) < len(texts):
        left = len(texts) - len(kept)
        print(f"adaptserve: {left} unlabelled texts repeat a labelled or an earlier one: left out", file=sys.stderr)
    if len(kept) < 2:
        raise ConfigurationError(f"--unlabelled {args.unlabelled}: fewer than 2 usable texts")
    return tuple(kept)


def _scrubbed(examples: list, url: str, admin_key: str, tenant: str, notes: list[str]) -> list:
    """The examples under `tenant`'s PII policy (read with the admin key); what was
    masked is printed and noted."""
    from adaptserve.datasets import Example
    from adaptserve.pii.data import scrub_texts
    from adaptserve.pii.detector import Detector

    texts, note = scrub_texts([e.text for e in examples], remote.pii_policy(url, admin_key, tenant), Detector())
    if note:
        print(f"adaptserve: {note}", file=sys.stderr)
        notes.append(note)
    return [Example(text, e.label) for text, e in zip(texts, examples, strict=True)]


def _examples(args: argparse.Namespace, keep: Callable[[list], list]) -> tuple[list, str]:
    """The labelled examples as `keep` lets fit use them (the tenant's PII policy),
    before repeated texts are left out (masking can make two texts one)."""
    from adaptserve.datasets import load_dataset, read_labelled

    if args.data is not None:
        examples, source = read_labelled(args.data, args.text_field, args.label_field), str(args.data)
    else:
        examples, source = load_dataset(args.dataset, "train"), f"{args.dataset}:train"
    if args.limit:
        examples, source = examples[: args.limit], f"{source} (first {args.limit})"
    examples = keep(examples)
    first: dict[str, Any] = {}
    for example in examples:
        first.setdefault(example.text, example)  # the first of each text, in order: in one fold only
    unique = list(first.values())
    if len(unique) < len(examples):
        print(f"adaptserve: {len(examples) - len(unique)} repeated texts left out", file=sys.stderr)
        examples = unique
    if len({e.label for e in examples}) < 2:
        raise ConfigurationError("fit needs examples of at least two labels")
    if len(examples) < 16:
        raise ConfigurationError("fit needs at least 16 labelled examples")
    return examples, source


def _document(args: argparse.Namespace, labels: list[str]) -> tuple[dict, str]:
    from adaptserve.cli.adapt import load_template
    from adaptserve.errors import InvalidRequestError
    from adaptserve.fit.candidates import base_document, zero_shot
    from adaptserve.templates.spec import parse_document

    spec = load_template(args)
    if spec is None:
        document, field = zero_shot(labels), "text"
    else:
        if spec.kind != "classify":
            raise ConfigurationError(f"template {spec.name} is not a classify template")
        names = list(spec.inputs)
        if args.input is None and len(names) != 1:
            raise ConfigurationError(f"template has inputs {names}: say which one gets the text with --input")
        document, field = base_document(spec), args.input or names[0]
    try:
        parse_document(document)  # labels the data brought (e.g. "1" and "10") may not make a template
    except InvalidRequestError as exc:
        raise ConfigurationError(f"the starting template: {exc.message}") from None
    return document, field


def _stem(source: str) -> str:
    stem = Path(source.split(" ")[0].split(":")[0]).stem
    cleaned = re.sub(r"[^a-z0-9_]+", "-", stem.lower()).strip("-_")
    return cleaned[:40] or "data"
