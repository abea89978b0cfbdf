"""The static check of user-supplied regular expressions (a template schema's `pattern`
and `patternProperties`, a tenant's PII patterns): Python's `re` backtracks, and no
linear-time engine is installed, so a pattern is refused unless its matching time is
about linear in the string from each start position.

Refused, by what `re`'s own parser makes of the pattern:
- backreferences and conditionals (`\\1`, `(?(1)a|b)`), lookahead and lookbehind;
- a repeated group holding a variable repeat or an alternation (`(a+)+`, `(a|aa)*`);
- two variable repeats whose characters overlap with nothing mandatory and disjoint
  between them (`\\d*\\d*`, `.*.*`, `[a-z]+[a-z0-9]*`): each adds a power of the length;
- flags set inside a group (`(?i:...)`), and overlap is judged case-insensitively;
- patterns longer than `MAX_PATTERN_CHARS`.
What is left is searched in O(n²) at worst; strings matched against a pattern are
capped too (`MAX_SUBJECT_CHARS`, see `templates/schema.py`).
"""

from __future__ import annotations

import re
from re import _constants as sre  # type: ignore[attr-defined]  # Python 3.11+ (the package's floor)
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

MAX_PATTERN_CHARS = 512
MAX_SUBJECT_CHARS = 1000
_REFUSED = {
    sre.GROUPREF: "a backreference",
    sre.GROUPREF_EXISTS: "a backreference (a conditional group)",
    sre.ASSERT: "a lookaround",
    sre.ASSERT_NOT: "a lookaround",
}
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
_ONE_CHAR = (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN)
# Characters the overlap test tries, besides the pattern's own literals and range ends.
_PROBES = [chr(c) for c in range(0x300)] + ["\u0660", "\u2028", "\u3000", "\u4e00", "\uff10", "\U0001f600"]


class UnsafePatternError(ValueError):
    """The pattern could make `re` backtrack without bound (the message says why)."""


def check_pattern(pattern: str) -> None:
    """Refuse a pattern `re` cannot evaluate in about linear time (UnsafePatternError)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsafePatternError(f"the pattern is too long ({len(pattern)} > {MAX_PATTERN_CHARS} characters)")
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise UnsafePatternError(f"not a regular expression: {exc}") from exc
    _Walk(pattern, parsed.state.flags).sequence(list(parsed), [])


class _Walk:
    """One pass over the parsed pattern, carrying the variable repeats still "open"
    (able to take more characters) at each point of a sequence."""

    def __init__(self, pattern: str, flags: int) -> None:
        # Overlap is tested case-folded and with Unicode classes, whatever the pattern says:
        # stricter than either matcher that runs these patterns (jsonschema: none; Presidio:
        # IGNORECASE), so `k*K*` or `[a-z]+[A-Z]+` count as overlapping.
        self._flags = (flags | re.IGNORECASE) & ~re.ASCII
        self._probes = _PROBES + list(pattern)

    def sequence(self, items: list[tuple[Any, Any]], open_: list[list[tuple[Any, Any]]]) -> list:
        for op, av in items:
            if op in _REFUSED:
                raise UnsafePatternError(f"{_REFUSED[op]} is not allowed in a pattern (it may backtrack without bound)")
            if op in _ONE_CHAR:
                open_ = [o for o in open_ if self._overlap(o, [(op, av)])]
            elif op is sre.SUBPATTERN:
                if av[1] or av[2]:  # (?i:...) and the like: the overlap test reads one set of flags
                    raise UnsafePatternError("flags set inside a group (such as (?i:...)) are not allowed in a pattern")
                open_ = self.sequence(list(av[-1]), open_)
            elif op is sre.ATOMIC_GROUP:
                open_ = self.sequence(list(av), open_)
            elif op is sre.BRANCH:
                after: list = []
                for branch in av[1]:
                    after += self.sequence(list(branch), list(open_))
                open_ = after
            elif op in _REPEATS:
                open_ = self._repeat(av, open_)
        return open_

    def _repeat(self, av: tuple[int, int, Any], open_: list) -> list:
        low, high, body = av
        body = list(body)
        if high > 1 and _varies(body):
            raise UnsafePatternError(
                "a nested repeat or alternation inside a repeat (such as (a+)+ or (a|aa)*) is not allowed in a pattern"
            )
        if high == 0:
            return open_
        inner = self.sequence(body, open_ if low == high else [])  # refused items inside are found too
        if low == high:
            return inner
        chars = _one_chars(body)
        if any(self._overlap(o, chars) for o in open_):
            raise UnsafePatternError(
                "two repeats over overlapping characters in a row (such as \\d*\\d* or .*.*) are not allowed "
                "in a pattern: put a character only one of them matches between them"
            )
        return [*(open_ if low == 0 else []), chars]

    def _overlap(self, a: list[tuple[Any, Any]], b: list[tuple[Any, Any]]) -> bool:
        """Some character is matched by an item of `a` and by an item of `b`."""
        match_a, match_b = self._matcher(a), self._matcher(b)
        return any(match_a(c) and match_b(c) for c in self._probes + _ends(a) + _ends(b))

    def _matcher(self, items: list[tuple[Any, Any]]) -> Any:
        if not items:
            return lambda _c: False
        state = sre_parse.State()
        state.flags = self._flags
        alternatives = [sre_parse.SubPattern(state, [item]) for item in items]
        tree = sre_parse.SubPattern(state, [(sre.BRANCH, (None, alternatives))])
        return re._compiler.compile(tree, self._flags | re.DOTALL).fullmatch  # type: ignore[attr-defined]


def _varies(items: list[tuple[Any, Any]]) -> bool:
    """The items hold a repeat of variable count or an alternation (at any depth)."""
    for op, av in items:
        if op is sre.BRANCH or (op in _REPEATS and av[0] != av[1]):
            return True
        inner = av[-1] if op is sre.SUBPATTERN else av[2] if op in _REPEATS else av if op is sre.ATOMIC_GROUP else None
        if inner is not None and _varies(list(inner)):
            return True
    return False


def _one_chars(items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every one-character item a repeat's body can match, at any depth."""
    found = []
    for op, av in items:
        if op in _ONE_CHAR:
            found.append((op, av))
        elif op is sre.SUBPATTERN:
            found += _one_chars(list(av[-1]))
        elif op in _REPEATS:
            found += _one_chars(list(av[2]))
        elif op is sre.ATOMIC_GROUP:
            found += _one_chars(list(av))
    return found


def _ends(items: list[tuple[Any, Any]]) -> list[str]:
    """The literal characters and range ends the items name: two sets of ranges
    overlap only if an end of one lies in the other."""
    found = []
    for op, av in items:
        if op in (sre.LITERAL, sre.NOT_LITERAL):
            found.append(chr(av))
        elif op is sre.IN:
            for inner_op, inner_av in av:
                if inner_op is sre.LITERAL:
                    found.append(chr(inner_av))
                elif inner_op is sre.RANGE:
                    found += [chr(inner_av[0]), chr(inner_av[1])]
    return found
