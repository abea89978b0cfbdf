"""Stratified, seeded folds over labelled examples: k-fold where the data is small
(every example is tested once), one stratified 80/20 split where it is not.

Near-duplicate texts are kept in one fold: texts equal after `normalise` (case folded,
every punctuation character read as a space, runs of whitespace collapsed to one
space, ends stripped) form a group, and a group is dealt into a fold as one unit, so
a near-copy of a test text is never trained on."""

from __future__ import annotations

import random
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

from adaptserve.errors import ConfigurationError

SMALL = 1000  # up to this many examples, k-fold


@dataclass(frozen=True)
class Folds:
    tests: tuple[tuple[int, ...], ...]  # each fold's test indices
    n: int

    @classmethod
    def stratified(
        cls, labels: list[str], k: int | None = None, seed: int = 0, texts: list[str] | None = None
    ) -> Folds:
        """Each label's groups of near-duplicate texts (`normalise`; each example its
        own group without `texts`) shuffled (seeded), larger groups first, and dealt
        each to the fold that holds fewest of its label, the next fold in turn on a
        tie (round-robin where every group is one example); k = 4 up to `SMALL`
        examples, else one fold of a fifth."""
        split = k is None and len(labels) > SMALL
        k = k or (5 if split else 4)
        if not 2 <= k <= len(labels):
            raise ConfigurationError(f"{k} folds of {len(labels)} examples: choose 2 to {len(labels)}")
        rng = random.Random(seed)
        by_label: dict[str, list[list[int]]] = defaultdict(list)
        for group in _groups(labels, texts):
            by_label[_majority([labels[i] for i in group])].append(group)
        dealt: list[list[int]] = [[] for _ in range(k)]
        turn = 0
        for label in sorted(by_label):
            units = by_label[label]
            rng.shuffle(units)
            units.sort(key=len, reverse=True)  # stable: the shuffled order among equal sizes
            held = [0] * k
            for unit in units:
                fold = min(range(turn, turn + k), key=lambda f: held[f % k]) % k
                dealt[fold] += unit
                held[fold] += len(unit)
                turn = fold + 1
        tests = tuple(tuple(sorted(d)) for d in dealt)
        if split:
            tests = tests[:1]  # large data: one stratified 80/20 split
        return cls(tests, len(labels))

    def thin(self, labels: list[str]) -> list[str]:
        """Notes on labels too rare for every fold (as scikit-learn's stratified k-fold,
        they are tested in fewer folds); an error where a fold would train on one label."""
        notes = []
        for label, n in sorted(Counter(labels).items()):
            if n < len(self.tests) and not (len(self.tests) == 1 and n >= 2):
                notes.append(f"label {label!r} has {n} example(s): fewer than the {len(self.tests)} folds")
        for fold in range(len(self.tests)):
            if len({labels[i] for i in self.train(fold)}) < 2:
                raise ConfigurationError(f"fold {fold} would train on one label: give more examples of each")
        return notes

    def __len__(self) -> int:
        return len(self.tests)

    def test(self, fold: int) -> list[int]:
        return list(self.tests[fold])

    def train(self, fold: int) -> list[int]:
        held = set(self.tests[fold])
        return [i for i in range(self.n) if i not in held]


def normalise(text: str) -> str:
    """The text near-duplicates share: case folded, punctuation read as spaces,
    whitespace collapsed ("Free  PRIZE!!! Call now." and "free prize, call now" are one)."""
    spaced = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.casefold())
    return " ".join(spaced.split())


def _groups(labels: list[str], texts: list[str] | None) -> list[list[int]]:
    """Indices grouped by normalised text, in order of first appearance; one group
    per example without texts."""
    if texts is None:
        return [[i] for i in range(len(labels))]
    if len(texts) != len(labels):
        raise ConfigurationError(f"{len(texts)} texts for {len(labels)} labels")
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(normalise(text), []).append(i)
    return list(groups.values())


def _majority(labels: list[str]) -> str:
    """A group's label: its most common one (near-copies labelled differently are rare)."""
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))
