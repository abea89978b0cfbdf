"""Selection kept apart from reporting: fit's choice among candidates, made the way
nested cross-validation makes it.

Every (candidate, outer fold) unit carries an inner score (`unit["inner"]`): its
accuracy on labelled inputs inside that fold's training part, never its test part:
for a baseline, the mean accuracy of its chosen setting over inner stratified folds;
for an LLM candidate, the accuracy of its chosen calibration and temperature on its
selection inputs (held out of an adapter's training, of few-shot prompts). In each
outer fold the candidate with the best inner score is picked (`picks`), and that
pick is scored on the fold's test examples (`pooled`): the accuracy fit reports for
its choice comes from folds that did not choose it. The candidate served is the one
with the best inner score over the folds it ran (`final`): the same rule on all the
data. Picks read `inner` and the speed only; the tests hold that to account.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from adaptserve.templates.calibration import argmax

Units = Mapping[tuple[str, int], Mapping[str, Any]]


def inner_score(unit: Mapping[str, Any]) -> float:
    """The unit's accuracy inside its training part (NaN, e.g. no inner folds: −1)."""
    score = float(unit["inner"]["accuracy"])
    return score if math.isfinite(score) else -1.0


def _speed(unit: Mapping[str, Any]) -> float:
    speed = unit.get("inputs_per_s", math.nan)
    return float(speed) if isinstance(speed, (int, float)) and math.isfinite(speed) else -1.0


def picks(units: Units, candidates: Sequence[str], folds: int) -> dict[int, str]:
    """Per outer fold, the candidate with the best inner score among those that ran it
    (ties: the faster, then the earlier in `candidates`)."""
    out: dict[int, str] = {}
    for fold in range(folds):
        ran = [c for c in candidates if (c, fold) in units]
        if ran:
            out[fold] = max(ran, key=lambda c: (inner_score(units[(c, fold)]), _speed(units[(c, fold)])))
    return out


def pooled(units: Units, chosen: Mapping[int, str], gold: Sequence[int]) -> dict[int, bool]:
    """Example index → whether fold f's pick got it right, over the picks' test folds."""
    out: dict[int, bool] = {}
    for fold, candidate in chosen.items():
        unit = units[(candidate, fold)]
        for i, row in zip(unit["test"], unit["probabilities"], strict=True):
            out[i] = argmax(row) == gold[i]
    return out


def final(units: Units, candidates: Sequence[str]) -> str | None:
    """The candidate with the best mean inner score over the folds it ran (ties: the
    faster): the one fit would serve."""
    ran = {c: [u for (cc, _), u in units.items() if cc == c] for c in candidates}
    ran = {c: us for c, us in ran.items() if us}
    if not ran:
        return None

    def key(c: str) -> tuple[float, float]:
        us = ran[c]
        return (sum(inner_score(u) for u in us) / len(us), sum(_speed(u) for u in us) / len(us))

    return max(ran, key=key)
