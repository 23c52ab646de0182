"""Bounded caches of the viewer: encoded tiles (by bytes) and open slides (by count). Thread-safe."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU:
    """Least-recently-used cache of ``bytes`` values holding at most ``max_bytes`` bytes in total."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> bytes | None:
        """The cached value (now most recent), or None."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        """Store ``value``, dropping the least recently used entries beyond ``max_bytes``."""
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.nbytes -= len(old)
            self._data[key] = value
            self.nbytes += len(value)
            while self.nbytes > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self.nbytes -= len(dropped)

    def get_or_make(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        """The cached value, or ``make()`` stored and returned (two threads may both make it)."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value


class HandleLRU(Generic[V]):
    """At most ``max_items`` open objects (slides) held; the least recently used is dropped.

    A dropped object is not closed here: a request still reading from it keeps its reference, and
    OpenSlide closes the handle when the last reference goes (no use-after-close across threads).
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max(1, int(max_items))
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get_or_open(self, key: Hashable, open_: Callable[[], V]) -> V:
        """The open object for ``key``, opening it (outside the lock) when absent."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = open_()
        with self._lock:
            if key in self._data:  # another thread opened it meanwhile: keep one
                self._data.move_to_end(key)
                return self._data[key]
            self._data[key] = value
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)
            return value
