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

Hit rates (issue 16, "cache hit rates"): each cache counts its hits and
misses in plain ints, and a named cache is listed in a per-process registry
(:func:`cache_counts`) that ``server/metrics.py`` copies into
``hsmstore_cache_requests_total`` now and then. Plain ints, not a lock per
``get``: two threads incrementing at once may lose one count, which a hit
rate can afford and the request path's lock-free read cannot.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_TTL_SECONDS = 0.5
MAX_ENTRIES = 100_000


_named_caches: weakref.WeakSet[TtlCache[Any, Any]] = weakref.WeakSet()
_registry_lock = threading.Lock()


def cache_counts() -> dict[str, tuple[int, int]]:
    """Hits and misses so far of every named cache of this process, summed by name."""
    with _registry_lock:
        caches = list(_named_caches)
    counts: dict[str, tuple[int, int]] = {}
    for cache in caches:
        hits, misses = counts.get(cache.name, (0, 0))
        counts[cache.name] = (hits + cache.hits, misses + cache.misses)
    return counts


class TtlCache(Generic[K, V]):
    """``name`` (e.g. ``keys``) lists the cache in :func:`cache_counts`; unnamed caches are not listed.

    A ``get`` answered from a live entry is a hit; one that calls ``load`` a
    miss (with ``ttl_seconds`` 0 every ``get`` is a miss: nothing is cached).
    """

    def __init__(
        self,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
        name: str = "",
    ) -> None:
        self.name = name
        self.hits = 0
        self.misses = 0
        if name:
            with _registry_lock:
                _named_caches.add(self)
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
                self.hits += 1
                return entry[1]
        self.misses += 1
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
