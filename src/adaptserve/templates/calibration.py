"""Label log-probabilities → probabilities: the temperature, contextual calibration,
and the choices between them made on labelled data.

Pure arithmetic, shared by the server (`classify.py`), `train`, `eval` and `fit`, so
every figure the tools print is computed the way the server answers (and
`with_scoring`, which writes a choice into the template document that serves it):

    probabilities = softmax(logprobs / temperature)            (over the labels)
    calibrated    = probabilities / bias, renormalised          (when calibration is on)

where `bias` is the mean of `probabilities` over the template's calibration inputs
(Zhao et al., 2021; by default the content-free "N/A", "", "[MASK]").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TEMPERATURES = tuple(round(0.25 * 1.25**k, 4) for k in range(21))  # 0.25 .. ~21.7


def normalise(logprobs: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Log-scores over the labels → probabilities over the labels (a stable softmax)."""
    scaled = [lp / temperature for lp in logprobs]
    top = max(scaled)
    weights = [math.exp(s - top) for s in scaled]
    total = sum(weights)
    return [w / total for w in weights]


def calibrate(probs: Sequence[float], bias: Sequence[float]) -> list[float]:
    """Divide out the calibration inputs' label distribution and renormalise."""
    scaled = [p / max(b, 1e-12) for p, b in zip(probs, bias, strict=True)]
    total = sum(scaled)
    return [s / total for s in scaled]


def bias_of(rows: Sequence[Sequence[float]], temperature: float = 1.0) -> list[float]:
    """The mean label distribution of the calibration inputs' log-probabilities."""
    dists = [normalise(row, temperature) for row in rows]
    return [sum(col) / len(dists) for col in zip(*dists, strict=True)]


def probabilities(
    logprobs: Sequence[float], temperature: float = 1.0, bias: Sequence[float] | None = None
) -> list[float]:
    """What the server answers for one input."""
    probs = normalise(logprobs, temperature)
    return calibrate(probs, bias) if bias is not None else probs


def log_loss(rows: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    """Mean negative log-probability of the gold label (rows are probabilities)."""
    return -sum(math.log(max(row[g], 1e-12)) for row, g in zip(rows, gold, strict=True)) / len(gold)


def accuracy(rows: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    return sum(argmax(row) == g for row, g in zip(rows, gold, strict=True)) / len(gold)


def argmax(row: Sequence[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


def fit_temperature(
    logprobs: Sequence[Sequence[float]], gold: Sequence[int], bias_rows: Sequence[Sequence[float]] | None = None
) -> float:
    """The temperature (on a fixed grid) with the lowest log-loss on labelled rows;
    with `bias_rows` (calibration inputs' log-probabilities) the bias is recomputed at
    each temperature, as the server would."""
    best, best_loss = 1.0, math.inf
    for t in TEMPERATURES:
        bias = bias_of(bias_rows, t) if bias_rows is not None else None
        loss = log_loss([probabilities(row, t, bias) for row in logprobs], gold)
        if loss < best_loss - 1e-9:
            best, best_loss = t, loss
    return best


@dataclass(frozen=True)
class Scoring:
    """How a template turns log-probabilities into probabilities: `calibration` names
    the calibration inputs whose bias is divided out (None: no calibration)."""

    calibration: str | None
    temperature: float = 1.0

    def apply(
        self, logprobs: Sequence[Sequence[float]], biases: Mapping[str, Sequence[Sequence[float]]]
    ) -> list[list[float]]:
        bias = bias_of(biases[self.calibration], self.temperature) if self.calibration else None
        return [probabilities(row, self.temperature, bias) for row in logprobs]


def choose(
    logprobs: Sequence[Sequence[float]], gold: Sequence[int], biases: Mapping[str, Sequence[Sequence[float]]]
) -> tuple[Scoring, dict[str, dict[str, float]]]:
    """No calibration, or calibration on one of the named sets of calibration inputs,
    each with its fitted temperature, chosen on labelled rows. Calibration must help:
    it is chosen only when it is at least as accurate as none and either more accurate
    or lower in log-loss; among those that help, the lowest log-loss wins.
    → the choice, and each option's accuracy and log-loss on the rows."""
    options = [Scoring(None, fit_temperature(logprobs, gold))]
    options += [Scoring(name, fit_temperature(logprobs, gold, rows)) for name, rows in biases.items() if rows]
    seen: dict[str, dict[str, float]] = {}
    for option in options:
        probs = option.apply(logprobs, biases)
        seen[option.calibration or "none"] = {
            "accuracy": accuracy(probs, gold),
            "log_loss": log_loss(probs, gold),
            "temperature": option.temperature,
        }
    off = seen["none"]
    best = options[0]
    for option in options[1:]:
        on = seen[option.calibration or "none"]
        helps = on["accuracy"] >= off["accuracy"] and (
            on["log_loss"] < off["log_loss"] or on["accuracy"] > off["accuracy"]
        )
        if helps and (best is options[0] or on["log_loss"] < seen[best.calibration or "none"]["log_loss"]):
            best = option
    return best, seen


def with_scoring(
    doc: dict[str, Any], calibration: str | None, inputs: Sequence[dict[str, Any]], temperature: float
) -> dict[str, Any]:
    """A template document as it will be served with the scoring chosen on labelled
    data (by `fit` and `train`): calibration off (None), on the content-free inputs
    ("content-free"), or on `inputs` (any other name: real inputs); the temperature
    where it is not 1."""
    out = {k: v for k, v in doc.items() if k not in ("calibration_inputs", "temperature")}
    out["calibration"] = calibration is not None
    if calibration not in (None, "content-free"):
        out["calibration_inputs"] = list(inputs)
    if temperature != 1.0:
        out["temperature"] = temperature
    return out
