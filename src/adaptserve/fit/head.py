"""Serving fit's MiniLM baseline or its distilled head where it is the choice: the same
model (class-balanced logistic regression, C by inner cross-validation; or the student
of the zero-shot teacher, `distilled.refit`, on every unlabelled input too) refit on
every example, over the vectors of the server's embedding model, pushed as the tenant's
classifier head and served by a head template. The head carries the digest of the MiniLM weights fit measured
with, so a server whose embedding model has other weights refuses it (its figures would
not be this model's). Then fold 0's inputs go through that template as any
caller's would and its answers are compared with the head's own on the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptserve.default_model import folder_digest, resolve_encoder
from adaptserve.engine_settings import MINILM
from adaptserve.fit import distilled
from adaptserve.templates.render import embedding_text
from adaptserve.templates.spec import TemplateSpec
from adaptserve.training.head import train_head

if TYPE_CHECKING:
    from adaptserve.fit.run import Fit

SERVABLE = "minilm"  # the baseline a head serves (TF-IDF's features are not an embedding model's)
HEADS = (SERVABLE, distilled.NAME)  # the cheap candidates fit can serve (as heads)


def head_template(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The head template for fit's starting template: its inputs and labels, no prompt."""
    return {
        "name": name,
        "kind": "classify",
        "head": name,
        "inputs": document["inputs"],
        "labels": document["labels"],
    }


def serve_head(fit: Fit, name: str, embedding_model: str, candidate: str = SERVABLE) -> dict[str, Any]:
    """Head `name` (`candidate`, one of `HEADS`) refit on all of `fit`'s examples and
    template `name` serving it, for the fit's tenant. No accuracy: the refit saw every
    input; the folds' figures are its estimate."""
    doc = head_template(fit.config.document, name)
    spec = TemplateSpec.model_validate(doc)

    def embed(texts: Sequence[str]) -> Any:  # as a caller's inputs are: cut to the input's length
        return fit.server.embed(embedding_model, [embedding_text(spec, inputs) for inputs in fit.as_inputs(texts)])

    vectors = embed([e.text for e in fit.examples])
    if candidate == distilled.NAME:
        head, facts = distilled.refit(fit, vectors, embed, embedding_model)
    else:
        head, facts = train_head(vectors, [e.label for e in fit.examples], embedding_model, fit.config.seed)
    measured_on = folder_digest(resolve_encoder(MINILM))  # the weights the folds' figures came from
    stored = fit.server.push_head(name, head.stamped(measured_on).document())
    fit.server.apply(doc, name)
    checked = fit.folds.test(0)
    measured = head.probabilities(np.asarray(vectors)[checked])[:, [head.labels.index(x) for x in fit.labels]]
    check = fit.check_served(name, checked, measured.tolist())
    fit.drop_adapters()  # every LoRA candidate lost
    return {
        "template": name,
        "tenant": fit.server.tenant,
        "candidate": candidate,
        "model": embedding_model,
        "head": {"name": name, "version": stored.get("version")},
        "refit_on": len(fit.examples),
        "chosen": {"C": facts["C"]} if "C" in facts else {},
        "inner_accuracy": facts["inner_accuracy"],
        **{key: facts[key] for key in ("students", "teacher", "unlabelled") if key in facts},
        **check,
    }
