"""`adaptserve train --method head` and `adaptserve distill --method head`: the
command-line side of `training/head.py`. The texts (labelled, or the teacher's) are
embedded through the running server (`--embedding-model`, with a tenant's API key),
the head is written to `--out` (JSON, what `adaptserve heads push`
and `PUT /admin/heads/{name}` take) and pushed as the tenant's (`--tenant`) or a global
head (`--global`), active at once: a template naming it serves it with no restart."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from adaptserve_client import AdaptserveError, Client

from adaptserve.cli import remote
from adaptserve.config import Settings
from adaptserve.errors import ConfigurationError


def flags(train: argparse.ArgumentParser) -> None:
    head = train.add_argument_group("--method head")
    head.add_argument("--embedding-model", help="the embedding model of the server the head is trained on and serves")
    head.add_argument(
        "--embed-key", help="an API key for the embeddings (default: ADAPTSERVE_API_KEY or DATA_DIR/api_key)"
    )
    head.add_argument("--text-field", default="text", help="the rows' text field (default text)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`train --method head`: labelled rows → a head, written and pushed."""
    from adaptserve.training.head import train_head

    who = check(args, settings)
    texts, labels = examples(args)
    vectors = _vectors(args, settings, texts)
    head, facts = train_head(vectors, labels, args.embedding_model, args.seed)
    return _finish(args, settings, who, head, facts)


def distilled(
    args: argparse.Namespace, settings: Settings, who: remote.PushAs, spec: Any, answers: list[dict[str, Any]]
) -> int:
    """`distill --method head`: the teacher's answers (its probabilities; a chat
    teacher's label as certain) → a head that learns them, written and pushed as `who`
    (`check`, before the teacher was asked)."""
    import numpy as np

    from adaptserve.templates.render import embedding_text
    from adaptserve.training.head import distill_head

    labels = [label.name for label in spec.labels]
    named = [a for a in answers if a.get("label") is not None]
    if len(named) < len(answers):
        left = len(answers) - len(named)
        print(f"adaptserve: {left} teacher answers named no label and were left out", file=sys.stderr)
    targets = np.array([teacher_target(a, labels) for a in named], dtype=np.float64).reshape(len(named), len(labels))
    vectors = _vectors(args, settings, [embedding_text(spec, a["inputs"]) for a in named])
    head, facts = distill_head(vectors, targets, labels, args.embedding_model, args.seed)
    return _finish(args, settings, who, head, facts | {"teacher": args.teacher_template or args.teacher_model})


def teacher_target(answer: dict[str, Any], labels: list[str]) -> list[float]:
    if answer.get("scores"):
        try:
            return [float(answer["scores"][label]) for label in labels]
        except KeyError as exc:
            raise ConfigurationError(f"the teacher's labels differ from the student's: {exc}") from None
    if answer["label"] not in labels:
        raise ConfigurationError(f"the teacher answered {answer['label']!r}, not one of the student's labels {labels}")
    return [float(label == answer["label"]) for label in labels]


def check(args: argparse.Namespace, settings: Settings) -> remote.PushAs:
    """The flags a head needs and whose it will be, refused before any work is done."""
    if not args.embedding_model or not args.name:
        raise ConfigurationError("--method head needs --embedding-model and --name")
    return remote.push_as(
        args.tenant, args.tenant_admin_key, lambda: remote.admin_key(settings, args.admin_key), args.global_
    )


def _vectors(args: argparse.Namespace, settings: Settings, texts: list[str]) -> Any:
    import openai  # the client's `.openai` needs it; the CLI does not otherwise

    from adaptserve.training.head import embed

    url = remote.server_url(args, settings)
    with Client(url, remote.tenant_key(settings, args.embed_key), timeout=600) as client:
        try:
            return embed(client.openai, args.embedding_model, texts)
        except openai.APIError as exc:  # the SDK's (connection errors too): said, not raised
            raise ConfigurationError(f"the server at {url} gave no embeddings: {exc}") from exc


def _finish(args: argparse.Namespace, settings: Settings, who: remote.PushAs, head: Any, facts: dict[str, Any]) -> int:
    """Write the head to --out (default heads/NAME.json), push it as `who` (--tenant's
    or global), active at once, and print what was chosen."""
    out = args.out or Path("heads") / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(head.document()))
    pushed = _push(remote.server_url(args, settings), who, args.name, head.document())
    print(json.dumps({"head": args.name, "file": str(out), **facts, **pushed}, indent=2))
    return 0


def examples(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from adaptserve.datasets import load_dataset, read_rows

    if args.data is not None:
        rows = read_rows(args.data)
    else:
        rows = [{"text": e.text, "label": e.label} for e in load_dataset(args.dataset, "train")]
    rows = rows[: args.limit or None]
    kept = [r for r in rows if isinstance(r.get(args.text_field), str) and r.get("label") is not None]
    if len(kept) < len(rows):
        print(
            f"adaptserve: {len(rows) - len(kept)} rows without {args.text_field} or label were left out",
            file=sys.stderr,
        )
    if not kept:
        raise ConfigurationError(f"no rows with a {args.text_field!r} text and a label")
    return [r[args.text_field] for r in kept], [str(r["label"]) for r in kept]


def _push(url: str, who: remote.PushAs, name: str, head: dict[str, Any]) -> dict[str, Any]:
    with remote.acting_as(url, who) as key, Client(url, key, timeout=600) as client:
        try:
            stored = client.admin.heads.push(name, head)
            if stored["active_version"] != stored["version"]:
                client.admin.heads.activate(name, stored["version"])
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server at {url} refused the head: {exc}") from exc
    return {"version": stored["version"], "tenant": who.tenant}
