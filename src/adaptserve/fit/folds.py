"""Stratified, seeded folds over labelled examples: k-fold where the data is small
(every example is tested once), one stratified 80/20 split where it is not."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from adaptserve.errors import ConfigurationError

SMALL = 1000  # up to this many examples, k-fold


@dataclass(frozen=True)
class Folds:
    tests: tuple[tuple[int, ...], ...]  # each fold's test indices
    n: int

    @classmethod
    def stratified(cls, labels: list[str], k: int | None = None, seed: int = 0) -> Folds:
        """Each label's examples shuffled (seeded) and dealt round-robin into k folds;
        k = 4 up to `SMALL` examples, else one fold of a fifth."""
        rng = random.Random(seed)
        by_label: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            by_label[label].append(i)
        split = k is None and len(labels) > SMALL
        k = k or (5 if split else 4)
        if not 2 <= k <= len(labels):
            raise ConfigurationError(f"{k} folds of {len(labels)} examples: choose 2 to {len(labels)}")
        dealt: list[list[int]] = [[] for _ in range(k)]
        turn = 0
        for label in sorted(by_label):
            members = by_label[label]
            rng.shuffle(members)
            for i in members:
                dealt[turn % k].append(i)
                turn += 1
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


def balanced_sample(indices: list[int], labels: list[str], per_label: int, seed: int, share: float = 1.0) -> list[int]:
    """Up to `per_label` of each label from `indices`, and with `share` < 1 at most that
    share of the label's members there (none of a label too rare for it); seeded, in
    label order."""
    rng = random.Random(seed)
    out: list[int] = []
    for label in sorted({labels[i] for i in indices}):
        members = [i for i in indices if labels[i] == label]
        rng.shuffle(members)
        out += members[: min(per_label, int(len(members) * share))]
    return out
