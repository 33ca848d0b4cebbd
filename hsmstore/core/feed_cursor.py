"""Where a follower of a DB change feed stands: every id up to a floor is read, a few above it too.

Both feeds of issue 18 (``material_changes``, ``metadata_changes``) number their rows from one
increasing id. On PostgreSQL ids come from a sequence and may commit out of order (a transaction
that took id 10 can commit after one that took id 11), so a follower cannot just remember the
highest id it saw: it keeps a *floor* below which everything was read, re-reads above it on
every poll, and skips the ids above it it has already applied. An id missing above the floor
holds it there for ``gap_seconds`` (the longest a transaction that writes a change is expected
to stay open; a rolled-back one leaves a gap for good), then is given up on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

START_WINDOW = 1_000
"""At start, re-read this many ids below the newest (changes committing while the follower starts)."""


class FeedCursor:
    """The floor, the ids read above it and the gaps below the highest; one follower thread's own."""

    def __init__(self, gap_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._gap_seconds = gap_seconds
        self._clock = clock
        self.floor: int | None = None  # every id <= floor was read (or given up on)
        self._read: set[int] = set()  # ids above the floor already applied
        self._gaps: dict[int, float] = {}  # missing id above the floor -> when first missed

    def start_at(self, latest_id: int) -> None:
        """Begin just below the feed's newest id (:data:`START_WINDOW` back)."""
        self.floor = max(0, latest_id - START_WINDOW)

    def unread(self, ids: Iterable[int]) -> list[int]:
        """Those of ``ids`` not applied yet, in order."""
        return [change_id for change_id in ids if change_id not in self._read]

    def applied(self, ids: Iterable[int]) -> None:
        self._read.update(ids)

    def advance(self) -> None:
        """Move the floor over every id read, and over gaps older than ``gap_seconds``."""
        assert self.floor is not None
        if not self._read:
            self._gaps.clear()
            return
        now = self._clock()
        highest = max(self._read)
        for missing in range(self.floor + 1, highest):
            if missing not in self._read:
                self._gaps.setdefault(missing, now)
        floor = self.floor
        while floor + 1 <= highest:
            following = floor + 1
            if following in self._read:
                self._read.discard(following)
            elif now - self._gaps.get(following, now) >= self._gap_seconds:
                self._gaps.pop(following, None)
            else:
                break
            floor = following
        self.floor = floor
