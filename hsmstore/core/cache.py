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

Following the change feed (issue 18: a working set of 10,000 keys must cost what 10 keys cost,
and with a 0.5 s life every entry of a large working set expires before its next use): a cache
given a :class:`ChangeFeedWatch` keeps an entry up to its ``entry_ttl_seconds``, as long as the
follower of the DB's change feed (core/metadata_follower.py) finished a poll that *started* less
than :data:`FEED_STALENESS_SECONDS` ago. Every change committed before that poll started was in
it, and the follower dropped the entries it names before it marked the poll, so an entry served
this way is at most that old. When the follower is late, stopped or the DB does not answer, every
entry is back to the short TTL at once: the 1 s bound never depends on the follower being alive.
The generation rule above still applies, so a read racing the follower cannot put the old value
back either.
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
FEED_TTL_SECONDS = 60.0
"""The longest an entry lives while the change feed is followed, when feed ids may commit out of
order (PostgreSQL): a safety net for a change whose transaction stayed open past the follower's
gap, not the bound."""
FEED_TTL_IN_ORDER_SECONDS = 3600.0
"""The same when feed ids commit in order (SQLite): no change can appear below the follower's
floor later, so nothing needs the net; the hour only bounds how long an unused entry stays."""
FEED_STALENESS_SECONDS = 0.75
"""How recently the follower's last good poll must have started for the feed to vouch for an entry
(three polls of 0.25 s; docs/deployment.md promises changes are seen within 1 s)."""


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


class ChangeFeedWatch:
    """What a cache asks before trusting an entry past its short TTL: is the feed followed, and since when.

    One per process, shared by its caches and written by its one follower. Plain floats: a reader
    racing a write sees the old or the new value, and either is a bound that held a moment ago.
    """

    def __init__(
        self,
        staleness_seconds: float = FEED_STALENESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        entry_ttl_seconds: float = FEED_TTL_SECONDS,
    ) -> None:
        self.clock = clock
        self.entry_ttl_seconds = entry_ttl_seconds
        self._staleness = staleness_seconds
        self._covered_since = float("inf")  # entries loaded before the follower began are not vouched for
        self._vouched_until = float("-inf")  # the last good poll's start + staleness

    def following_since(self, started: float) -> None:
        """The follower began at ``started`` (before it read where the feed stands): every change
        committed after that instant will be read."""
        self._covered_since = min(self._covered_since, started)

    def polled(self, started: float) -> None:
        """A poll that started at ``started`` read the feed and dropped every entry it named."""
        self._vouched_until = max(self._vouched_until, started + self._staleness)

    def vouches_for(self, loaded_at: float, now: float) -> bool:
        """An entry whose load began at ``loaded_at`` is still current as of ``now``."""
        return loaded_at >= self._covered_since and now < self._vouched_until


class TtlCache(Generic[K, V]):
    """``name`` (e.g. ``keys``) lists the cache in :func:`cache_counts`; unnamed caches are not listed.

    A ``get`` answered from a live entry is a hit; one that calls ``load`` a
    miss (with ``ttl_seconds`` 0 every ``get`` is a miss: nothing is cached,
    whether or not the change feed is followed).
    """

    def __init__(
        self,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
        name: str = "",
        watch: ChangeFeedWatch | None = None,
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
        self._watch = watch
        # key -> (short TTL's expiry, when the load began, value)
        self._entries: dict[K, tuple[float, float, V]] = {}
        self._generations: dict[K, int] = {}
        self._epoch = 0  # bumped when the generations are dropped, so no racing read stores
        self._lock = threading.Lock()

    def follow(self, watch: ChangeFeedWatch | None) -> None:
        """Keep entries up to ``watch.entry_ttl_seconds`` while ``watch`` vouches for them
        (the process's change-feed follower drops this cache's changed entries)."""
        self._watch = watch

    def get(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The cached value, or ``load()``'s (cached unless None or raced by an invalidation)."""
        if self._ttl > 0:
            entry = self._entries.get(key)
            if entry is not None:
                now = self._clock()
                if entry[0] > now:
                    self.hits += 1
                    return entry[2]
                watch = self._watch
                if (
                    watch is not None
                    and now - entry[1] < watch.entry_ttl_seconds
                    and watch.vouches_for(entry[1], now)
                ):
                    self.hits += 1
                    return entry[2]
        self.misses += 1
        epoch = self._epoch
        generation = self._generations.get(key, 0)
        loaded_at = self._clock()
        value = load()
        if value is not None and self._ttl > 0:
            with self._lock:
                if self._epoch == epoch and self._generations.get(key, 0) == generation:
                    if len(self._entries) >= self._max_entries:
                        self._entries.clear()
                    self._entries[key] = (self._clock() + self._ttl, loaded_at, value)
        return value

    def invalidate(self, key: K) -> None:
        with self._lock:
            self._generations[key] = self._generations.get(key, 0) + 1
            self._entries.pop(key, None)
            if len(self._generations) > self._max_entries:
                self._epoch += 1  # a read that began before this clear then merely skips caching once
                self._generations.clear()
                self._entries.clear()
