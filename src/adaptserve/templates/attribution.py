"""Attributions of a classify answer: which parts of the input moved the predicted
label's calibrated probability, and by how much.

The input is split into units (words, sentences or whole fields) with character
offsets. Leave-one-out occlusion scores the input once whole and once without each
unit; a unit's contribution is the drop of the predicted label's probability (and of
its margin over the runner-up) when it is removed. Sampled Shapley walks random orders
of the units, adding one at a time to the empty input, and averages each unit's
marginal gain: the contributions add up exactly to p(whole) - p(nothing).

Pure: this module builds the variants to score and reads their probabilities; the
classifier scores them in one engine call.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adaptserve.errors import InvalidRequestError

UNIT_PATTERNS = {"words": re.compile(r"\S+"), "sentences": re.compile(r"[^.!?\s][^.!?]*(?:[.!?]+|$)")}


class AttributionOptions(BaseModel):
    """A call's `attribution` object (with `"explain": "attributions"`)."""

    model_config = ConfigDict(extra="forbid")

    units: Literal["words", "sentences", "fields"] = "words"
    method: Literal["occlusion", "shapley"] = "occlusion"
    permutations: int = Field(8, ge=1, le=64)  # shapley only


@dataclass(frozen=True)
class Unit:
    field: str
    start: int  # character offsets in the field's text
    end: int


@dataclass(frozen=True)
class AttributionPlan:
    """One input's units and the coalitions (sets of units kept) to score; the first
    coalition is every unit (the input as sent)."""

    options: AttributionOptions
    units: tuple[Unit, ...]
    merged: bool  # adjacent units were joined to fit the cap
    coalitions: tuple[frozenset[int], ...]
    orders: tuple[tuple[int, ...], ...]  # shapley: the sampled permutations

    def variants(self, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        return [keep(inputs, self.units, kept) for kept in self.coalitions]

    def explain(self, probs: Sequence[Sequence[float]], labels: Sequence[str]) -> dict[str, Any]:
        """`probs`: the calibrated label probabilities of each coalition, in order."""
        whole = probs[0]
        best = max(range(len(whole)), key=whole.__getitem__)
        runner = max((i for i in range(len(whole)) if i != best), key=whole.__getitem__, default=best)
        at = dict(zip(self.coalitions, probs, strict=True))

        def p(kept: frozenset[int]) -> float:
            return at[kept][best]

        def margin(kept: frozenset[int]) -> float:
            return at[kept][best] - at[kept][runner]

        every = self.coalitions[0]
        out: dict[str, Any] = {
            "method": self.options.method,
            "units": self.options.units,
            "label": labels[best],
            "runner_up": labels[runner],
            "probability": whole[best],
            "merged": self.merged,
            "prompts": len(self.coalitions),
        }
        if self.options.method == "occlusion":
            gains = [p(every) - p(every - {u}) for u in range(len(self.units))]
            margins = [margin(every) - margin(every - {u}) for u in range(len(self.units))]
        else:
            gains, margins = self._shapley(p), self._shapley(margin)
            out["baseline"] = p(frozenset())
            out["permutations"] = len(self.orders)
        out["spans"] = [
            {"field": u.field, "start": u.start, "end": u.end, "contribution": g, "margin": m}
            for u, g, m in zip(self.units, gains, margins, strict=True)
        ]
        return out

    def _shapley(self, value: Any) -> list[float]:
        totals = [0.0] * len(self.units)
        for order in self.orders:
            kept: frozenset[int] = frozenset()
            for u in order:
                grown = kept | {u}
                totals[u] += value(grown) - value(kept)
                kept = grown
        return [t / len(self.orders) for t in totals]


def plan(
    inputs: dict[str, Any], options: AttributionOptions, max_units: int, param: str = "inputs", max_prompts: int = 0
) -> AttributionPlan:
    """Split `inputs` into at most `max_units` units and choose the coalitions to score
    (refused early when even their upper bound is over `max_prompts`). 400 when the
    input has nothing to attribute."""
    units, merged = fit(split(inputs, options.units), max_units)
    if not units:
        raise InvalidRequestError("the input has no text to attribute", param=param)
    bound = len(units) + 1 if options.method == "occlusion" else options.permutations * (len(units) - 1) + 2
    if max_prompts and bound > max_prompts:
        raise InvalidRequestError(
            f"attributions of {param} may score {bound} prompts, over the {max_prompts} allowed: "
            "use fewer permutations, or sentences or fields as units",
            param="attribution",
        )
    every = frozenset(range(len(units)))
    if options.method == "occlusion":
        coalitions = [every, *(every - {u} for u in range(len(units)))]
        orders: list[tuple[int, ...]] = []
    else:
        seed = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).digest()
        rng = random.Random(seed)  # the same input gets the same attributions
        orders = [tuple(rng.sample(range(len(units)), len(units))) for _ in range(options.permutations)]
        seen = {every: None, frozenset(): None}
        for order in orders:
            seen |= {frozenset(order[:k]): None for k in range(1, len(order))}
        coalitions = list(seen)
    return AttributionPlan(options, tuple(units), merged, tuple(coalitions), tuple(orders))


def split(inputs: dict[str, Any], kind: str) -> list[Unit]:
    """The text fields' units, in field order, with their character offsets."""
    units = []
    for name, value in inputs.items():
        if not isinstance(value, str) or not value.strip():
            continue
        if kind == "fields":
            units.append(Unit(name, 0, len(value)))
        else:
            units += [
                Unit(name, m.start(), m.start() + len(m.group().rstrip())) for m in UNIT_PATTERNS[kind].finditer(value)
            ]
    return units


def fit(units: list[Unit], cap: int) -> tuple[list[Unit], bool]:
    """At most `cap` units where the fields allow (never fewer than one per field):
    each field's units joined into runs of neighbours, as evenly as its length allows,
    each field keeping a share of the cap in proportion to its units."""
    if len(units) <= cap:
        return units, False
    fields: dict[str, list[Unit]] = {}
    for unit in units:
        fields.setdefault(unit.field, []).append(unit)
    shares = {f: max(1, cap * len(us) // len(units)) for f, us in fields.items()}
    while sum(shares.values()) < cap and any(shares[f] < len(us) for f, us in fields.items()):
        f = max((f for f in fields if shares[f] < len(fields[f])), key=lambda f: len(fields[f]) / shares[f])
        shares[f] += 1
    joined = []
    for f, us in fields.items():
        bounds = [round(k * len(us) / shares[f]) for k in range(shares[f] + 1)]
        joined += [Unit(f, us[a].start, us[b - 1].end) for a, b in pairwise(bounds) if b > a]
    return joined, True


def keep(inputs: dict[str, Any], units: Sequence[Unit], kept: frozenset[int]) -> dict[str, Any]:
    """`inputs` with the units not in `kept` removed (a word with the space after it)."""
    out = dict(inputs)
    for name in {u.field for u in units}:
        text = inputs[name]
        spans = [(u.start, i in kept) for i, u in enumerate(units) if u.field == name]
        pieces, at = [], 0
        for n, (start, present) in enumerate(spans):
            gap_end = spans[n + 1][0] if n + 1 < len(spans) else len(text)
            pieces.append(text[at:start])
            if present:
                pieces.append(text[start:gap_end])
            at = gap_end
        out[name] = "".join(pieces).rstrip() if not text[-1:].isspace() else "".join(pieces)
    return out
