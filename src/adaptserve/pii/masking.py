"""Numbered placeholders for what was found, and their restoration.

Within one request each distinct value gets one placeholder (`<EMAIL_ADDRESS_1>`,
`<PHONE_NUMBER_2>`: numbered per request, in the order found), so the model can refer
to it and the answer is restored to the caller's own values. A stream is restored as it
goes: text that could be the start of a placeholder is held back only until it is
one (restored whole) or cannot be one (passed on), never longer than the longest
placeholder."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from adaptserve.pii.detector import Finding

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)_(\d+)>")
_MAY_OPEN = re.compile(r"<[A-Z0-9_]*$")


class Placeholders:
    """One request's values and their placeholders."""

    def __init__(self) -> None:
        self._placeholder: dict[str, str] = {}  # value -> placeholder
        self._value: dict[str, str] = {}  # placeholder -> value
        self.entities: list[str] = []  # what was masked, in order (for metrics and logs)

    def __bool__(self) -> bool:
        return bool(self._value)

    @property
    def longest(self) -> int:
        return max((len(p) for p in self._value), default=0)

    def mask(self, text: str, found: Sequence[Finding]) -> str:
        out, at = [], 0
        for f in sorted(found, key=lambda f: f.start):
            value = text[f.start : f.end]
            if value not in self._placeholder:
                placeholder = f"<{f.entity}_{len(self._value) + 1}>"
                self._placeholder[value], self._value[placeholder] = placeholder, value
                self.entities.append(f.entity)
            out += [text[at : f.start], self._placeholder[value]]
            at = f.end
        out.append(text[at:])
        return "".join(out)

    def restore(self, text: str) -> str:
        return PLACEHOLDER.sub(lambda m: self._value.get(m.group(0), m.group(0)), text)

    def restore_all(self, value: Any) -> Any:
        """Every string inside `value` (a parsed JSON answer) restored."""
        if isinstance(value, str):
            return self.restore(value)
        if isinstance(value, list):
            return [self.restore_all(v) for v in value]
        if isinstance(value, dict):
            return {k: self.restore_all(v) for k, v in value.items()}
        return value


class StreamRestorer:
    """Restores one stream of text pieces; call `flush` at its end."""

    def __init__(self, placeholders: Placeholders) -> None:
        self.placeholders = placeholders
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        opened = _MAY_OPEN.search(text)
        if opened and len(text) - opened.start() < self.placeholders.longest:
            self._held, text = text[opened.start() :], text[: opened.start()]
        else:
            self._held = ""
        return self.placeholders.restore(text)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self.placeholders.restore(text)


def scrubbed(text: str, found: Sequence[Finding]) -> str:
    """`text` with what was found replaced by its entity type (`<EMAIL_ADDRESS>`): for
    what the gateway writes or says in errors."""
    out, at = [], 0
    for f in sorted(found, key=lambda f: f.start):
        out += [text[at : f.start], f"<{f.entity}>"]
        at = f.end
    out.append(text[at:])
    return "".join(out)
