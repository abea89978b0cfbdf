"""The head catalog: immutable head versions in the database, their files in a
content-addressed store (the adapters' `AdapterStore`, under `DATA_DIR/heads`), which
version is active, and what a tenant's name resolves to. Synchronous and thread-safe
(admin calls and resolution run in worker threads).

Invariants:
- A head is (owner, name): global (owner "", the operator's) or one tenant's (its uid,
  never reused: a tenant created again under a deleted one's name sees none of its
  heads). Names are per owner, so no tenant can squat another's name or learn it exists.
- A tenant resolves a name to its own head first, else to the global one; another
  tenant's head does not exist for it (404).
- A version is its content: `version = sha256[:12]` of the stored files; identical
  uploads are one version. Rows are written only after the files are in place.
- `activate` flips the pointer and remembers the version it replaced; `rollback`
  returns to it. Serving reads the active version per call: a swap needs no restart
  and a call in flight finishes on the version it read.
"""

from __future__ import annotations

import builtins
import logging
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from adaptserve.adapters.spec import tree_digest
from adaptserve.adapters.store import LEFTOVER_AGE_S, AdapterStore
from adaptserve.db import Database, HeadRow, HeadVersionRow, TenantRow, check_name, written_once_more
from adaptserve.errors import ConflictError, NotFoundError
from adaptserve.heads.artifact import HeadArtifact
from adaptserve.lru import Lru

log = logging.getLogger(__name__)

GLOBAL = ""


class HeadNotFoundError(NotFoundError):
    code = "head_not_found"


@dataclass(frozen=True)
class _Stored:
    digest: str


@dataclass(frozen=True)
class ResolvedHead:
    """What a call uses: the head's name, owner ("" global), version and weights."""

    name: str
    owner: str
    version: str
    artifact: HeadArtifact


