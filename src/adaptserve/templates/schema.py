"""A generate template's JSON Schema: checked once when the template is saved (depth,
every `pattern` and `patternProperties` key through `safe_regex`, then the metaschema),
and the validator that matches examples and the model's answers against it, with each
string matched against a pattern at most `MAX_SUBJECT_CHARS` long and a schema that
refers to itself without end reported as a mismatch, never a crash.

The static check runs before any string is matched: jsonschema evaluates `pattern`
with Python's backtracking `re`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
from jsonschema import validators

from adaptserve.safe_regex import MAX_SUBJECT_CHARS, UnsafePatternError, check_pattern

MAX_SCHEMA_DEPTH = 32  # lists and objects, as RequestBounds.max_schema_depth bounds what vLLM compiles


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse (ValueError, saying where) a schema too deep, with an unsafe pattern, or
    not a JSON Schema."""
    if depth(schema) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"schema nests lists and objects more than {MAX_SCHEMA_DEPTH} deep")
    for where, pattern in _patterns(schema):
        try:
            check_pattern(pattern)
        except UnsafePatternError as exc:
            raise ValueError(f"schema pattern at {where or 'the top level'}: {exc}") from exc
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"schema is not a valid JSON Schema: {exc.message}") from exc
    except RecursionError as exc:
        raise ValueError("schema nests or refers to itself too deeply") from exc


def validate(instance: object, schema: dict[str, Any]) -> None:
    """`jsonschema.validate` with bounded pattern matching (a checked schema only);
    raises `jsonschema.ValidationError`."""
    try:
        error = jsonschema.exceptions.best_match(_Validator(schema).iter_errors(instance))
    except RecursionError as exc:
        raise jsonschema.ValidationError(
            "the schema refers to itself too deeply for this value", validator="$ref", validator_value="..."
        ) from exc
    if error is not None:
        raise error


def _pattern(validator: Any, pattern: str, instance: object, schema: dict[str, Any]) -> Iterator[Any]:
    if isinstance(instance, str):
        yield from _matched(pattern, instance, "pattern")


def _pattern_properties(validator: Any, properties: dict[str, Any], instance: object, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in properties.items():
        for key, value in instance.items():  # type: ignore[attr-defined]
            errors = list(_matched(pattern, key, "patternProperties"))
            if errors:
                yield from errors
            elif re.search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _matched(pattern: str, text: str, keyword: str) -> Iterator[Any]:
    if len(text) > MAX_SUBJECT_CHARS:
        yield jsonschema.ValidationError(
            f"a string checked against a {keyword} is at most {MAX_SUBJECT_CHARS} characters long"
        )
    elif keyword == "pattern" and not re.search(pattern, text):
        yield jsonschema.ValidationError(f"does not match {pattern!r}")


_Validator = validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties}
)


def _patterns(schema: object) -> Iterator[tuple[str, str]]:
    """Every `pattern` string and `patternProperties` key, with where it is (walked
    without recursion; any object in the schema may be one a keyword reads)."""
    stack: list[tuple[object, str]] = [(schema, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, list):
            stack.extend((item, f"{where}/{i}") for i, item in enumerate(node))
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("pattern"), str):
            yield f"{where}/pattern", node["pattern"]
        if isinstance(node.get("patternProperties"), dict):
            yield from ((f"{where}/patternProperties", key) for key in node["patternProperties"])
        stack.extend((value, f"{where}/{key}") for key, value in node.items())


def depth(value: object, bound: int = MAX_SCHEMA_DEPTH) -> int:
    """How deeply lists and objects nest (iteratively; counted up to just past `bound`)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= bound:
            stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
