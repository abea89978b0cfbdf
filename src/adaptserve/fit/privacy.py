"""The tenant's PII policy applied to `fit`'s labelled data before anything is done with
it: what fit stores (`units.jsonl`, the manifest's documents, adapters trained on the
texts) and what it serves (few-shot examples and calibration inputs in the tenant's
template) hold the texts as the policy lets the gateway pass them on.

- `off`, `log`: the texts as given (the gateway passes such a tenant's requests as sent).
- `mask`: each value found becomes its placeholder (`<EMAIL_ADDRESS_1>`, numbered per
  text, as in one request), so the model learns and shows the placeholders, never a value.
- `block`: the run is refused (a `ConfigurationError` naming how many texts and which
  entity types, never the values): the data must be cleaned first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from adaptserve.datasets import Example
from adaptserve.errors import ConfigurationError
from adaptserve.pii.detector import Detector
from adaptserve.pii.masking import Placeholders
from adaptserve.pii.policy import PiiMode, PiiPolicy


def scrub(examples: Sequence[Example], policy: PiiPolicy, detector: Detector) -> tuple[list[Example], str | None]:
    """→ the examples fit may store and serve under `policy`, and a note saying what was
    masked (None: nothing was)."""
    if not policy.screens:
        return list(examples), None
    found = [detector.find(e.text, policy) for e in examples]
    entities = Counter(f.entity for findings in found for f in findings)
    holding = sum(1 for findings in found if findings)
    if not holding:
        return list(examples), None
    kinds = ", ".join(sorted(entities))
    if policy.mode is PiiMode.BLOCK:
        raise ConfigurationError(
            f"{holding} of the {len(examples)} texts hold personal data ({kinds}) and this tenant's PII policy "
            "blocks it: remove it from the data (or ask the operator for mode mask) first"
        )
    masked = [
        Example(Placeholders().mask(e.text, findings), e.label) if findings else e
        for e, findings in zip(examples, found, strict=True)
    ]
    return masked, f"personal data masked in {holding} of {len(examples)} texts ({kinds}), per the tenant's policy"
