"""`adaptserve train --method head`: a classifier head (`heads/artifact.py`) from
labelled texts, their vectors read from a running server's `/v1/embeddings` (the
embedding model the head will be served on, so training and serving see the same
vectors), and class-balanced logistic regression with C chosen by stratified inner
cross-validation (`fit/baselines.py`'s tuned baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adaptserve.errors import ConfigurationError
from adaptserve.fit.baselines import tune_logistic
from adaptserve.heads.artifact import HeadArtifact

EMBED_BATCH = 64  # texts per embeddings request


def train_head(
    vectors: np.ndarray, labels: Sequence[str], embedding_model: str, seed: int = 0
) -> tuple[HeadArtifact, dict[str, Any]]:
    """Fit on `vectors` (one row per text) and their `labels`. → the head (its labels
    sorted, as scikit-learn orders classes) and what was chosen."""
    if len(set(labels)) < 2:
        raise ConfigurationError("a head needs examples of at least two labels")
    if len(vectors) != len(labels):
        raise ConfigurationError(f"{len(vectors)} vectors for {len(labels)} labels")
    inner, chosen, model = tune_logistic(vectors, list(labels), seed)
    classes = [str(c) for c in model.classes_]
    head = HeadArtifact.build(classes, embedding_model, int(vectors.shape[1]), model.coef_, model.intercept_)
    return head, {"examples": len(labels), "labels": classes, "inner_accuracy": inner, **chosen}


def embed(client: Any, model: str, texts: Sequence[str], batch: int = EMBED_BATCH) -> np.ndarray:
    """`texts`' vectors from a server (`client`: an `openai.OpenAI`, such as
    `adaptserve_client.Client(...).openai`), as float64 rows in order."""
    rows: list[list[float]] = []
    for start in range(0, len(texts), batch):
        answer = client.embeddings.create(model=model, input=list(texts[start : start + batch]))
        rows += [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
    return np.asarray(rows, dtype=np.float64)