class HeadCatalog:
    def __init__(self, db: Database, store: AdapterStore, cache_size: int = 256) -> None:
        self._db, self._store = db, store
        self._loaded: Lru[str, HeadArtifact] = Lru(cache_size)  # by digest: a version's weights never change

    # control plane -------------------------------------------------------------
    def put(self, owner: str, name: str, artifact: HeadArtifact, activate: bool = True) -> tuple[dict, bool]:
        """Store a version of `owner`'s head `name` (the first is active; later ones
        when `activate`). → its description and whether the version is new."""
        check_name(name, "a head name")
        staged = self._store.staging()
        try:
            artifact.write(staged)
        except BaseException:
            self._store.remove_staged(staged)
            raise
        stored, path, _ = self._store.add(staged, lambda folder: _Stored(tree_digest(folder)))
        version = stored.digest[:12]
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        created = written_once_more(  # another upload may create the name (or this version) meanwhile
            lambda: self._record(owner, name, version, stored.digest, artifact, size, activate),
            f"head {name} was changed by another upload at the same time; try again",
        )
        log.info("head %s version %s stored (%d bytes)", name, version, size)
        return self.describe(owner, name) | {"version": version}, created

    def _record(
        self, owner: str, name: str, version: str, digest: str, artifact: HeadArtifact, size: int, activate: bool
    ) -> bool:
        """The version's row (and the head's, if new); → whether the version is new."""
        with self._db.session() as s:
            head = s.scalar(select(HeadRow).where(HeadRow.owner == owner, HeadRow.name == name).with_for_update())
            if head is None:
                head = HeadRow(owner=owner, name=name, active_version=version)
                s.add(head)
                s.flush()
            created = s.get(HeadVersionRow, (head.id, version)) is None
            if created:
                s.add(
                    HeadVersionRow(
                        head_id=head.id,
                        version=version,
                        digest=digest,
                        embedding_model=artifact.embedding_model,
                        dim=artifact.dim,
                        labels=list(artifact.labels),
                        temperature=artifact.temperature,
                        size_bytes=size,
                    )
                )
            if activate and head.active_version != version:
                head.previous_version, head.active_version = head.active_version, version
        return created

    def activate(self, owner: str, name: str, version: str) -> dict:
        with self._db.session() as s:
            head = self._row(s, owner, name)
            if s.get(HeadVersionRow, (head.id, version)) is None:
                raise HeadNotFoundError(f"head {name} has no version {version}", param="version")
            previous = head.active_version
            if previous != version:
                head.previous_version, head.active_version = previous, version
        log.info("head %s: active version %s -> %s", name, previous, version)
        return {"name": name, "active_version": version, "previous_version": previous}

    def rollback(self, owner: str, name: str) -> dict:
        """Back to the version active before the last change (twice: forward again)."""
        with self._db.session() as s:
            head = self._row(s, owner, name)
            previous = head.previous_version
            if previous is None or s.get(HeadVersionRow, (head.id, previous)) is None:
                raise ConflictError(
                    f"head {name} has no earlier active version to roll back to", code="no_earlier_version"
                )
            current = head.active_version
            head.active_version, head.previous_version = previous, current
        log.info("head %s rolled back: active version %s -> %s", name, current, previous)
        return {"name": name, "active_version": previous, "previous_version": current}

    def remove(self, owner: str, name: str) -> None:
        with self._db.session() as s:
            head = self._row(s, owner, name)
            digests = list(s.scalars(select(HeadVersionRow.digest).where(HeadVersionRow.head_id == head.id)))
            s.delete(head)
        for digest in digests:
            self._forget(digest)

    @staticmethod
    def remove_owned(s: Session, tenant: str) -> None:
        """A deleted tenant's heads (their versions cascade), in the tenant's own
        transaction (`TenantRegistry.owns`). Their files stay until a server's start
        sweeps what no version names (`sweep`)."""
        uid = s.scalar(select(TenantRow.uid).where(TenantRow.name == tenant))
        if uid:
            s.execute(delete(HeadRow).where(HeadRow.owner == uid))

    def sweep(self) -> None:
        """Remove stored heads no version names (a deleted tenant's), older than an
        hour (a younger one may be another replica's upload, its row not yet written)."""
        with self._db.session() as s:
            named = set(s.scalars(select(HeadVersionRow.digest)))
        cutoff = time.time() - LEFTOVER_AGE_S
        for folder in self._store.root.iterdir():
            unnamed = folder.is_dir() and not folder.name.startswith(".") and folder.name not in named
            if unnamed and folder.stat().st_mtime < cutoff:
                self._store.remove(folder)

    def describe(self, owner: str, name: str) -> dict:
        with self._db.session() as s:
            head = self._row(s, owner, name)
            rows = s.scalars(
                select(HeadVersionRow).where(HeadVersionRow.head_id == head.id).order_by(HeadVersionRow.created_at)
            ).all()
            tenant = s.scalar(select(TenantRow.name).where(TenantRow.uid == owner)) if owner else None
            return {
                "name": name,
                "owner": tenant,
                "active_version": head.active_version,
                "previous_version": head.previous_version,
                "versions": [_version_dict(r) for r in rows],
            }

    def list(self, owners: tuple[str, ...] | None = None) -> builtins.list[dict]:
        """Every head, or those of `owners` (a tenant admin: "" and its uid)."""
        query = select(HeadRow.owner, HeadRow.name).order_by(HeadRow.name, HeadRow.owner)
        if owners is not None:
            query = query.where(HeadRow.owner.in_(owners))
        with self._db.session() as s:
            found = s.execute(query).all()
        return [self.describe(owner, name) for owner, name in found]

    def owner_of(self, tenant_uid: str, name: str) -> str | None:
        """Whose head `name` is for the tenant of uid `tenant_uid` (its own first, else
        the global one; "" for the operator's view); None: there is none."""
        owners = (tenant_uid, GLOBAL) if tenant_uid else (GLOBAL,)
        with self._db.session() as s:
            found = set(s.scalars(select(HeadRow.owner).where(HeadRow.name == name, HeadRow.owner.in_(owners))))
        return next((o for o in owners if o in found), None)

    # data plane ----------------------------------------------------------------------
    def resolve(self, tenant_uid: str, name: str, version: str | None = None) -> ResolvedHead:
        """The head a tenant's `name` means (its own, else the global one), at its
        active version (or `version`), with its weights (read once per digest)."""
        owner = self.owner_of(tenant_uid, name)
        if owner is None:
            raise HeadNotFoundError(f"head {name} does not exist", param="head")
        with self._db.session() as s:
            head = self._row(s, owner, name)
            found = version or head.active_version
            row = s.get(HeadVersionRow, (head.id, found)) if found else None
            if row is None or found is None:
                raise HeadNotFoundError(f"head {name} has no version {found}", param="head")
            digest = row.digest
        artifact = self._loaded.setdefault(digest, lambda: HeadArtifact.read(self._store.root / digest))
        return ResolvedHead(name, owner, found, artifact)

    def _row(self, s: Session, owner: str, name: str) -> HeadRow:
        head = s.scalar(select(HeadRow).where(HeadRow.owner == owner, HeadRow.name == name))
        if head is None:
            raise HeadNotFoundError(f"head {name} does not exist", param="name")
        return head

    def _forget(self, digest: str) -> None:
        with self._db.session() as s:
            used = s.scalar(select(func.count()).select_from(HeadVersionRow).where(HeadVersionRow.digest == digest))
        if not used:
            self._store.remove(self._store.root / digest)


def _version_dict(row: HeadVersionRow) -> dict:
    return {
        "version": row.version,
        "digest": row.digest,
        "embedding_model": row.embedding_model,
        "dim": row.dim,
        "labels": row.labels,
        "temperature": row.temperature,
        "size_bytes": row.size_bytes,
        "created_at": row.created_at.isoformat(),
    }
