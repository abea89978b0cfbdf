"""A finished `fit` run's figures: one row per candidate (its own held-out accuracy
with a 95% interval, macro-F1, ECE, inner score, speed) and fit's nested picks
(`nested.py`) with their per-example answers, for the decision and the report."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from adaptserve.evaluation import metrics
from adaptserve.fit import nested
from adaptserve.fit.run import CHEAP
from adaptserve.fit.verdict import accuracy_interval
from adaptserve.templates.calibration import argmax

if TYPE_CHECKING:
    from adaptserve.fit.run import Fit


def rows(fit: Fit) -> list[dict[str, Any]]:
    """Per candidate: metrics over the folds it ran, its accuracy's 95% interval, its
    mean inner score, and the folds where fit's nested selection picked it. Each row is
    that candidate's own held-out estimate; picking the best row would be selection on
    the test folds, so the decision uses `selection` instead."""
    ran = {c: sorted(f for (cc, f) in fit.units if cc == c) for c in fit.config.candidates}
    picked = selection(fit)
    return [_row(fit, c, [fit.units[(c, f)] for f in folds], picked) for c, folds in ran.items() if folds]


def selection(fit: Fit) -> dict[str, dict[str, Any]]:
    """Fit's picks, nested: per outer fold the LLM candidate and the baseline (or the
    distilled head: the cheap side) with the best inner score, their answers on that
    fold's test examples (example index → right), and the candidate each rule picks on
    all the data."""
    gold = [fit.labels.index(g) for g in fit.gold]
    out: dict[str, dict[str, Any]] = {}
    for kind in ("llm", "baseline"):
        names = [c for c in fit.config.candidates if (c in CHEAP) == (kind == "baseline")]
        chosen = nested.picks(fit.units, names, len(fit.folds))
        speeds = [fit.units[(c, f)].get("inputs_per_s", math.nan) for f, c in chosen.items()]
        out[kind] = {
            "final": nested.final(fit.units, names),
            "picks": chosen,
            "correct": nested.pooled(fit.units, chosen, gold),
            "inputs_per_s": _mean(speeds),
        }
    return out


def _row(fit: Fit, candidate: str, units: list[dict[str, Any]], picked: dict[str, dict[str, Any]]) -> dict[str, Any]:
    gold = [fit.gold[i] for u in units for i in u["test"]]
    probs = [p for u in units for p in u["probabilities"]]
    predicted = [fit.labels[argmax(p)] for p in probs]
    m = metrics(fit.labels, gold, predicted, [max(p) for p in probs])
    low, high = accuracy_interval([p == g for p, g in zip(predicted, gold, strict=True)])
    kind = units[0]["kind"]
    return {
        "candidate": candidate,
        "kind": kind,
        "folds": [u["fold"] for u in units],
        "n": m["n"],
        "accuracy": m["accuracy"],
        "accuracy_low": low,
        "accuracy_high": high,
        "macro_f1": m["macro_f1"],
        "ece": m["ece"],
        "inner_accuracy": _mean([nested.inner_score(u) for u in units]),
        "picked_in_folds": sorted(f for f, c in picked[kind]["picks"].items() if c == candidate),
        "inputs_per_s": _mean([u.get("inputs_per_s", math.nan) for u in units]),
        "latency_p50_s": _mean([u.get("latency_p50_s", math.nan) for u in units]),
        "scoring": [u.get("scoring") for u in units],
        "chosen": [u["inner"].get("chosen") for u in units if kind == "baseline"],
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
