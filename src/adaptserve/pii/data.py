"""A tenant's PII policy applied to the labelled data a tool trains on and keeps (`fit`,
`train --push --tenant`): what it stores (`units.jsonl`, manifests, adapters trained on
the texts) and what it serves (few-shot examples and calibration inputs in the tenant's
template) hold the texts as the policy lets the gateway pass them on.

- `off`, `log`: the texts as given (the gateway passes such a tenant's requests as sent).
- `mask`: each value found becomes its placeholder (`<EMAIL_ADDRESS_1>`, numbered per
  text, as in one request), so the model learns and shows placeholders, never a value.
- `block`: the run is refused (a `ConfigurationError` naming how many texts and which
  entity types, never the values): the data must be cleaned first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from adaptserve.errors import ConfigurationError
from adaptserve.pii.detector import Detector
from adaptserve.pii.masking import Placeholders
from adaptserve.pii.policy import PiiMode, PiiPolicy

LABELS = frozenset({"label"})  # row fields that name a class, never personal data


def scrub_texts(texts: Sequence[str], policy: PiiPolicy, detector: Detector) -> tuple[list[str], str | None]:
    """→ the texts a tool may keep under `policy`, and a note saying what was masked
    (None: nothing was)."""
    if not policy.screens:
        return list(texts), None
    found = [detector.find(text, policy) for text in texts]
    holding = sum(1 for findings in found if findings)
    if not holding:
        return list(texts), None
    kinds = ", ".join(sorted(Counter(f.entity for findings in found for f in findings)))
    if policy.mode is PiiMode.BLOCK:
        raise ConfigurationError(
            f"{holding} of the {len(texts)} texts hold personal data ({kinds}) and this tenant's PII policy "
            "blocks it: remove it from the data (or ask the operator for mode mask) first"
        )
    masked = [Placeholders().mask(t, f) if f else t for t, f in zip(texts, found, strict=True)]
    return masked, f"personal data masked in {holding} of {len(texts)} texts ({kinds}), per the tenant's policy"


def scrub_rows(rows: Sequence[dict[str, Any]], policy: PiiPolicy, detector: Detector) -> tuple[list[dict], str | None]:
    """Every string of each row (inputs, prompts, completions; not its `label`) as
    `scrub_texts` lets it be kept."""
    texts: list[str] = []
    for row in rows:
        _strings(row, texts.append)
    kept, note = scrub_texts(texts, policy, detector)
    if note is None:
        return list(rows), None
    replacements = iter(kept)
    return [_replaced(row, replacements) for row in rows], note


def _strings(value: Any, out: Any, key: str = "") -> None:
    if isinstance(value, str) and key not in LABELS:
        out(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _strings(v, out, k)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out, key)


def _replaced(value: Any, replacements: Any, key: str = "") -> Any:
    """`value` with its strings (in `_strings`' order) taken from `replacements`."""
    if isinstance(value, str) and key not in LABELS:
        return next(replacements)
    if isinstance(value, dict):
        return {k: _replaced(v, replacements, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, replacements, key) for v in value]
    return value
