"""Distillation: a teacher labels unlabelled inputs; a student adapter learns them
behind a short prompt.

The teacher is one of our templates at a server (a few-shot, calibrated classify
template gives label probabilities, so the student learns soft targets) or any
OpenAI-compatible chat model (its answer is matched to a label: hard targets; or
taken as the output of a generate template). Teacher calls are concurrent and
bounded, retried on 429/503 with back-off (honouring `Retry-After`: adaptserve_client), and every
answer is appended to `teacher.jsonl` in the output folder as it arrives, so an
interrupted run resumes without asking the teacher again. Unless the tenant's PII
policy is `off`, what that file keeps is scrubbed (`<EMAIL_ADDRESS>` for an address):
training uses the caller's inputs, and a resumed run learns a generate teacher's
answers with those placeholders.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from adaptserve_client import AdaptserveError, APIStatusError, AsyncClient, Classification, Client, NotFoundError

from adaptserve.errors import ConfigurationError
from adaptserve.templates.spec import TemplateSpec
from adaptserve.training.task import Item, Task

log = logging.getLogger(__name__)

CACHE = "teacher.jsonl"


@dataclass(frozen=True)
class Teacher:
    url: str
    key: str
    template: str | None = None  # one of our templates: POST /v1/templates/{name}
    model: str | None = None  # else a chat model, asked with the student's prompt
    concurrency: int = 4
    batch: int = 16  # inputs per template call
    attempts: int = 6
    timeout: float = 300.0

    def __post_init__(self) -> None:
        if (self.template is None) == (self.model is None):
            raise ConfigurationError("a teacher is a template or a chat model: give exactly one")


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


Scrub = Callable[[str], str]


class TeacherCache:
    """The teacher's answers, one JSON line per input, appended as they arrive (their
    text scrubbed by `scrub`; this run keeps them as they came)."""

    def __init__(self, path: Path, scrub: Scrub | None = None) -> None:
        self.path, self._scrub = path, scrub
        self.answers: dict[str, dict[str, Any]] = {}
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # cut short by a kill: new answers start a new line
                with path.open("a", encoding="utf-8") as f:
                    f.write("\n")
            for line in text.split("\n"):  # not splitlines: U+2028 is text
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill: asked again
                    continue
                self.answers[record["key"]] = record

    def add(self, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(self._scrubbed(record), ensure_ascii=False) + "\n")
                self.answers[record["key"]] = record

    def _scrubbed(self, value: Any) -> Any:
        if self._scrub is None:
            return value
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, dict):
            return {k: v if k in ("key", "label", "scores") else self._scrubbed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrubbed(v) for v in value]
        return value


def teacher_scrub(teacher: Teacher) -> Scrub | None:
    """How the cache scrubs text: as the teacher tenant's PII policy says (`GET /v1/pii`;
    a teacher that is not an adaptserve server: the default, `log`)."""
    from adaptserve.pii.detector import Detector
    from adaptserve.pii.masking import scrubbed
    from adaptserve.pii.policy import DEFAULT_POLICY, PiiPolicy

    try:
        with Client(teacher.url, teacher.key, timeout=30) as client:
            policy = PiiPolicy.model_validate(client.pii())
    except NotFoundError:
        policy = DEFAULT_POLICY
    if not policy.detects:
        return None
    detector = Detector()
    return lambda text: scrubbed(text, detector.find(text, policy))


async def label(
    teacher: Teacher,
    spec: TemplateSpec,
    inputs: list[dict[str, Any]],
    cache: TeacherCache,
    progress: Callable[[int], Any] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[dict[str, Any]]:
    """The teacher's answer for every input (cached ones are not asked again)."""
    keys = [text_key(json.dumps(i, sort_keys=True)) for i in inputs]
    todo = [(k, i) for k, i in dict(zip(keys, inputs, strict=True)).items() if k not in cache.answers]
    if progress:
        progress(len(inputs) - len(todo))
    size = teacher.batch if teacher.template else 1
    chunks = [todo[s : s + size] for s in range(0, len(todo), size)]
    gate = asyncio.Semaphore(teacher.concurrency)
    client = AsyncClient(
        teacher.url, teacher.key, timeout=teacher.timeout, max_retries=teacher.attempts - 1, transport=transport
    )
    async with client:

        async def one(chunk: list[tuple[str, dict[str, Any]]]) -> None:
            async with gate:
                answers = await _ask(client, teacher, spec, [i for _, i in chunk])
            cache.add([{"key": k, "inputs": i, **a} for (k, i), a in zip(chunk, answers, strict=True)])
            if progress:
                progress(len(chunk))

        try:
            await asyncio.gather(*(one(c) for c in chunks))
        except AdaptserveError as exc:
            raise ConfigurationError(f"the teacher at {teacher.url} failed: {exc}") from exc
    return [{**cache.answers[k], "inputs": i} for k, i in zip(keys, inputs, strict=True)]


