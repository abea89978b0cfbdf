"""Classifier heads (`heads/artifact.py`) trained from texts whose vectors are read
from a running server's `/v1/embeddings` (the embedding model the head will be served
on, so training and serving see the same vectors). `train --method head`: labelled
texts, class-balanced logistic regression with C chosen by stratified inner
cross-validation (`fit/baselines.py`'s tuned baseline). `distill --method head`: a
teacher's label probabilities (soft targets), learnt by the same model's cross-entropy
against them, C chosen by agreement with the teacher in inner folds."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from adaptserve.errors import ConfigurationError
from adaptserve.fit.baselines import C_GRID, INNER_FOLDS, tune_logistic
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


def distill_head(
    vectors: np.ndarray, targets: np.ndarray, labels: Sequence[str], embedding_model: str, seed: int = 0
) -> tuple[HeadArtifact, dict[str, Any]]:
    """A head that learns a teacher's probabilities: `targets` holds one row per text,
    the teacher's probability of each of `labels`. Each text is a training row once per
    label, weighted by that probability (so the loss is the cross-entropy against the
    teacher's distribution; no class weights: the student copies the teacher's priors).
    C: the best agreement with the teacher's top label over stratified inner folds."""
    from sklearn.model_selection import StratifiedKFold

    if targets.shape != (len(vectors), len(labels)) or len(labels) < 2:
        shape = f"{targets.shape} teacher probabilities for {len(vectors)} texts of {len(labels)} labels"
        raise ConfigurationError(f"{shape}: one row per text, one column per label (at least two)")
    if len(vectors) < 2:
        raise ConfigurationError("a head needs the teacher's answers for at least two texts")
    top = targets.argmax(axis=1)
    k = min(INNER_FOLDS, min(Counter(top.tolist()).values()))
    scores: dict[float, float] = {}
    if k >= 2 and len(set(top.tolist())) > 1:
        folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(vectors, top))
        for c in C_GRID:
            agree = [(_soft_fit(vectors[a], targets[a], c).predict(vectors[b]) == top[b]).mean() for a, b in folds]
            scores[c] = float(np.mean(agree))
    c = max(scores, key=scores.__getitem__) if scores else 1.0  # the first of the best: the smaller C
    head = soft_head(vectors, targets, labels, embedding_model, c)
    agreement = float((head.probabilities(vectors).argmax(axis=1) == top).mean())
    facts = {"inputs": len(vectors), "labels": list(labels), "C": c, "inner_agreement": scores.get(c, float("nan"))}
    return head, facts | {"training_agreement": agreement}


def soft_head(
    vectors: np.ndarray, targets: np.ndarray, labels: Sequence[str], embedding_model: str, c: float
) -> HeadArtifact:
    """The head that learns `targets` (one row of probabilities over `labels` per
    text; a gold label is a one-hot row) at regularisation strength `c`."""
    model = _soft_fit(vectors, targets, c)
    return HeadArtifact.build(list(labels), embedding_model, int(vectors.shape[1]), model.coef_, model.intercept_)


def _soft_fit(vectors: np.ndarray, targets: np.ndarray, c: float) -> Any:
    """Logistic regression on every text once per label, weighted by its probability;
    its classes are the label indices (every one present, weighted 0 where none)."""
    from sklearn.linear_model import LogisticRegression

    n, labels = targets.shape
    x = np.tile(vectors, (labels, 1))
    y = np.repeat(np.arange(labels), n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return LogisticRegression(C=c, max_iter=5000).fit(x, y, sample_weight=targets.T.reshape(-1))


def embed(client: Any, model: str, texts: Sequence[str], batch: int = EMBED_BATCH) -> np.ndarray:
    """`texts`' vectors from a server (`client`: an `openai.OpenAI`, such as
    `adaptserve_client.Client(...).openai`), as float64 rows in order."""
    rows: list[list[float]] = []
    for start in range(0, len(texts), batch):
        answer = client.embeddings.create(model=model, input=list(texts[start : start + batch]))
        rows += [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
    return np.asarray(rows, dtype=np.float64)
