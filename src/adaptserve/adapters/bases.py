"""The LLM base an adapter is bound to, for good: the base model (`model:`, stored as
"") or a generate entry of `models:` that takes adapters (its name). The first version
of a name binds it; its later versions are for the same base (`refuse_rebased`: 409
`adapter_base_taken`), so an alias of it always lands on the engines it was checked
against; a derivation (merge, compression) is for its sources' one base (`one_base`).
Each version's files are checked against its base's shapes (`AdapterBases.spec`:
a local folder's; None for a remote engine's, whose shapes are unknown), and so is the
all-zero adapter a base's plain requests may be sent through (`zero_version`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from adaptserve.adapters.residency import AdapterVersion
from adaptserve.adapters.spec import BaseModelSpec, validate_adapter
from adaptserve.errors import ConflictError, InvalidRequestError, ModelNotFoundError

BASE_MODEL = ""  # what the `adapters.base` column holds for the base model


class AdapterBaseTakenError(ConflictError):
    """A version pushed for another base than the one its name is bound to."""

    code = "adapter_base_taken"


@dataclass(frozen=True)
class AdapterBases:
    """The base model's name and shapes, and those of the `models:` entries that take
    adapters (by name; None: a remote engine, not checked)."""

    base_name: str
    base: BaseModelSpec | None
    entries: Mapping[str, BaseModelSpec | None] = field(default_factory=dict)

    def spec(self, base: str) -> BaseModelSpec | None:
        """What an adapter for `base` is checked against (404 for a base that takes none)."""
        if base == BASE_MODEL:
            return self.base
        if base not in self.entries:
            raise ModelNotFoundError(base)
        return self.entries[base]

    def shown(self, base: str) -> str:
        """A base as listings show it: the base model by its name."""
        return base or self.base_name


def refuse_rebased(name: str, bound: str, base: str, bases: AdapterBases) -> None:
    """`name` is bound to `bound`: a version for another base is refused (409)."""
    if bound != base:
        raise AdapterBaseTakenError(
            f"adapter {name} is for the base {bases.shown(bound)!r}, not {bases.shown(base)!r}: a name stays on "
            "the base its first version was pushed for; push this one under another name",
            param="base",
        )


def one_base(sources: Iterable[tuple[str, str]]) -> str:
    """The base of a derivation's sources ((name, base) pairs; none: the base model's):
    adapters of different bases do not merge (400)."""
    bases = {name: base for name, base in sources}
    if len(set(bases.values())) > 1:
        raise InvalidRequestError(
            f"the adapters {sorted(bases)} are for different LLM bases; merge adapters of one base",
            param="sources",
        )
    return next(iter(bases.values()), BASE_MODEL)


def zero_version(
    name: str,
    path: Path,
    spec: BaseModelSpec | None,
    max_rank: int,
    targets: frozenset[str] | None,
    base: str = BASE_MODEL,
) -> AdapterVersion:
    """A base's all-zero adapter (written by `spec.write_zero_adapter` at `path`),
    checked as its adapters are, as the version the base's plain requests go through
    (vLLM knows it as `name--version`)."""
    checked = validate_adapter(path, spec, max_rank, targets)
    return AdapterVersion(name, checked.digest[:12], path, checked.rank, base=base)
