"""The database: SQLAlchemy tables, the engine and session factory, and Alembic
migrations applied at start-up. SQLite (a file in the data folder) by default,
PostgreSQL when `database_url` says so. Nothing outside this module builds SQL
connections; registries take a `Database` and open short sessions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from adaptserve.errors import ConflictError, DatabaseUnavailableError, InvalidRequestError

log = logging.getLogger(__name__)

T = TypeVar("T")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would allow a final newline


def is_name(value: str) -> bool:
    """Whether `value` could be a name `check_name` lets through (and so a stored one)."""
    return _NAME.fullmatch(value) is not None and "--" not in value


def check_name(value: object, what: str, param: str = "name") -> str:
    """Names used as keys (tenants, adapters, aliases). `--` is reserved: internal
    adapter names are `name--version`."""
    if not isinstance(value, str) or not is_name(value):
        raise InvalidRequestError(
            f"{what} must be 1-64 letters, digits, '.', '_' or '-' (no '--'), starting with a letter or digit",
            param=param,
        )
    return value


def written_once_more(write: Callable[[], T], conflict: str) -> T:
    """`write()`, run again once if it lost a race on a unique key (another request
    created the same row between its read and its insert; the second run sees that
    row); losing twice is a 409 saying `conflict`."""
    try:
        return write()
    except IntegrityError:
        try:
            return write()
        except IntegrityError as exc:
            raise ConflictError(conflict) from exc


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


def new_uid() -> str:
    return secrets.token_hex(8)


class TenantRow(Base):
    """A tenant. `uid` is never reused: a tenant created again under a deleted one's
    name gets a new uid, and what belonged to the old one (usage, quota windows, its
    prefix-cache salt) is keyed by the uid, so none of it reaches the new one."""

    __tablename__ = "tenants"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), index=True, unique=True, default=new_uid)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    pii: Mapped[dict | None] = mapped_column(JSON)  # the PII policy (pii/policy.py); None: the default


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16), default="api")  # "api" (/v1) or "admin" (its tenant's /admin)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class RevokedKeyRow(Base):
    """The hash of every deleted key (and of every key of a deleted tenant): start-up
    never registers a revoked key again, so a deletion lasts across restarts."""

    __tablename__ = "revoked_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AdapterRow(Base):
    __tablename__ = "adapters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The uid of the tenant that pushed it ("": global, the operator's): a tenant created
    # again under a deleted one's name does not inherit its adapters.
    owner: Mapped[str] = mapped_column(String(32), default="")
    # The LLM base its versions were validated against and are served on, for good: "" the
    # base model (`model:`), else the name of a generate entry of `models:` (`adapters: true`).
    base: Mapped[str] = mapped_column(String(64), default="")
    active_version: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AdapterVersionRow(Base):
    __tablename__ = "adapter_versions"
    adapter: Mapped[str] = mapped_column(ForeignKey("adapters.name", ondelete="CASCADE"), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    rank: Mapped[int] = mapped_column(Integer)
    target_modules: Mapped[list] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AliasRow(Base):
    __tablename__ = "aliases"
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    base: Mapped[bool] = mapped_column(Boolean, default=False)
    adapter: Mapped[str | None] = mapped_column(ForeignKey("adapters.name", ondelete="RESTRICT"), index=True)
    version: Mapped[str | None] = mapped_column(String(32))  # None: follow the active version


class TemplateRow(Base):
    """A template name, global (owner "") or a tenant's, and its active version."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("owner", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    active_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class TemplateVersionRow(Base):
    __tablename__ = "template_versions"
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict] = mapped_column(JSON)
    # Made active at least once. A tenant may pin released versions only: a staged
    # version (stored with activate=false and never activated) is the admin's draft.
    released: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class TemplateCalibrationRow(Base):
    """Contextual-calibration label bias of one template version on one served model."""

    __tablename__ = "template_calibrations"
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(160), primary_key=True)
    probs: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class HeadRow(Base):
    """A classifier head's name, global (owner "") or a tenant's (its uid), its active
    version and the one active before it (what a rollback returns to)."""

    __tablename__ = "heads"
    __table_args__ = (UniqueConstraint("owner", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    active_version: Mapped[str | None] = mapped_column(String(32))
    previous_version: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class HeadVersionRow(Base):
    """One immutable head version: `version` is its files' SHA-256 prefix, stored under
    the full `digest` in the head store."""

    __tablename__ = "head_versions"
    head_id: Mapped[int] = mapped_column(ForeignKey("heads.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    embedding_model: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list] = mapped_column(JSON)
    temperature: Mapped[float] = mapped_column(Float)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class FitReportRow(Base):
    """What one `adaptserve fit` run found, as it pushed it here: per candidate its
    held-out accuracy with an interval, the decision, what was served, and the plot
    (a PNG). One per (owner, name): owner "" global, or a tenant's uid; a later run of
    the same name replaces it."""

    __tablename__ = "fit_reports"
    __table_args__ = (UniqueConstraint("owner", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(256))
    examples: Mapped[int] = mapped_column(Integer)
    decision: Mapped[dict] = mapped_column(JSON)
    candidates: Mapped[list] = mapped_column(JSON)
    served: Mapped[str] = mapped_column(String(2000), default="")
    plot: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class UsageRow(Base):
    __tablename__ = "usage"
    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_uid: Mapped[str] = mapped_column(String(32), primary_key=True, default="")
    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    template: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    hour: Mapped[dt.datetime] = mapped_column(DateTime, primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)


class QuotaShareRow(Base):
    """One gateway replica's live quota counts for one tenant (PostgreSQL deployments):
    what the other replicas add to their own when they admit a request."""

    __tablename__ = "quota_shares"
    tenant_uid: Mapped[str] = mapped_column(String(32), primary_key=True)
    replica: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)  # admitted in the last minute
    tokens: Mapped[int] = mapped_column(Integer, default=0)  # charged in the last minute plus reserved now
    active: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float)  # epoch seconds: a replica that stops syncing drops out


class AuditRow(Base):
    """One admin mutation (or attempt): who (a key id, never the key), what, on what,
    its outcome, when and from where. Written by the gateway; the API only reads it."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(160))  # "operator", "TENANT/KEY_ID" or "unauthenticated"
    action: Mapped[str] = mapped_column(String(160))  # method and route, e.g. "PUT /admin/tenants/{tenant}/quotas"
    target: Mapped[str] = mapped_column(String(512))  # the path acted on
    # The tenant it concerns: a tenant admin's own; the operator's target; none for a refused key.
    tenant: Mapped[str] = mapped_column(String(64), default="", index=True)
    # That tenant's never-reused uid when the entry was written: what a tenant admin's
    # listing is keyed by, so a tenant created again under the name reads none of these.
    tenant_uid: Mapped[str] = mapped_column(String(32), default="", index=True)
    status: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)  # before/after versions where a route says


SQLITE_BUSY_TIMEOUT_MS = 30_000
# The PostgreSQL advisory lock every gateway replica takes to migrate: a fixed 64-bit
# number, the project's name hashed, so replicas of one deployment agree on it.
MIGRATION_LOCK_ID = int.from_bytes(hashlib.sha256(b"adaptserve migrations").digest()[:8], "big", signed=True)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "before_cursor_execute", _refuse_unstorable)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory (`ReadCache.watch` listens to its commits)."""
        return self._sessions

    @classmethod
    def for_data_dir(cls, url: str | None, data_dir: Path) -> Database:
        if url is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{data_dir / 'adaptserve.db'}"
        return cls(url)

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to `revision` (the newest by default), in one transaction.
        Gateway replicas that start together on one PostgreSQL migrate one at a time:
        each waits for the advisory lock `MIGRATION_LOCK_ID`, taken first in that
        transaction and released at its commit, so the next finds the schema at head
        and does nothing. Alembic's env.py runs inside the same transaction (it begins
        none of its own), so the lock covers the whole upgrade, its version table
        included. SQLite needs no advisory lock (a file is one host's, and its writers
        queue on the file's own lock for `busy_timeout`), but the driver begins a
        transaction only at the first data change, so Alembic's first CREATE TABLE
        would run outside one and race another process's: the transaction is begun
        at once, with the file's write lock (`BEGIN IMMEDIATE`)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        config.attributes["connection"] = None
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            elif connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error. A database that
        cannot be reached is a 503 (`DatabaseUnavailableError`); the pool's pre-ping
        replaces dead connections, so service resumes by itself when it is back."""
        try:
            with self._sessions.begin() as session:
                yield session
        except (OperationalError, InterfaceError) as exc:
            log.warning("database unavailable: %s", exc.orig if exc.orig is not None else exc)
            raise DatabaseUnavailableError() from exc

    def dispose(self) -> None:
        self.engine.dispose()


def _refuse_unstorable(_conn: object, _cursor: object, _sql: str, params: Any, *_: object) -> None:
    """A text no database stores never reaches one: a NUL (PostgreSQL's text columns
    refuse it with an error, not a miss) or a lone UTF-16 surrogate (no UTF-8 encoder
    takes it), so a name holding one, looked up or stored, is a 400 on both databases
    alike. JSON columns are bound already encoded (both as `\\u` escapes). Parameters
    come as a dict or a tuple, a list of them (executemany), or one flat batch of many
    rows (insertmanyvalues): every text in them is checked."""
    if any(not _storable(text) for text in _texts(params)):
        raise InvalidRequestError(
            "A name or text in this request holds a NUL character or a lone surrogate.", code="unstorable_text"
        )


def _texts(params: Any) -> Iterator[str]:
    if isinstance(params, str):
        yield params
    elif isinstance(params, dict):
        for value in params.values():
            yield from _texts(value)
    elif isinstance(params, list | tuple):
        for value in params:
            yield from _texts(value)


def _storable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _sqlite_pragmas(connection: sqlite3.Connection, _record: object) -> None:
    cursor = connection.cursor()
    # First, so that the pragmas below wait too. A writer waits up to 30 s for another's
    # commit before the request is a 503: on a loaded machine one fsync can take seconds.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores ON DELETE without it
    _enable_wal(cursor)
    cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """WAL, so readers do not block the writer. Turning a new file to WAL takes its
    exclusive lock, and SQLite answers SQLITE_BUSY at once there, without the busy
    handler: two processes opening a fresh database together (replicas migrating it)
    would have one fail. That conflict is retried here until the busy timeout; once the
    file is in WAL the pragma takes no lock."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
