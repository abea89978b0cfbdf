"""The gateway's cache of the database reads every request makes (its key's tenant,
quotas and PII policy; the alias it names; the adapter version that alias resolves to;
a template call's template and label calibration).

`ReadCache` keeps each read for `ttl_s` seconds (0: no cache), the least recently used
dropped past `max_entries`. A write that this process commits to a watched table
(`watch`) empties it before the write returns, so a key revoked, a tenant deleted, an
alias repointed or a quota changed through this gateway takes effect on its very next
request; other gateway replicas sharing the database see the change within `ttl_s`.
A read that was under way while such a write committed is not kept (a generation count
tells), so no stale answer outlives the write.

`in_loop_or_thread` runs a function that reads through the cache on the event loop when
every read it makes is cached (no worker-thread hop), and in a worker thread otherwise.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable
from typing import Any, TypeVar, cast

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from adaptserve.db import (
    AdapterRow,
    AdapterVersionRow,
    AliasRow,
    ApiKeyRow,
    Base,
    Database,
    RevokedKeyRow,
    TemplateCalibrationRow,
    TemplateRow,
    TemplateVersionRow,
    TenantRow,
)

T = TypeVar("T")
DEFAULT_MAX_ENTRIES = 10_000
_TOUCHED = "adaptserve.read_cache.touched"  # a session's flag: it wrote a watched table
# What the cached reads read: a write to any of them empties the cache.
WATCHED: tuple[type[Base], ...] = (
    TenantRow,
    ApiKeyRow,
    RevokedKeyRow,
    AliasRow,
    AdapterRow,
    AdapterVersionRow,
    TemplateRow,
    TemplateVersionRow,
    TemplateCalibrationRow,
)


class CacheMiss(Exception):
    """A read that is not cached, inside `in_loop_or_thread`'s first, cache-only try."""


class ReadCache:
    def __init__(
        self, ttl_s: float, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()  # key -> (expiry, value)
        self._generation = 0  # bumped by every invalidation
        self._lock = threading.Lock()  # reads run on the event loop and in worker threads
        self._cached_only = contextvars.ContextVar("cached_only", default=False)

    @classmethod
    def over(cls, db: Database, ttl_s: float) -> ReadCache:
        """A cache of `db`'s reads, emptied by every write this process commits to `WATCHED`."""
        cache = cls(ttl_s)
        cache.watch(db, WATCHED)
        return cache

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached value of `key`, else `load()` (kept unless the cache was emptied
        while it ran). In `in_loop_or_thread`'s first try, a miss raises `CacheMiss`."""
        if self.ttl_s <= 0:
            return load()
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                self._entries.move_to_end(key)
                return cast(T, entry[1])
            generation = self._generation
        if self._cached_only.get():
            raise CacheMiss()
        value = load()
        with self._lock:
            if self._generation == generation:
                self._entries[key] = (now + self.ttl_s, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        return value

    def invalidate(self) -> None:
        """Forget everything, and keep no read that started before now."""
        with self._lock:
            self._generation += 1
            self._entries.clear()

    async def in_loop_or_thread(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` here on the event loop when every cached read it makes hits
        (it must do nothing before its reads that it cannot do twice), else in a worker
        thread, where it may wait on the database."""
        if self.ttl_s > 0:
            token = self._cached_only.set(True)
            try:
                return function(*args)
            except CacheMiss:
                pass
            finally:
                self._cached_only.reset(token)
        return await asyncio.to_thread(function, *args)

    def watch(self, db: Database, tables: Collection[type[Base]]) -> None:
        """Empty the cache whenever a session of `db` commits a change to one of `tables`
        (an ORM change or a bulk insert, update or delete), before the commit returns."""
        watched = frozenset(tables)

        def flushed(session: Session, _flush: UOWTransaction) -> None:
            changed = (*session.new, *session.dirty, *session.deleted)
            if any(type(row) in watched for row in changed):
                session.info[_TOUCHED] = True

        def executed(state: ORMExecuteState) -> None:
            writes = state.is_insert or state.is_update or state.is_delete
            if writes and state.bind_mapper is not None and state.bind_mapper.class_ in watched:
                state.session.info[_TOUCHED] = True

        # The flag outlives a rollback: a savepoint's rollback fires `after_rollback` too,
        # while the transaction's earlier writes still commit. After a whole transaction is
        # rolled back, the session (one per `Database.session`) is done, and a flag it kept
        # would at worst empty the cache once more.
        def committed(session: Session) -> None:
            if session.info.pop(_TOUCHED, False):
                self.invalidate()

        event.listen(db.sessions, "after_flush", flushed)
        event.listen(db.sessions, "do_orm_execute", executed)
        event.listen(db.sessions, "after_commit", committed)
