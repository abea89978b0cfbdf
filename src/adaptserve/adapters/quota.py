"""What tenants' adapters may take: disk per tenant (`Quota.storage_bytes_per_tenant`,
checked by `Quota.check_room` in the catalog's transaction that records a version) and
derivations (merges, compressions: dense SVDs take whole cores) running at once, all
together and one owner's (`DerivationSlots`)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from adaptserve.db import AdapterRow, AdapterVersionRow, TenantRow
from adaptserve.errors import RateLimitError, StorageQuotaError


class DerivationBusyError(RateLimitError):
    code = "derivation_in_progress"


@dataclass(frozen=True)
class Quota:
    """What tenants' adapters may take: disk per tenant, and derivations at once (all
    together, and one tenant's)."""

    storage_bytes_per_tenant: int = 2 * 1024**3
    concurrent: int = 2
    per_tenant: int = 1

    def check_room(self, s: Session, owner: str, size: int) -> None:
        """Refuse (507) a version of `size` bytes that would take the tenant of uid
        `owner` past its storage quota. The tenant's row is written first (a no-op
        update): that takes SQLite's write lock and PostgreSQL's row lock before the sum
        is read, so two of its uploads cannot both fit in the same room."""
        s.execute(update(TenantRow).where(TenantRow.uid == owner).values(uid=TenantRow.uid))
        used = s.scalar(
            select(func.coalesce(func.sum(AdapterVersionRow.size_bytes), 0))
            .join(AdapterRow, AdapterRow.name == AdapterVersionRow.adapter)
            .where(AdapterRow.owner == owner)
        )
        limit = self.storage_bytes_per_tenant
        if int(used or 0) + size > limit:
            tenant = s.scalar(select(TenantRow.name).where(TenantRow.uid == owner))
            raise StorageQuotaError(
                f"tenant {tenant or '(deleted)'}'s adapters take {used} of its {limit} bytes and this version needs "
                f"{size}: delete adapters it no longer needs first"
            )


class DerivationSlots:
    """Derivations running now, by owner ("": the operator): at most `quota.concurrent`
    in all and `quota.per_tenant` of one owner; one more is a 429 at once (no queue)."""

    def __init__(self, quota: Quota) -> None:
        self._quota = quota
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def held(self, owner: str) -> Iterator[None]:
        with self._lock:
            if self._running[owner] >= self._quota.per_tenant:
                raise DerivationBusyError(
                    f"{self._quota.per_tenant} adapter merge or compression of yours is already running; retry "
                    "when it is done",
                    retry_after=5,
                )
            if self._running.total() >= self._quota.concurrent:
                raise DerivationBusyError("other adapters are being reduced or merged; retry shortly", retry_after=5)
            self._running[owner] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[owner] -= 1
