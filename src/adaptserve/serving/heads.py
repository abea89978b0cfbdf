"""Classifier heads below HTTP: a head template's call answered from one embeddings
call (every input, and every attribution variant, in one batch) on the head's
embedding model and the head's weights applied with numpy, in the gateway; and the
checks of a head (its embedding model is served, its dimension fits, its weights are
those the head was trained on: `embedding_digest`) and of a template
that names one (the head exists for the template's owner, with the template's labels).

The call is admitted, bounded and metered as `/v1/embeddings` is (`Pipeline.metered`,
under the embedding model's name and the template's), so a tenant's quotas and usage
count it. The head is read per call (its active version, or as the alias pinned it):
activating or rolling back a version changes the next call, never one in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from adaptserve.errors import InvalidRequestError
from adaptserve.heads.artifact import HeadArtifact
from adaptserve.heads.catalog import GLOBAL, HeadCatalog, HeadNotFoundError, ResolvedHead
from adaptserve.serving.embeddings import EmbeddingService
from adaptserve.serving.engines import Engine, Engines
from adaptserve.serving.pipeline import Pipeline
from adaptserve.templates.attribution import AttributionPlan
from adaptserve.templates.registry import TemplateVersion
from adaptserve.templates.render import pooled_batch
from adaptserve.templates.spec import TemplateSpec
from adaptserve.tenancy.auth import Principal


class HeadMismatchError(InvalidRequestError):
    code = "head_mismatch"


class HeadService:
    def __init__(
        self,
        pipeline: Pipeline,
        engines: Engines,
        embeddings: EmbeddingService,
        heads: HeadCatalog,
        uid_of: Callable[[str], str | None],
    ) -> None:
        self._pipeline, self._engines, self._embeddings, self._heads = pipeline, engines, embeddings, heads
        self._uid_of = uid_of  # a tenant's name → its uid (None: no such tenant)

    async def classify(
        self,
        principal: Principal,
        template: TemplateVersion,
        inputs: list[dict[str, Any]],
        explain: bool,
        plans: Sequence[AttributionPlan] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """→ one result per input, in order (the shape of an LLM template's), and the
        call's usage; with `plans`, each input's variants are in the same batch."""
        spec = template.spec
        assert spec.head is not None
        head = await asyncio.to_thread(self._heads.resolve, principal.uid, spec.head)
        _columns(spec, head)  # labels that are not the head's: refused before the engine is asked
        engine = await self._engine(principal.tenant, head)
        groups, texts, param = pooled_batch(spec, inputs, plans)
        reserve = self._pipeline.bounds.check_inputs(texts, engine.entry.max_model_len, param)
        async with self._pipeline.metered(
            principal, engine.name, reserve, label="template", template=template.name
        ) as call:
            raw = await self._embeddings.vectors(engine, call, texts)
            call.status = 200
        vectors = _matrix(raw, head)
        usage = {"prompt_tokens": call.prompt_tokens, "completion_tokens": 0, "total_tokens": call.prompt_tokens}
        return _results(spec, template.version, head, vectors, groups, explain, plans, usage), usage

    async def _engine(self, tenant: str, head: ResolvedHead) -> Engine:
        """The head's embedding model, if the tenant may call it and its weights are
        still those the head was trained on."""
        model = head.artifact.embedding_model
        engine = self._engines.find(tenant, model)
        if engine is None or engine.entry.role != "embed":
            raise HeadMismatchError(
                f"head {head.name} runs on the embedding model {model}, which this tenant may not call",
                param="head",
            )
        _same_weights(head.artifact, await engine.digest(), "head")
        return engine

    async def check_head(self, artifact: HeadArtifact, tenant: str | None) -> HeadArtifact:
        """Refuse (400) a head whose embedding model is not an embedding model of
        `models:` its owner may call (`tenant`; None: a global head, any), whose dim is
        not that model's (when the model can say it), or whose `embedding_digest` is not
        that model's weights; → the head, stamped with the model's digest when its upload
        gave none. A model the owner may not call is refused as one that does not exist."""
        name = artifact.embedding_model
        engine = self._engines.get(name) if tenant is None else self._engines.find(tenant, name)
        if engine is None or engine.entry.role != "embed":
            raise HeadMismatchError(
                f"embedding_model {artifact.embedding_model} is not an embedding model of this server's models:",
                param="embedding_model",
            )
        dim = await self._embeddings.dimension(engine)
        if dim is not None and dim != artifact.dim:
            raise HeadMismatchError(
                f"the head is over {artifact.dim}-dimensional vectors; {engine.name}'s are {dim}-dimensional",
                param="dim",
            )
        served = await engine.digest()
        _same_weights(artifact, served, "embedding_digest")
        return artifact if artifact.embedding_digest else artifact.stamped(served)

    async def check_template(self, spec: TemplateSpec) -> None:
        """Refuse (400) a head template whose head its owner cannot use, or whose labels
        are not the head's (the same names, in any order)."""
        if spec.head is None:
            return
        uid = GLOBAL
        if spec.tenant is not None:
            found = await asyncio.to_thread(self._uid_of, spec.tenant)
            uid = found or GLOBAL
        try:
            head = await asyncio.to_thread(self._heads.resolve, uid, spec.head)
        except HeadNotFoundError as exc:  # the template's field, not a missing URL
            raise HeadMismatchError(f"head {spec.head} does not exist for this template's owner", param="head") from exc
        _columns(spec, head)


def _results(
    spec: TemplateSpec,
    version: int,
    head: ResolvedHead,
    vectors: np.ndarray,
    groups: list[list[dict[str, Any]]],
    explain: bool,
    plans: Sequence[AttributionPlan] | None,
    usage: dict[str, int],
) -> list[dict[str, Any]]:
    """One classify result per input (its rows: the input, then its variants)."""
    columns = _columns(spec, head)
    probs = head.artifact.probabilities(vectors)[:, columns]
    logits = head.artifact.logits(vectors)[:, columns]
    labels = [label.name for label in spec.labels]
    results, at = [], 0
    for n, group in enumerate(groups):
        mine, first, at = probs[at : at + len(group)].tolist(), at, at + len(group)
        best = int(np.argmax(mine[0]))
        result: dict[str, Any] = {
            "label": labels[best],
            "scores": dict(zip(labels, mine[0], strict=True)),
            "calibrated": False,
            "version": version,
            "head": {"name": head.name, "version": head.version, "embedding_model": head.artifact.embedding_model},
        }
        if len(groups) == 1:  # the engine reports one total: a batch's is the batch's answer's only
            result["usage"] = usage
        if explain:
            result["explain"] = {
                "logits": dict(zip(labels, logits[first].tolist(), strict=True)),
                "temperature": head.artifact.temperature,
                "scoring": "head",
            }
            if plans:
                result["explain"]["attributions"] = plans[n].explain(mine, labels)
        results.append(result)
    return results


def _columns(spec: TemplateSpec, head: ResolvedHead) -> list[int]:
    """The head's column of each of the template's labels (400 unless the same names)."""
    names = [label.name for label in spec.labels]
    if sorted(names) != sorted(head.artifact.labels):
        raise HeadMismatchError(
            f"template {spec.name}'s labels ({', '.join(names)}) are not head {head.name}'s "
            f"({', '.join(head.artifact.labels)}, version {head.version})",
            param="labels",
        )
    return [head.artifact.labels.index(name) for name in names]


def _same_weights(head: HeadArtifact, served: str | None, param: str) -> None:
    """400 when both digests are known and differ: the head's vectors came from other
    weights than the engine's (an unknown digest on either side is not checked)."""
    if head.embedding_digest and served and head.embedding_digest != served:
        raise HeadMismatchError(
            f"the head was trained on {head.embedding_model} weights with SHA-256 {head.embedding_digest[:12]}…; "
            f"the served {head.embedding_model}'s are {served[:12]}…",
            param=param,
        )


def _matrix(raw: list[bytes], head: ResolvedHead) -> np.ndarray:
    """The engine's float32 vectors as one float64 matrix, each of the head's dim."""
    sizes = {len(v) // 4 for v in raw}
    if sizes != {head.artifact.dim}:
        raise HeadMismatchError(
            f"head {head.name} is over {head.artifact.dim}-dimensional vectors; "
            f"{head.artifact.embedding_model} answered {', '.join(map(str, sorted(sizes)))}-dimensional ones",
            param="head",
        )
    return np.frombuffer(b"".join(raw), dtype="<f4").reshape(len(raw), head.artifact.dim).astype(np.float64)
