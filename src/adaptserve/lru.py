"""`Lru`: a dictionary that keeps its `size` most recently used entries, for the
serving path's caches of things derived from user-made content (a template version's
parsed spec, its scoring plan), so that their memory stays bounded however many
versions tenants make. Safe to use from threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an Lru holds at least one entry")
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def setdefault(self, key: K, make: Callable[[], V]) -> V:
        """The entry for `key`, made (outside the lock) and kept if there is none."""
        found = self.get(key)
        return found if found is not None else self.put(key, make())
