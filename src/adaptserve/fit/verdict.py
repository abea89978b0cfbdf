"""Paired verdicts: is the best LLM candidate better than the best baseline on the
same examples, or is the difference within what chance makes of this many examples?
Pure functions (numpy and the standard library).

- `paired_interval`: the paired bootstrap 95% interval of the accuracy difference
  (examples resampled with replacement, both candidates' answers together; fixed
  seed, 10,000 resamples, percentile interval).
- `mcnemar_p`: the exact two-sided McNemar p, a binomial test on the discordant pairs
  (the examples exactly one of the two gets right): min(1, 2 P[X ≤ min(b, c)]), X ~
  Binomial(b + c, 1/2).
- `examples_to_settle`: about how many paired examples would make the interval
  exclude 0 if the observed difference d and discordance rate q (discordant pairs /
  n) held. Each example's difference is −1, 0 or +1, with variance q − d²; the
  interval's half-width is about 1.96 √((q − d²) / n), so it excludes 0 from
  n = ⌈1.96² (q − d²) / d²⌉. No number where d = 0 (nothing suggests a difference).
- `compare`: the verdict. "wins" only where the interval lies above 0 (or, for the
  baseline, below); otherwise "no significant difference" and the cheaper candidate
  (more inputs per second) is the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

RESAMPLES = 10_000
SEED = 0
Z = 1.959964  # the normal 97.5% quantile


@dataclass(frozen=True)
class Verdict:
    llm: str
    baseline: str
    n: int  # the paired examples it rests on
    llm_accuracy: float
    baseline_accuracy: float
    difference: float  # the LLM's accuracy minus the baseline's
    low: float  # the paired bootstrap 95% interval of the difference
    high: float
    p: float  # exact McNemar, two-sided
    llm_only: int  # discordant pairs: examples only the LLM candidate gets right
    baseline_only: int
    winner: str | None  # the significantly better one, if either
    choice: str  # the winner, else the cheaper one
    more_examples: int | None  # about how many more labelled examples would settle it
    text: str


def paired_interval(
    a: Sequence[bool], b: Sequence[bool], resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """The 95% paired bootstrap interval of mean(a) − mean(b)."""
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError("paired answers: two equally long, non-empty lists")
    diff = np.asarray(a, dtype=int) - np.asarray(b, dtype=int)
    n = len(diff)
    # Each difference is -1, 0 or +1: resampling n of them with replacement is drawing
    # the three counts from a multinomial, in memory of the resamples, not resamples x n.
    shares = [float(np.mean(diff == v)) for v in (-1, 0, 1)]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    means = (counts[:, 2] - counts[:, 0]) / n
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def accuracy_interval(correct: Sequence[bool], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The 95% bootstrap interval of one candidate's accuracy (NaN for no examples)."""
    if not correct:
        return math.nan, math.nan
    return paired_interval(correct, [False] * len(correct), resamples, seed)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p from the discordant counts b and c."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def examples_to_settle(difference: float, discordance: float) -> int | None:
    """Paired examples at which the 95% interval would exclude 0, were the observed
    difference and discordance rate the truth (see the module's docstring)."""
    if difference == 0:
        return None
    variance = max(discordance - difference**2, 0.0)
    return max(1, math.ceil(Z**2 * variance / difference**2 - 1e-9))


def compare(
    llm: str,
    llm_correct: Sequence[bool],
    llm_speed: float,
    baseline: str,
    base_correct: Sequence[bool],
    base_speed: float,
) -> Verdict:
    """The verdict on paired answers (the same examples, in the same order)."""
    n = len(llm_correct)
    low, high = paired_interval(llm_correct, base_correct)
    llm_only = sum(a and not b for a, b in zip(llm_correct, base_correct, strict=True))
    base_only = sum(b and not a for a, b in zip(llm_correct, base_correct, strict=True))
    acc_l, acc_b = sum(llm_correct) / n, sum(base_correct) / n
    d = acc_l - acc_b
    p = mcnemar_p(llm_only, base_only)
    winner = llm if low > 0 else baseline if high < 0 else None
    cheaper = baseline if _faster(base_speed, llm_speed) else llm
    choice = winner or cheaper
    settle = examples_to_settle(d, (llm_only + base_only) / n)
    more = None if settle is None else max(0, settle - n)
    facts = (
        f"{llm} {acc_l:.3f} against {baseline} {acc_b:.3f} on the same {n} examples: difference "
        f"{d * 100:+.1f} points, 95% interval {low * 100:+.1f} to {high * 100:+.1f}, McNemar p = {p:.3g} "
        f"({llm_only} against {base_only} discordant)"
    )
    if winner is not None:
        loser = baseline if winner == llm else llm
        text = f"{winner} wins over {loser}: {facts}"
    else:
        text = f"no significant difference: {facts}; the cheaper one, {cheaper}, is the choice"
        text += _settling(more)
    return Verdict(llm, baseline, n, acc_l, acc_b, d, low, high, p, llm_only, base_only, winner, choice, more, text)


def _settling(more: int | None) -> str:
    if more is None:
        return "; no observed difference, so more examples would not likely settle it"
    if more == 0:  # the normal approximation says n suffices; the bootstrap's edge sits at 0
        return "; the interval ends at 0, so a few more labelled examples would likely settle it"
    return f"; about {more} more labelled examples would likely settle it (were the difference real)"


def _faster(a: float, b: float) -> bool:
    """a is faster than b (an unmeasured speed counts as slow)."""
    return (a if math.isfinite(a) else -1.0) >= (b if math.isfinite(b) else -1.0)
