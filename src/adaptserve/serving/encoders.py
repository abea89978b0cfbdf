"""Encoder templates below HTTP: a classify template that names a sequence classifier
of `models:` (role classify, `encoder:`) answered from one call to its engine's
`/classify` (every input, and every attribution variant, in one batch): the engine's
logits (asked without its activation) become probabilities with a softmax here, under
the template's labels, which must be the model's class names (any order); and the
check of such a template when it is applied.

The call is admitted, bounded and metered as `/v1/embeddings` is (`Pipeline.metered`,
under the classify model's name and the template's), so a tenant's quotas and usage
count it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adaptserve.errors import InvalidRequestError, UpstreamError
from adaptserve.serving.embeddings import pooling_post
from adaptserve.serving.engines import Engine, Engines
from adaptserve.serving.pipeline import Pipeline
from adaptserve.templates.attribution import AttributionPlan
from adaptserve.templates.registry import TemplateVersion
from adaptserve.templates.render import pooled_batch
from adaptserve.templates.spec import TemplateSpec
from adaptserve.tenancy.auth import Principal


class EncoderMismatchError(InvalidRequestError):
    code = "encoder_mismatch"


class EncoderService:
    def __init__(self, pipeline: Pipeline, engines: Engines) -> None:
        self._pipeline, self._engines = pipeline, engines

    async def classify(
        self,
        principal: Principal,
        template: TemplateVersion,
        inputs: list[dict[str, Any]],
        explain: bool,
        plans: Sequence[AttributionPlan] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """→ one result per input, in order (the shape of an LLM or head template's),
        and the call's usage; with `plans`, each input's variants are in the same batch."""
        spec = template.spec
        engine = self._engine(principal.tenant, spec)
        columns = _columns(spec, engine)  # labels that are not the model's: refused before it is asked
        groups, texts, param = pooled_batch(spec, inputs, plans)
        reserve = self._pipeline.bounds.check_inputs(texts, engine.entry.max_model_len, param)
        async with self._pipeline.metered(
            principal, engine.name, reserve, label="template", template=template.name
        ) as call:
            body = {"model": engine.entry.engine_name, "input": texts, "use_activation": False}
            answer = await pooling_post(self._pipeline.forwarder, engine, call, "/classify", body, param)
            logits = _logits(answer, len(texts), len(columns))
            call.add_usage(answer.get("usage"), accumulate=True)
            call.status = 200
        usage = {"prompt_tokens": call.prompt_tokens, "completion_tokens": 0, "total_tokens": call.prompt_tokens}
        result = _Results(spec, template.version, engine.name, explain, plans, usage)
        return result.of(logits[:, columns], groups), usage

    def _engine(self, tenant: str, spec: TemplateSpec) -> Engine:
        assert spec.encoder is not None
        engine = self._engines.find(tenant, spec.encoder)
        if engine is None or engine.entry.role != "classify":
            raise EncoderMismatchError(
                f"template {spec.name} runs on the classify model {spec.encoder}, which this tenant may not call",
                param="encoder",
            )
        return engine

    def check_template(self, spec: TemplateSpec) -> None:
        """Refuse (400) an encoder template whose encoder is not a classify model of
        `models:` its owner may call (a global template's: any), or whose labels are not
        its class names (the same names, any order). A model the owner may not call is
        refused as one that does not exist: its class names are not shown."""
        name = spec.encoder or ""
        engine = self._engines.get(name) if spec.tenant is None else self._engines.find(spec.tenant, name)
        if engine is None or engine.entry.role != "classify":
            raise EncoderMismatchError(
                f"encoder {spec.encoder} is not a classify model of this server's models:", param="encoder"
            )
        _columns(spec, engine)


class _Results:
    """One classify result per input from its rows of probabilities (the input's,
    then its variants')."""

    def __init__(
        self,
        spec: TemplateSpec,
        version: int,
        model: str,
        explain: bool,
        plans: Sequence[AttributionPlan] | None,
        usage: dict[str, int],
    ) -> None:
        self.labels = [label.name for label in spec.labels]
        self.version, self.model, self.explain, self.plans, self.usage = version, model, explain, plans, usage

    def of(self, logits: np.ndarray, groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        results, at = [], 0
        for n, group in enumerate(groups):
            mine, first, at = probs[at : at + len(group)].tolist(), at, at + len(group)
            result: dict[str, Any] = {
                "label": self.labels[int(np.argmax(mine[0]))],
                "scores": dict(zip(self.labels, mine[0], strict=True)),
                "calibrated": False,
                "version": self.version,
                "encoder": {"model": self.model},
            }
            if len(groups) == 1:  # the engine reports one total: a batch's is the batch's answer's only
                result["usage"] = self.usage
            if self.explain:
                result["explain"] = {
                    "logits": dict(zip(self.labels, logits[first].tolist(), strict=True)),
                    "temperature": 1.0,
                    "scoring": "encoder",
                }
                if self.plans:
                    result["explain"]["attributions"] = self.plans[n].explain(mine, self.labels)
            results.append(result)
        return results


def _columns(spec: TemplateSpec, engine: Engine) -> list[int]:
    """The model's class of each of the template's labels (400 unless the same names)."""
    names = [label.name for label in spec.labels]
    classes = engine.labels or []
    if sorted(names) != sorted(classes):
        raise EncoderMismatchError(
            f"template {spec.name}'s labels ({', '.join(names)}) are not classify model {engine.name}'s "
            f"({', '.join(classes)})",
            param="labels",
        )
    return [classes.index(name) for name in names]


def _logits(answer: dict[str, Any], count: int, classes: int) -> np.ndarray:
    """The engine's scores in input order, one row of `classes` per input, checked."""
    try:
        items = sorted(answer["data"], key=lambda item: int(item["index"]))
        rows = np.array([[float(p) for p in item["probs"]] for item in items], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(f"The model server's classifications are malformed: {exc!r}") from exc
    if rows.shape != (count, classes):
        raise UpstreamError(f"The model server answered {rows.shape} scores for {count} inputs of {classes} classes")
    return rows
