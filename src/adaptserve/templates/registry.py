"""Templates in the database: immutable numbered versions, a name → active version
pointer, global or per-tenant ownership, and the stored calibration of each version.

A tenant sees its own templates and the global ones; its own shadow a global one of
the same name. Everything else answers 404 `template_not_found`, so another tenant's
templates never show they exist. A tenant may pin a version by number only if it was
released (active at some time); a staged version stays the admin's draft.

Parsed specs are cached by content digest, never by row id: ids can be reused after a
delete (SQLite reuses the highest rowid), content cannot be; the cache keeps the most
recently used `cache_size` only. Version numbers are 1 to `MAX_VERSION` (the column's
range on every database): any other number is refused before a query is made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adaptserve.db import Database, TemplateCalibrationRow, TemplateRow, TemplateVersionRow, TenantRow
from adaptserve.errors import ConfigurationError, ConflictError, InvalidRequestError, NotFoundError
from adaptserve.lru import Lru
from adaptserve.read_cache import ReadCache
from adaptserve.templates.spec import TemplateSpec, load_document

log = logging.getLogger(__name__)

GLOBAL = ""  # the owner of global templates
MAX_VERSION = 2**31 - 1  # template_versions.version is an INTEGER (32 bits on PostgreSQL)


class TemplateNotFoundError(NotFoundError):
    code = "template_not_found"


class TemplateUnusableError(ConflictError):
    """A stored version that no longer passes the template checks (saved before a check
    was added): it is not served; saving a corrected version fixes it."""

    code = "template_invalid"


@dataclass(frozen=True)
class TemplateVersion:
    template_id: int
    owner: str
    name: str
    version: int
    spec: TemplateSpec
    active: bool

    def summary(self) -> dict:
        return (
            {
                "name": self.name,
                "kind": self.spec.kind,
                "description": self.spec.description,
                "owner": self.owner or None,
                "version": self.version,
                "model": self.spec.model if self.spec.head is None and self.spec.encoder is None else None,
            }
            | ({"head": self.spec.head} if self.spec.head else {})
            | ({"encoder": self.spec.encoder} if self.spec.encoder else {})
        )


class TemplateRegistry:
    def __init__(self, db: Database, cache_size: int = 256, reads: ReadCache | None = None) -> None:
        self._db = db
        self.reads = reads if reads is not None else ReadCache(0.0)  # `get` and `calibration` read through it
        self._specs: Lru[str, TemplateSpec] = Lru(cache_size)  # by content digest: never stale

    def cache_sizes(self) -> dict[str, int]:
        return {"template_specs": len(self._specs)}

    # control plane -----------------------------------------------------------------
    def put(self, spec: TemplateSpec, activate: bool = True) -> tuple[dict, bool]:
        """Store `spec` as a new version (or find the identical one); → (version, created)."""
        owner = spec.tenant or GLOBAL
        for _attempt in range(3):  # a concurrent put took the same number: count again
            try:
                with self._db.session() as s:
                    return self._put(s, owner, spec, activate)
            except IntegrityError:
                continue
        raise ConflictError(f"template {spec.name} is being changed concurrently; retry")

    def _put(self, s: Session, owner: str, spec: TemplateSpec, activate: bool) -> tuple[dict, bool]:
        if owner and s.get(TenantRow, owner) is None:
            raise InvalidRequestError(f"tenant {owner} does not exist", param="tenant")
        row = s.scalars(select(TemplateRow).where(TemplateRow.owner == owner, TemplateRow.name == spec.name)).first()
        if row is None:
            row = TemplateRow(owner=owner, name=spec.name)
            s.add(row)
            s.flush()
        digest = spec.digest
        same = s.scalars(
            select(TemplateVersionRow).where(
                TemplateVersionRow.template_id == row.id, TemplateVersionRow.digest == digest
            )
        ).first()
        created = same is None
        if same is None:
            latest = s.scalar(
                select(func.max(TemplateVersionRow.version)).where(TemplateVersionRow.template_id == row.id)
            )
            same = TemplateVersionRow(
                template_id=row.id, version=(latest or 0) + 1, digest=digest, document=spec.document()
            )
            s.add(same)
            s.flush()
        if activate or row.active_version is None:
            row.active_version = same.version
            same.released = True
        return _version_dict(row, same), created

    def activate(self, owner: str, name: str, version: int) -> dict:
        with self._db.session() as s:
            row = self._row(s, owner, name)
            found = s.get(TemplateVersionRow, (row.id, version)) if 1 <= version <= MAX_VERSION else None
            if found is None:
                raise TemplateNotFoundError(f"template {name} has no version {version}")
            row.active_version = version
            found.released = True
            return _version_dict(row, found)

    def versions(self, owner: str, name: str) -> dict:
        with self._db.session() as s:
            row = self._row(s, owner, name)
            found = s.scalars(
                select(TemplateVersionRow)
                .where(TemplateVersionRow.template_id == row.id)
                .order_by(TemplateVersionRow.version)
            ).all()
            return {
                "name": name,
                "owner": owner or None,
                "active_version": row.active_version,
                "versions": [_version_dict(row, v) | {"document": v.document} for v in found],
            }

    def remove(self, owner: str, name: str) -> None:
        with self._db.session() as s:
            s.delete(self._row(s, owner, name))

    @staticmethod
    def remove_owned(s: Session, tenant: str) -> None:
        """A deleted tenant's templates (their versions and calibrations cascade), in the
        tenant's own transaction (`TenantRegistry.owns`)."""
        s.execute(delete(TemplateRow).where(TemplateRow.owner == tenant))

    def list_all(self) -> list[dict]:
        with self._db.session() as s:
            rows = s.scalars(select(TemplateRow).order_by(TemplateRow.owner, TemplateRow.name)).all()
            return [{"name": r.name, "owner": r.owner or None, "active_version": r.active_version} for r in rows]

    def load_folder(self, folder: Path) -> list[str]:
        """Apply every *.yaml / *.yml / *.json in `folder` (global unless the file names
        a tenant) and make it active. A bad file stops start-up, naming the file."""
        loaded = []
        for path in sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json")):
            try:
                spec = load_document(path.read_text())
                self.put(spec)
            except InvalidRequestError as exc:
                raise ConfigurationError(f"template file {path}: {exc}") from exc
            loaded.append(spec.name)
        log.info("loaded %d templates from %s", len(loaded), folder)
        return loaded

    # data plane ----------------------------------------------------------------------
    def get(self, tenant: str, name: str, version: int | None = None) -> TemplateVersion:
        """The caller's template (its own, else the global one), at `version` or active
        (cached: see `ReadCache`; a template not found never is)."""
        return self.reads.get(("template", tenant, name, version), lambda: self._read(tenant, name, version))

    def _read(self, tenant: str, name: str, version: int | None) -> TemplateVersion:
        with self._db.session() as s:
            rows = s.scalars(
                select(TemplateRow).where(TemplateRow.name == name, TemplateRow.owner.in_((tenant, GLOBAL)))
            ).all()
            row = min(rows, key=lambda r: r.owner == GLOBAL, default=None)  # its own first
            number = version if version is not None else (row.active_version if row else None)
            if number is not None and not 1 <= number <= MAX_VERSION:
                number = None  # no such version, and no query with a number the column cannot hold
            found = s.get(TemplateVersionRow, (row.id, number)) if row and number else None
            if row is None or found is None or not found.released:
                what = f"template {name}" + (f" version {version}" if version is not None else "")
                raise TemplateNotFoundError(f"{what} does not exist")
            spec = self._spec(found)
            return TemplateVersion(
                row.id, row.owner, row.name, found.version, spec, found.version == row.active_version
            )

    def visible(self, tenant: str) -> list[TemplateVersion]:
        with self._db.session() as s:
            rows = s.scalars(
                select(TemplateRow).where(TemplateRow.owner.in_((tenant, GLOBAL))).order_by(TemplateRow.name)
            ).all()
            names = {r.name for r in rows if r.active_version is not None}
        return [self.get(tenant, name) for name in sorted(names)]

    def calibration(self, template: TemplateVersion, model: str) -> list[float] | None:
        """The stored label bias of a template version on a model (cached: see `ReadCache`)."""
        key = ("calibration", template.template_id, template.version, model)
        return self.reads.get(key, lambda: self._read_calibration(template, model))

    def _read_calibration(self, template: TemplateVersion, model: str) -> list[float] | None:
        with self._db.session() as s:
            if not _same_version(s, template):
                return None
            row = s.get(TemplateCalibrationRow, (template.template_id, template.version, model))
            return list(row.probs) if row else None

    def save_calibration(self, template: TemplateVersion, model: str, probs: list[float]) -> None:
        try:
            with self._db.session() as s:
                if not _same_version(s, template):
                    return  # deleted meanwhile (and its id maybe reused): the bias is no one's
                s.merge(
                    TemplateCalibrationRow(
                        template_id=template.template_id, version=template.version, model=model, probs=probs
                    )
                )
        except IntegrityError:  # another replica stored it first: same inputs, same numbers
            self.reads.invalidate()  # this replica's cached "none yet" is wrong now

    # helpers -------------------------------------------------------------------------
    def _spec(self, row: TemplateVersionRow) -> TemplateSpec:
        found = self._specs.get(row.digest)
        if found is None:
            try:
                found = self._specs.put(row.digest, TemplateSpec.model_validate(row.document))
            except ValidationError as exc:
                raise TemplateUnusableError(
                    f"template version {row.version} no longer passes the template checks; save a corrected one"
                ) from exc
        return found

    @staticmethod
    def _row(s: Session, owner: str, name: str) -> TemplateRow:
        row = s.scalars(select(TemplateRow).where(TemplateRow.owner == owner, TemplateRow.name == name)).first()
        if row is None:
            raise TemplateNotFoundError(f"template {name} does not exist" + (f" for tenant {owner}" if owner else ""))
        return row


def _same_version(s: Session, template: TemplateVersion) -> bool:
    """The stored row of this version still holds this template's content."""
    row = s.get(TemplateVersionRow, (template.template_id, template.version))
    return row is not None and row.digest == template.spec.digest


def _version_dict(row: TemplateRow, version: TemplateVersionRow) -> dict:
    return {
        "name": row.name,
        "owner": row.owner or None,
        "version": version.version,
        "digest": version.digest,
        "active": version.version == row.active_version,
        "released": version.released,
        "created_at": version.created_at.isoformat() + "Z",
    }
