"""A small per-process cache of key metadata with a hard staleness bound.

Why: every cryptographic call needs the key's state and current version, and
reading them from the DB was a third of a GenerateDataKey's Python time
(docs/performance.md). Why it is safe: an entry lives at most ``ttl_seconds``
(0.5 s by default), so a change made by another process or node is seen
within that bound (docs/deployment.md promises at most 1 s), and a change made
through this process drops the entry at once. A read that raced such a change
cannot put the old value back: each key has a generation, bumped on every
invalidation, and a value is stored only if the generation did not move while
it was being read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_TTL_SECONDS = 0.5
MAX_ENTRIES = 100_000


class TtlCache(Generic[K, V]):
    def __init__(
        self,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._generations: dict[K, int] = {}
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The cached value, or ``load()``'s (cached unless None or raced by an invalidation)."""
        if self._ttl > 0:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > self._clock():
                return entry[1]
        generation = self._generations.get(key, 0)
        value = load()
        if value is not None and self._ttl > 0:
            with self._lock:
                if self._generations.get(key, 0) == generation:
                    if len(self._entries) >= self._max_entries:
                        self._entries.clear()
                    self._entries[key] = (self._clock() + self._ttl, value)
        return value

    def invalidate(self, key: K) -> None:
        with self._lock:
            self._generations[key] = self._generations.get(key, 0) + 1
            self._entries.pop(key, None)
            if len(self._generations) > self._max_entries:
                self._generations.clear()  # old readers then merely skip caching once
                self._entries.clear()
