"""Fit reports kept on the server: what an `adaptserve fit` run that served its choice
here found (per candidate its held-out accuracy with a 95% interval, fit's decision, what
it served, and the report's plot as a PNG), pushed through the admin API so the console
can show it. Stored in the database, one per (owner, name): global (owner "") or one
tenant's (its uid, never reused), like heads; a later push of the same name replaces it.

Bounded: at most `MAX_REPORTS` per owner, `MAX_CANDIDATES` rows, short texts without NUL
characters (PostgreSQL's text refuses them), and a plot of at most `MAX_PLOT_BYTES` that
must be a PNG of at most `MAX_PLOT_SIDE` pixels a side (its signature and header are
checked; it is only ever handed back as it came, as base64)."""

from __future__ import annotations

import base64
import binascii
import builtins
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adaptserve.db import Database, FitReportRow, TenantRow, check_name, utcnow
from adaptserve.errors import ConflictError, InvalidRequestError, NotFoundError, invalid_from

GLOBAL = ""
MAX_CANDIDATES = 64
MAX_PLOT_BYTES = 512 * 1024
MAX_PLOT_SIDE = 4096  # pixels: a small file can declare a huge image, which a browser would decode
MAX_REPORTS = 256  # per owner
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Share = Field(ge=0, le=1, allow_inf_nan=False)


class FitReportNotFoundError(NotFoundError):
    code = "fit_report_not_found"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CandidateRow(_Strict):
    """One candidate's own held-out estimate (fit's `results.rows`)."""

    candidate: StrictStr = Field(min_length=1, max_length=64)
    kind: Literal["llm", "baseline"]
    n: int = Field(ge=0, le=10_000_000)
    accuracy: float = Share
    accuracy_low: float = Share
    accuracy_high: float = Share
    macro_f1: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    inputs_per_s: float | None = Field(None, ge=0, allow_inf_nan=False)


class FitDecision(_Strict):
    """Fit's nested LLM pick against its baseline pick (`report.decide`)."""

    verdict: StrictStr = Field(max_length=2000)
    choice: Literal["llm", "baseline"] | None = None
    llm: StrictStr | None = Field(None, max_length=64)
    baseline: StrictStr | None = Field(None, max_length=64)
    n: int = Field(0, ge=0)
    difference: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)
    low: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)
    high: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)


