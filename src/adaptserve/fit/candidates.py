"""The LLM candidates of `fit`, each scored through the running server exactly as it
would be served: a template document per candidate and fold (zero-shot, few-shot
with examples from the fold's training part, or zero-shot on a LoRA adapter trained
on that part), applied under a content-addressed name for the tenant, then called
with `explain` on the fold's test inputs, on labelled selection inputs (where its
calibration and temperature are chosen), and on the calibration inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptserve_client import AdaptserveError, Client

from adaptserve.errors import ConfigurationError
from adaptserve.evaluation import Evaluator, percentile
from adaptserve.templates.render import content_free_inputs
from adaptserve.templates.spec import TemplateSpec

FIT_PREFIX = "fit-"


def zero_shot(labels: list[str], field_name: str = "text") -> dict[str, Any]:
    """The template `fit` starts from when the user gives none: the labels as the
    model's answers, said after an answer prefix (where this model says them)."""
    return {
        "name": "fit-task",
        "kind": "classify",
        "instruction": "Which of these labels fits the text best?",
        "inputs": {field_name: {"type": "string", "max_length": 4000}},
        "labels": [{"name": label} for label in labels],
        "answer_prefix": "The label is",
        "calibration": False,
    }


def base_document(spec: TemplateSpec) -> dict[str, Any]:
    """A user's template as the start: its prompt and labels, no calibration (fit
    chooses), no examples (few-shot candidates add their own)."""
    doc = spec.document()
    for key in ("calibration_inputs", "examples", "tenant", "temperature"):
        doc.pop(key, None)
    return doc | {"calibration": False}


def content_name(doc: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return f"{FIT_PREFIX}{digest[:16]}"


@dataclass
class Scored:
    """A template's answers: raw label log-probabilities per input, by input."""

    rows: list[list[float]]
    seconds: float
    fresh: int  # inputs scored by this call (the others were scored before)
    latencies: list[float] = field(default_factory=list)


class Server:
    """The running server as `fit` uses it: the admin API (templates, adapters,
    aliases) and one tenant's template calls."""

    def __init__(self, url: str, key: str, admin_key: str, tenant: str, batch: int = 16) -> None:
        self.url, self.key, self.admin_key, self.tenant, self.batch = url.rstrip("/"), key, admin_key, tenant, batch
        self._cache: dict[tuple[str, str], list[float]] = {}  # (template, input json) → log-probabilities
        self.applied: set[str] = set()  # the candidates' templates, deleted by `clean`

    def _admin(self) -> Client:
        return Client(self.url, self.admin_key, timeout=600)

    def apply(self, doc: dict[str, Any], name: str) -> None:
        try:
            with self._admin() as client:
                client.admin.templates.apply(name, doc | {"name": name}, tenant=self.tenant)
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server refused template {name}: {exc}") from exc

    def delete(self, name: str) -> None:
        try:
            with self._admin() as client:
                client.admin.templates.delete(name, tenant=self.tenant)
        except AdaptserveError:
            pass  # already gone

    def push(self, folder: Path, name: str) -> str:
        """Upload an adapter, activate it and point the tenant's alias `name` at it."""
        try:
            with self._admin() as client:
                stored = client.admin.adapters.push(folder, name)
                if stored["active_version"] != stored["version"]:
                    client.admin.adapters.activate(name, stored["version"])
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server refused adapter {name}: {exc}") from exc
        self.alias(name, name)
        return name

    def push_head(self, name: str, head: dict[str, Any]) -> dict[str, Any]:
        """Upload a classifier head as the tenant's (a new version, active)."""
        try:
            with self._admin() as client:
                stored: dict[str, Any] = client.admin.heads.push(name, head)
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server refused head {name}: {exc}") from exc
        return stored

    def push_report(self, name: str, report: dict[str, Any]) -> None:
        """Store the run's report on the server as the tenant's (the console shows it)."""
        try:
            with self._admin() as client:
                client.admin.fit_reports.push(name, report)
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server refused fit report {name}: {exc}") from exc

    def embed(self, model: str, texts: list[str]) -> Any:
        """`texts`' vectors from the server's embedding model `model`, as the tenant."""
        import openai

        from adaptserve.training.head import embed

        with Client(self.url, self.key, timeout=600) as client:
            try:
                return embed(client.openai, model, texts)
            except openai.APIError as exc:  # the SDK's, connection errors too
                raise ConfigurationError(f"the server gave no embeddings from {model}: {exc}") from exc

    def alias(self, alias: str, adapter: str) -> None:
        try:
            with self._admin() as client:
                client.admin.aliases.set(self.tenant, alias, adapter=adapter)
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server refused alias {alias}: {exc}") from exc

    def clean(self) -> None:
        """Delete the candidates' templates."""
        for name in sorted(self.applied):
            self.delete(name)

    def drop_adapters(self, adapters: list[str]) -> None:
        """Delete adapters and their aliases (their folders stay in fit's output)."""
        for adapter in adapters:
            self.drop_adapter(adapter)

    def drop_adapter(self, name: str) -> None:
        try:
            with self._admin() as client:
                client.admin.aliases.delete(self.tenant, name)
                client.admin.adapters.delete(name)
        except AdaptserveError:
            pass

    def score(self, doc: dict[str, Any], inputs: list[dict[str, Any]]) -> Scored:
        """Apply `doc` under its content name and score the inputs not scored before."""
        name = content_name(doc)
        todo = [i for i in inputs if (name, _key(i)) not in self._cache]
        seconds = 0.0
        latencies: list[float] = []
        if todo:
            self.apply(doc, name)
            self.applied.add(name)
            started = time.perf_counter()
            evaluator = Evaluator(self.url, self.key, name, batch=self.batch)
            answers, latencies = asyncio.run(evaluator.explained(todo))
            labels = [label["name"] for label in doc["labels"]]
            for item, answer in zip(todo, answers, strict=True):
                logprobs = (answer.explain or {})["logprobs"]
                self._cache[(name, _key(item))] = [float(logprobs[label]) for label in labels]
            seconds = time.perf_counter() - started
        rows = [self._cache[(name, _key(i))] for i in inputs]
        return Scored(rows, seconds, len(todo), latencies)

    def verify(self, name: str, inputs: list[dict[str, Any]]) -> list[dict[str, float]]:
        """The served template's answers (no explain): what a caller gets."""
        evaluator = Evaluator(self.url, self.key, name, batch=self.batch)
        answers, _ = asyncio.run(evaluator.explained(inputs))
        return [a.scores for a in answers]


def _key(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True)


def content_free(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return content_free_inputs(TemplateSpec.model_validate(doc))


def throughput(scored: Scored) -> dict[str, float]:
    return {
        "inputs_per_s": scored.fresh / scored.seconds if scored.fresh else float("nan"),
        "latency_p50_s": percentile(scored.latencies, 50),
    }
