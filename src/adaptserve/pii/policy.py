"""A tenant's PII policy: what happens to personal data in its requests (`off`, `log`,
`mask`, `block`), plus its own deny list and patterns. Stored as JSON on the tenant's
row, so every gateway replica reads the same policy with the tenant at authentication."""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from adaptserve.safe_regex import check_pattern

ENTITY = r"^[A-Z][A-Z0-9_]{0,39}$"


class PiiMode(enum.StrEnum):
    OFF = "off"  # nothing is looked for
    LOG = "log"  # requests pass as sent; nothing the gateway writes (logs, errors) keeps what was found
    MASK = "mask"  # found values become placeholders before the engine sees them, restored in answers
    BLOCK = "block"  # a request with personal data is refused (400, entity types only)


class CustomPattern(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    entity: Annotated[str, StringConstraints(pattern=ENTITY)]
    regex: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    score: float = Field(0.9, ge=0.4, le=1)  # below the detector's threshold (0.4) it would never count

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        check_pattern(value)  # the detector's engine backtracks: nothing that may do so without bound
        return value


class PiiPolicy(BaseModel):
    """`deny_list`: words always personal data here (e.g. customer names: there is no
    name recognizer without an NLP model); `patterns`: the tenant's own identifiers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: PiiMode = PiiMode.LOG
    deny_list: tuple[Annotated[str, StringConstraints(min_length=2, max_length=100)], ...] = Field((), max_length=200)
    patterns: tuple[CustomPattern, ...] = Field((), max_length=20)

    @property
    def detects(self) -> bool:
        return self.mode is not PiiMode.OFF

    @property
    def screens(self) -> bool:
        """Requests are checked before the engine sees them (mask or block)."""
        return self.mode in (PiiMode.MASK, PiiMode.BLOCK)


DEFAULT_POLICY = PiiPolicy()
