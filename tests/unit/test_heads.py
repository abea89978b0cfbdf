"""Classifier heads: the artifact (arithmetic against scikit-learn's predict_proba,
validation, files), the catalog (versions, activation, rollback, tenants) and the
admin API and a head-backed template on the fake engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaptserve.heads.artifact import HeadArtifact, HeadInvalidError


def _sklearn_head(n_labels: int, seed: int = 0) -> tuple[Any, HeadArtifact, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 16))
    y = rng.integers(0, n_labels, size=120)
    model = LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
    labels = [f"l{c}" for c in model.classes_]
    head = HeadArtifact.build(labels, "enc", 16, model.coef_, model.intercept_)
    return model, head, rng.normal(size=(40, 16))


@pytest.mark.parametrize("n_labels", [2, 3, 5])
def test_head_probabilities_equal_sklearn_predict_proba(n_labels: int) -> None:
    model, head, x = _sklearn_head(n_labels)
    assert head.coef.shape == (n_labels, 16)  # a binary model's one row is kept as two
    np.testing.assert_allclose(head.probabilities(x), model.predict_proba(x), rtol=0, atol=1e-9)


def test_a_temperature_divides_the_logits() -> None:
    _, head, x = _sklearn_head(3)
    hot = HeadArtifact.build(list(head.labels), "enc", 16, head.coef, head.intercept, temperature=2.0)
    logits = head.logits(x) / 2.0
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(hot.probabilities(x), expected, atol=1e-12)


def test_a_head_survives_its_files_and_its_json(tmp_path: Path) -> None:
    model, head, x = _sklearn_head(3)
    head.write(tmp_path / "h")
    again = HeadArtifact.read(tmp_path / "h")
    np.testing.assert_array_equal(again.probabilities(x), head.probabilities(x))
    parsed = HeadArtifact.parse(head.document())
    np.testing.assert_allclose(parsed.probabilities(x), model.predict_proba(x), atol=1e-9)


def _document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "labels": ["a", "b", "c"],
        "embedding_model": "enc",
        "dim": 2,
        "coef": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],
        "intercept": [0.0, 0.0, 0.1],
    }
    return doc | changes


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"coef": [[1.0, 0.0], [0.0, 1.0]]}, "coef"),  # two rows for three labels
        ({"coef": [[1.0, 0.0], [0.0, 1.0], [0.5]]}, "coef"),  # ragged
        ({"dim": 3}, "coef"),  # rows of 2 numbers for dim 3
        ({"intercept": [0.0, 0.0]}, "intercept"),
        ({"labels": ["a", "a", "c"]}, "labels"),
        ({"labels": ["a", "", "c"]}, "labels"),
        ({"labels": ["a"]}, "labels"),
        ({"coef": [[1.0, 0.0], [0.0, 1.0], [1e309, 0.5]]}, "coef"),  # inf
        ({"temperature": 0}, "temperature"),
        ({"format": 2}, "format"),
        ({"bias": 1}, "bias"),
        ({"embedding_model": ""}, "embedding_model"),
    ],
)
def test_a_bad_head_is_refused_naming_the_field(changes: dict[str, Any], param: str) -> None:
    with pytest.raises(HeadInvalidError) as caught:
        HeadArtifact.parse(_document(**changes))
    assert caught.value.status == 400
    assert caught.value.param == param, caught.value.message