async def _ask(
    client: AsyncClient, teacher: Teacher, spec: TemplateSpec, inputs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if teacher.template is not None:
        results = await client.templates.run_batch(teacher.template, inputs)
        failed = [r for r in results if isinstance(r, APIStatusError)]
        if failed:
            raise ConfigurationError(f"the teacher template failed on a batch: {failed[0]}")
        return [_answer(r) for r in results]
    import openai

    from adaptserve.templates.render import Renderer

    messages = Renderer().messages(spec, inputs[0])
    try:
        completion = await client.openai.chat.completions.create(
            model=teacher.model, messages=messages, temperature=0, max_tokens=spec.sampling.max_tokens
        )
    except openai.APIError as exc:
        raise ConfigurationError(f"the teacher at {teacher.url} failed: {exc}") from exc
    reply = completion.choices[0].message.content or ""
    if spec.kind == "generate":
        return [{"label": None, "scores": None, "output": reply}]
    return [{"label": match_label(spec, reply), "scores": None, "output": reply}]


def _answer(result: Any) -> dict[str, Any]:
    if isinstance(result, Classification):
        return {"label": result.label, "scores": result.scores, "output": None}
    return {"label": None, "scores": None, "output": result.output if result.output is not None else result.text}


def match_label(spec: TemplateSpec, text: str) -> str | None:
    """The label named first in a free-text reply, if any: its answer ("a number"),
    the answer's last word ("number") or its name ("NUM"), as whole words."""
    hits = []
    for candidate in spec.labels:
        for form in {candidate.text, candidate.text.split()[-1], candidate.name}:
            found = re.search(rf"\b{re.escape(form)}\b", text, flags=re.IGNORECASE)
            if found:
                hits.append((found.start(), candidate.name))
    return min(hits)[1] if hits else None


def student_items(task: Task, answers: list[dict[str, Any]]) -> tuple[list[Item], int]:
    """Teacher answers → the student's items (soft targets where the teacher gave
    probabilities); → (items, answers that named no label and were skipped)."""
    spec = task.spec
    assert spec is not None
    items, skipped = [], 0
    for answer in answers:
        if spec.kind == "generate":
            items.append(task.generate_item(answer["inputs"], answer["output"]))
            continue
        if answer.get("label") is None:
            skipped += 1
            continue
        soft = None
        if answer.get("scores"):
            try:
                soft = tuple(float(answer["scores"][x.name]) for x in spec.labels)
            except KeyError as exc:
                raise ConfigurationError(f"the teacher's labels differ from the student's: {exc}") from None
        items.append(task.classify_item(answer["inputs"], task.label_index(answer["label"]), soft))
    return items, skipped


def read_inputs(path: Path, spec: TemplateSpec) -> list[dict[str, Any]]:
    """Unlabelled inputs: one text per line (for a one-input template) or JSONL objects."""
    names = list(spec.inputs)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n")):  # U+2028 and the like are text
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            out.append({names[0]: row["text"]} if len(names) == 1 and "text" in row else row)
        elif len(names) == 1:
            out.append({names[0]: line.strip()})
        else:
            raise ConfigurationError(f"{path} line {n + 1}: a template with several inputs needs JSONL")
    return out