class FitReportUpload(_Strict):
    """The JSON a report is pushed as (`PUT /admin/fit-reports/{name}`)."""

    source: StrictStr = Field(max_length=256)
    examples: int = Field(ge=0, le=10_000_000)
    decision: FitDecision
    candidates: list[CandidateRow] = Field(min_length=1, max_length=MAX_CANDIDATES)
    served: StrictStr = Field("", max_length=2000)  # what fit served, in words; "" nothing
    plot_png: StrictStr | None = Field(None, max_length=(MAX_PLOT_BYTES + 2) // 3 * 4)  # base64

    @classmethod
    def parse(cls, body: object) -> tuple[FitReportUpload, bytes | None]:
        """An uploaded JSON object → the checked report and its plot's bytes, or a 400."""
        if _has_nul(body):
            raise InvalidRequestError("invalid fit report: a text holds a NUL character")
        try:
            report = cls.model_validate(body)
        except ValidationError as exc:
            raise invalid_from(exc, prefix="invalid fit report: ") from exc
        if report.plot_png is None:
            return report, None
        try:
            plot = base64.b64decode(report.plot_png, validate=True)
        except binascii.Error as exc:
            raise InvalidRequestError("plot_png is not base64", param="plot_png") from exc
        if not plot.startswith(PNG_SIGNATURE) or plot[12:16] != b"IHDR":
            raise InvalidRequestError("plot_png is not a PNG image", param="plot_png")
        width, height = int.from_bytes(plot[16:20], "big"), int.from_bytes(plot[20:24], "big")
        if not (0 < width <= MAX_PLOT_SIDE and 0 < height <= MAX_PLOT_SIDE):
            raise InvalidRequestError(
                f"plot_png is {width}x{height} pixels; at most {MAX_PLOT_SIDE} a side", param="plot_png"
            )
        return report, plot


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class FitReportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, owner: str, name: str, report: FitReportUpload, plot: bytes | None) -> tuple[dict, bool]:
        """Store `owner`'s report `name`, replacing one of that name. → it, and whether it is new."""
        check_name(name, "a fit report name")
        fields = report.model_dump(exclude={"plot_png"})
        try:
            with self._db.session() as s:
                row = self._find(s, owner, name)
                created = row is None
                if row is None and self._count(s, owner) >= MAX_REPORTS:
                    raise ConflictError(f"{MAX_REPORTS} fit reports are stored for this owner: delete one first")
                if row is None:
                    row = FitReportRow(owner=owner, name=name)
                    s.add(row)
                for key, value in fields.items():
                    setattr(row, key, value)
                row.plot, row.created_at = plot, utcnow()
                s.flush()
                return _summary(row, s), created
        except IntegrityError as exc:  # another push created the name meanwhile
            raise ConflictError(f"fit report {name} was pushed twice at the same time; try again") from exc

    def list(self, owners: tuple[str, ...] | None = None) -> builtins.list[dict]:
        """Every report (`owners` None), or those of `owners`, by owner and name."""
        with self._db.session() as s:
            query = select(FitReportRow).order_by(FitReportRow.owner, FitReportRow.name)
            if owners is not None:
                query = query.where(FitReportRow.owner.in_(owners))
            return [_summary(row, s) for row in s.scalars(query)]

    def get(self, owner: str, name: str) -> dict:
        """The whole report: its rows, decision and plot (base64, or None)."""
        with self._db.session() as s:
            row = self._row(s, owner, name)
            plot = base64.b64encode(row.plot).decode() if row.plot else None
            return _summary(row, s) | {"candidates": row.candidates, "plot_png": plot}

    def owner_of(self, tenant_uid: str, name: str) -> str | None:
        """Whose report `name` a tenant means: its own, else the global one, else none."""
        with self._db.session() as s:
            owners = set(s.scalars(select(FitReportRow.owner).where(FitReportRow.name == name)))
        return next((o for o in (tenant_uid, GLOBAL) if o in owners), None)

    def remove(self, owner: str, name: str) -> None:
        with self._db.session() as s:
            s.delete(self._row(s, owner, name))

    @staticmethod
    def remove_owned(s: Session, tenant: str) -> None:
        """A deleted tenant's reports, in the tenant's own transaction (`TenantRegistry.owns`)."""
        uid = s.scalar(select(TenantRow.uid).where(TenantRow.name == tenant))
        if uid:
            s.execute(delete(FitReportRow).where(FitReportRow.owner == uid))

    @staticmethod
    def _find(s: Session, owner: str, name: str) -> FitReportRow | None:
        return s.scalar(select(FitReportRow).where(FitReportRow.owner == owner, FitReportRow.name == name))

    @staticmethod
    def _count(s: Session, owner: str) -> int:
        return s.scalar(select(func.count()).select_from(FitReportRow).where(FitReportRow.owner == owner)) or 0

    def _row(self, s: Session, owner: str, name: str) -> FitReportRow:
        row = self._find(s, owner, name)
        if row is None:
            raise FitReportNotFoundError(f"fit report {name} does not exist", param="name")
        return row


def _summary(row: FitReportRow, s: Session) -> dict:
    tenant = s.scalar(select(TenantRow.name).where(TenantRow.uid == row.owner)) if row.owner else None
    return {
        "name": row.name,
        "owner": tenant,
        "source": row.source,
        "examples": row.examples,
        "decision": row.decision,
        "served": row.served,
        "has_plot": row.plot is not None,
        "created_at": row.created_at.isoformat() + "Z",
    }
