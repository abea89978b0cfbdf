"""fit's `distilled-head` candidate, offered when the user gives unlabelled inputs
(`fit --unlabelled FILE`): a classifier head over all-MiniLM-L6-v2 vectors that learns
an LLM teacher's label probabilities on those inputs (`training/head.py`'s
`distill_head`, what `distill --student head` trains), and, where the inner score
says it helps, the labelled training examples' gold labels too.

Per outer fold, nothing of the fold's test part reaches a choice:
- The teacher is the fit's starting template, zero-shot, with the calibration and
  temperature the `zero-shot` candidate chose on the fold's training part (its unit,
  reused; run here where zero-shot is not a candidate). The unlabelled inputs' raw
  log-probabilities do not depend on the fold: the server's template cache scores them
  once per run; each fold applies its own calibration to them.
- The student's C is chosen by agreement with the teacher's top label over inner folds
  of the unlabelled inputs (no labels at all). Two students are compared on the
  fold's labelled training part: `teacher` (the unlabelled inputs only, scored on the
  whole training part, none of which it learnt) and `teacher+gold` (the unlabelled
  inputs and the training part's gold labels as one-hot rows, scored by stratified
  inner folds of the training part). The better inner accuracy is kept (ties: teacher
  only, what `distill` does) and is the unit's inner score for `nested.py`.
- It is then scored on the fold's test examples; inputs/s is the head's prediction on
  vectors already made, measured as the MiniLM baseline's is.

It sits on the cheap side of the verdict with the baselines (`kind: baseline`): a head
served on the embedding model, at the MiniLM baseline's cost. Where it is fit's
choice, `fit/head.py` serves it: `refit` trains it again on every labelled example and
every unlabelled one, over the server's vectors.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptserve.fit import baselines
from adaptserve.fit.candidates import content_free
from adaptserve.heads.artifact import HeadArtifact
from adaptserve.templates.calibration import Scoring
from adaptserve.training.head import distill_head, soft_head

if TYPE_CHECKING:
    from adaptserve.fit.run import Fit

NAME = "distilled-head"
TEACHER = "zero-shot"
STUDENTS = ("teacher", "teacher+gold")


class Vectors:
    """all-MiniLM-L6-v2 vectors in process (the MiniLM baseline's), made once per run:
    the labelled texts' and the unlabelled inputs'."""

    def __init__(self) -> None:
        self._encoder: Any = None
        self._made: dict[str, np.ndarray] = {}

    def of(self, key: str, texts: Sequence[str]) -> np.ndarray:
        if key not in self._made:
            if self._encoder is None:
                self._encoder = baselines.Embeddings()
            self._made[key] = np.asarray(self._encoder.encode(list(texts)), dtype=np.float64)
        return self._made[key]


def unit(fit: Fit, fold: int) -> dict[str, Any]:
    """The candidate on outer fold `fold`: taught on its training part, scored on its test part."""
    train, test = fit.folds.train(fold), fit.folds.test(fold)
    targets, teacher = teach(fit, fold)
    labelled = fit.vectors.of("labelled", [e.text for e in fit.examples])
    unlabelled = fit.vectors.of("unlabelled", fit.config.unlabelled)
    gold = np.asarray([fit.labels.index(fit.gold[i]) for i in train])
    head, facts = student(labelled[train], gold, unlabelled, targets, fit.labels, fit.config.seed * 1000 + fold)
    started = time.perf_counter()
    probabilities = head.probabilities(labelled[test])
    predict_s = time.perf_counter() - started
    inner = {"accuracy": facts["inner_accuracy"], "n": len(train), "indices": train}
    inner["chosen"] = {"C": facts["C"], "students": facts["students"]}
    return {
        "kind": "baseline",
        "test": test,
        "probabilities": probabilities.tolist(),
        "inputs_per_s": len(test) / predict_s if predict_s else float("nan"),
        "inner": inner,
        "students": facts["scores"],
        "teacher": teacher,
        "unlabelled": len(fit.config.unlabelled),
    }


def teach(fit: Fit, fold: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The teacher's probabilities for every unlabelled input (one row each, in
    `fit.labels` order): the starting template with the zero-shot candidate's scoring
    for `fold` (chosen on its training part; for the refit, on every example)."""
    zero = fit.teacher_unit(fold)
    scoring = Scoring(zero["scoring"]["calibration"], zero["scoring"]["temperature"])
    doc = fit.config.document
    rows = fit.server.score(doc, fit.as_inputs(fit.config.unlabelled)).rows
    biases = {
        "content-free": fit.server.score(doc, content_free(doc)).rows,
        "training": fit.server.score(doc, fit.inputs(zero["calibration_inputs"])).rows,
    }
    targets = np.asarray(scoring.apply(rows, biases), dtype=np.float64)
    shares = Counter(fit.labels[int(i)] for i in targets.argmax(axis=1))
    return targets, {"scoring": zero["scoring"], "chosen_on": len(zero["selection"]), "labels": dict(shares)}


def student(
    x_train: np.ndarray,
    gold: np.ndarray,
    x_unlabelled: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    seed: int,
    embedding_model: str = baselines.EMBEDDING_PACKAGE,
) -> tuple[HeadArtifact, dict[str, Any]]:
    """The student with the better inner accuracy on the labelled part (`x_train`,
    `gold` label indices): the teacher's inputs only, or with the gold rows added.
    → the head (trained on all it may learn from) and what was chosen."""
    head, facts = distill_head(x_unlabelled, targets, labels, embedding_model, seed)
    c = float(facts["C"])  # by agreement with the teacher: no label chose it
    scores = {"teacher": float((head.probabilities(x_train).argmax(axis=1) == gold).mean())}
    scores["teacher+gold"] = _with_gold(x_train, gold, x_unlabelled, targets, labels, c, seed)
    best = max(STUDENTS, key=lambda s: (scores[s], -STUDENTS.index(s)))  # ties: teacher only
    if best == "teacher+gold":
        x, y = _joined(x_unlabelled, targets, x_train, gold, len(labels))
        head = soft_head(x, y, labels, embedding_model, c)
    return head, {"C": c, "students": best, "scores": scores, "inner_accuracy": scores[best]}


def _with_gold(
    x_train: np.ndarray,
    gold: np.ndarray,
    x_unlabelled: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    c: float,
    seed: int,
) -> float:
    """The teacher+gold student's mean accuracy over stratified inner folds of the
    labelled part (each inner test part's gold left out of its training); NaN where a
    label has fewer than two examples."""
    from sklearn.model_selection import StratifiedKFold

    k = min(baselines.INNER_FOLDS, min(Counter(gold.tolist()).values()))
    if k < 2:
        return float("nan")
    scores = []
    for a, b in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x_train, gold):
        x, y = _joined(x_unlabelled, targets, x_train[a], gold[a], len(labels))
        head = soft_head(x, y, labels, "inner", c)
        scores.append(float((head.probabilities(x_train[b]).argmax(axis=1) == gold[b]).mean()))
    return float(np.mean(scores))


def _joined(
    x_unlabelled: np.ndarray, targets: np.ndarray, x_gold: np.ndarray, gold: np.ndarray, labels: int
) -> tuple[np.ndarray, np.ndarray]:
    return np.vstack([x_unlabelled, x_gold]), np.vstack([targets, np.eye(labels)[gold]])


def refit(
    fit: Fit, labelled: np.ndarray, embed: Callable[[Sequence[str]], np.ndarray], embedding_model: str
) -> tuple[HeadArtifact, dict[str, Any]]:
    """The served student: taught by the zero-shot teacher with its scoring chosen on
    every labelled example, on every unlabelled input's vector from the server
    (`embed`), the students compared on every labelled example (`labelled`: their
    vectors from the same server)."""
    from adaptserve.fit.run import ALL

    targets, teacher = teach(fit, ALL)
    unlabelled = embed(fit.config.unlabelled)
    gold = np.asarray([fit.labels.index(g) for g in fit.gold])
    head, facts = student(labelled, gold, unlabelled, targets, fit.labels, fit.config.seed, embedding_model)
    return head, facts | {"teacher": teacher, "unlabelled": len(fit.config.unlabelled)}
