"""The static check of user-supplied regular expressions (template JSON Schemas, PII
policy patterns): whatever it accepts runs in time about linear in the string for
each start position, so Python's backtracking `re` can evaluate it; whatever could
backtrack without bound is refused, quickly, naming the reason."""

from __future__ import annotations

import re
import time

import pytest

from adaptserve.pii.policy import CustomPattern
from adaptserve.safe_regex import UnsafePatternError, check_pattern

SAFE = [
    r"^[a-z]+$",
    r"^[A-Z]{2}-\d{4,6}$",
    r"^[a-z0-9._%+-]+@[a-z0-9-]+\.[a-z]{2,}$",
    r"^\d{3}-\d{2}-\d{4}$",
    r"(?i)^(yes|no|maybe)$",
    r"^(ab)*c$",
    r"^[a-z]+ [0-9]+$",
    r"ORD-[0-9]{8}",
    r"^\w+(?:\.\w{2,3})$",
]
UNSAFE = [
    (r"^(a+)+$", "nested"),
    (r"^(a*)*$", "nested"),
    (r"^(a|aa)*$", "nested"),
    (r"^(\w+\s?)*$", "nested"),
    (r"^(a+)\1$", "backreference"),
    (r"^(?=a)a$", "lookaround"),
    (r"(?<!x)a", "lookaround"),
    (r"^(a)?(?(1)b|c)$", "backreference"),
    (r"^\d*\d*\d*x$", "overlap"),
    (r"^.*.*=.*$", "overlap"),
    (r"^[a-z]+[a-z0-9]*@$", "overlap"),
    (r"x" * 600, "long"),
    # a review found these: flags inside a group hid an overlap (k, K and the Kelvin sign
    # all match "k" case-folded), and Presidio matches PII patterns case-insensitively
    (r"k*(?i:K)*(?i:\u212a)*$", "flags"),
    (r"[a-z]+[A-Z]+\d", "overlap"),
    (r"k+K+\u212a+x", "overlap"),
]


@pytest.mark.parametrize("pattern", SAFE)
def test_patterns_that_cannot_backtrack_without_bound_are_accepted(pattern: str) -> None:
    check_pattern(pattern)
    re.compile(pattern)


@pytest.mark.parametrize(("pattern", "reason"), UNSAFE, ids=[u[0][:30] for u in UNSAFE])
def test_backtracking_prone_patterns_are_refused_naming_why(pattern: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(UnsafePatternError, match=reason):
        check_pattern(pattern)
    assert time.monotonic() - started < 1.0  # refused by reading it, not by running it


def test_an_accepted_pattern_stays_fast_on_a_hostile_string() -> None:
    """The worst accepted shape (one unbounded repeat at a time, searched from every
    start) on the longest string a pattern is checked against."""
    for pattern in SAFE:
        compiled = re.compile(pattern)
        for text in ("a" * 1000 + "!", "1" * 1000 + "!", "a@" * 500):
            started = time.monotonic()
            compiled.search(text)
            assert time.monotonic() - started < 1.0, pattern  # a backtracking one: hours


def test_a_pii_policy_pattern_that_backtracks_is_refused() -> None:
    with pytest.raises(ValueError, match="nested"):
        CustomPattern(entity="ORDER", regex=r"(\d+)+x")
    assert CustomPattern(entity="ORDER", regex=r"ORD-\d{8}").regex == r"ORD-\d{8}"
