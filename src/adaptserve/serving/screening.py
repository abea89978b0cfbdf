"""Which strings of an OpenAI request body the engine reads, and how a tenant's PII
policy may treat each: the walk `PrivacyGuard` screens a chat or completions body with.

Nothing is listed as "to screen": the body passes to vLLM as sent (`server/protocol.py`
types only what the gateway itself reads), so every string value and every object key
anywhere in it is screened, whatever field it is in, known or not. Only the two values
the gateway replaces before the engine sees them are left out: `model` and `cache_salt`.
Numbers and booleans are not text (token-id prompts are refused by `PrivacyGuard`).

Each string is one of two kinds:
- `MASK`: text a placeholder can stand for, restored in the answer: message text
  (`content` and its parts' `text`, `name`, `reasoning_content`, `refusal`, tool-call
  `arguments`), completions prompts, tool and `response_format` descriptions, the
  values of `documents` and `chat_template_kwargs`, and inside a JSON schema (tool
  parameters, `response_format`'s schema, `structured_outputs.json`) the annotation and
  value keywords (`description`, `title`, `examples`, `default`, `const`, `enum`).
- `FIXED`: everything else: object keys, roles, types, ids and function names, `stop`,
  `tool_choice`, `structured_outputs` constraints (`choice`, `regex`, `grammar`, ...),
  a schema's keywords (`pattern`, `format`, `$ref`, `required`, ...), a schema sent as a
  JSON string, `chat_template`, and any field not named above. A placeholder there
  would change what the request means (which role speaks, when generation stops, what
  output is allowed, which property exists), so personal data in it refuses the request
  under `mask` as under `block`. It is searched with its backslash escapes undone too:
  `kim\\.lee@example\\.com` in a regex is found.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ANY = "*"  # a path step: any list index
NAME = "?"  # a path step: any object key

NOT_SENT = frozenset({"model", "cache_salt"})  # top-level values the gateway replaces
_MASKED = (  # the exact paths of maskable values
    ("prompt",),
    ("prompt", ANY),
    ("messages", ANY, "content"),
    ("messages", ANY, "content", ANY, "text"),
    ("messages", ANY, "name"),
    ("messages", ANY, "reasoning_content"),
    ("messages", ANY, "refusal"),
    ("messages", ANY, "tool_calls", ANY, "function", "arguments"),
    ("tools", ANY, "function", "description"),
    ("response_format", "json_schema", "description"),
    ("documents", ANY, NAME),
)
_MASKED_UNDER = (("chat_template_kwargs", NAME),)  # every value under these
_SCHEMAS = (  # JSON schemas (as objects): their text keywords are masked
    ("tools", ANY, "function", "parameters"),
    ("response_format", "json_schema", "schema"),
    ("structured_outputs", "json"),
)
_SCHEMA_TEXT = frozenset({"description", "title", "examples", "default", "const", "enum", "$comment"})
_SCHEMA_NAMES = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_ESCAPE = re.compile(r"\\(.)")


class Kind(enum.Enum):
    MASK = "mask"
    FIXED = "fixed"


@dataclass(frozen=True)
class Leaf:
    """One string the engine reads: its text, its kind, and the top-level field it is
    in (None: it is a top-level key itself, which must not be quoted as a field name)."""

    text: str
    kind: Kind
    field: str | None

    @property
    def searched(self) -> str:
        """What detection reads: a fixed string also with its escapes undone."""
        if self.kind is Kind.MASK or "\\" not in self.text:
            return self.text
        return self.text + "\n" + _ESCAPE.sub(r"\1", self.text)


def leaves(body: dict[str, Any]) -> list[Leaf]:
    """Every string of `body` the engine reads, keys included, in `rebuilt`'s order."""
    found: list[Leaf] = []

    def visit(text: str, leaf: Leaf) -> str:
        found.append(leaf)
        return text

    _walk_body(body, visit)
    return found


def rebuilt(body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """`body` with its `leaves` replaced, in order, by `texts`."""
    replacements = iter(texts)
    return _walk_body(body, lambda _text, _leaf: next(replacements))


Visit = Callable[[str, Leaf], str]


def _walk_body(body: dict[str, Any], visit: Visit) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = visit(key, Leaf(key, Kind.FIXED, None))
        out[name] = value if key in NOT_SENT else _walk(value, (key,), key, visit)
    return out


def _walk(value: Any, path: tuple[str, ...], field: str, visit: Visit) -> Any:
    """Recursive, as deep as the body nests: `read_json` bounds that (64)."""
    if isinstance(value, str):
        return visit(value, Leaf(value, _kind(path), field))
    if isinstance(value, list):
        return [_walk(v, (*path, ANY), field, visit) for v in value]
    if isinstance(value, dict):
        return {visit(k, Leaf(k, Kind.FIXED, field)): _walk(v, (*path, k), field, visit) for k, v in value.items()}
    return value


def _kind(path: tuple[str, ...]) -> Kind:
    """A string value's kind by where it is (`path`: its keys, list indices as ANY)."""
    for root in _SCHEMAS:
        if _starts(path, root):
            return _schema_kind(path[len(root) :])
    if any(_starts(path, p) and len(path) == len(p) for p in _MASKED) or any(_starts(path, p) for p in _MASKED_UNDER):
        return Kind.MASK
    return Kind.FIXED


def _schema_kind(rest: tuple[str, ...]) -> Kind:
    """Inside a schema object: text under an annotation or value keyword is masked; a
    keyword's other values, the schema as a string and property names are fixed."""
    naming = False
    for step in rest:
        if naming:  # a property (or definition) name: a schema follows
            naming = False
        elif step in _SCHEMA_TEXT:
            return Kind.MASK
        elif step in _SCHEMA_NAMES:
            naming = True
    return Kind.FIXED


def _starts(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if len(path) < len(pattern):
        return False
    return all(p == q or (q == NAME and p != ANY) for p, q in zip(path, pattern, strict=False))
