"""Follow the DB's feed of metadata changes, so each process's caches can keep an unchanged key (issue 18).

Issue 18's acceptance: GenerateDataKey and Decrypt over a working set of 10,000 random keys within
15 % of the 10-key figures. With entries that expire after 0.5 s, every call of a large working set
read the key, its policy and its grants from the DB again. The DB writes a change row from
triggers (``MetadataChanges``, migration 0013) whenever a key, a key policy, grants, an alias, an
identity policy or an access key changes, whoever changed it (any process, any node); every process
follows the feed here and calls the drop registered for that kind of change (``gate.forget_key``,
``access.forget_grants``...). After each complete poll it tells the caches' :class:`ChangeFeedWatch`
when that poll *started*: the caches keep entries long only while that is recent
(core/cache.py), so a late or dead follower brings back the short TTL, never a stale answer past
docs/deployment.md's 1 s bound.

Change ids come from a sequence and may commit out of order (PostgreSQL), so a change can appear
below the highest id already read. As in core/keys/material_follower.py, the follower keeps a
floor below which every id was read, re-reads from it, and lets a missing id (a transaction still
open, or a rolled-back sequence value that never commits) hold the floor for at most
``gap_seconds``; a change whose transaction stayed open longer is caught by the caches'
:data:`~hsmstore.core.cache.FEED_TTL_SECONDS` at the latest. Where ids commit in order (SQLite,
``metadata_change_ids_commit_in_order``) a missing id is a rollback and never appears, so the
entries live :data:`~hsmstore.core.cache.FEED_TTL_IN_ORDER_SECONDS`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from hsmstore.core.cache import ChangeFeedWatch
from hsmstore.core.feed_cursor import FeedCursor
from hsmstore.core.ports.clock import Clock
from hsmstore.core.ports.metadata_changes import MetadataChanges

log = logging.getLogger(__name__)

FOLLOW_INTERVAL_SECONDS = 0.25
"""Four reads a second: a change is dropped well within the caches' staleness window."""
GAP_SECONDS = 5.0
"""How long a missing id holds the floor: longer than any transaction that writes a change."""
READ_LIMIT = 5_000
PRUNE_AFTER = timedelta(minutes=10)
"""Changes older than this are deleted: every live process read them long ago."""

Drop = Callable[[str], None]


class MetadataFollower:
    """A daemon thread: the metadata change feed -> the registered drops, and the watch's marks."""

    def __init__(
        self,
        changes: MetadataChanges,
        watch: ChangeFeedWatch,
        clock: Clock,
        interval: float = FOLLOW_INTERVAL_SECONDS,
        gap_seconds: float = GAP_SECONDS,
    ) -> None:
        self._changes = changes
        self._watch = watch
        self._clock = clock
        self._interval = interval
        self._drops: dict[str, list[Drop]] = {}
        self._cursor = FeedCursor(gap_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def watch(self) -> ChangeFeedWatch:
        return self._watch

    def on(self, kind: str, drop: Drop) -> None:
        """Call ``drop(name)`` for every change of ``kind`` (core/ports/metadata_changes.py)."""
        self._drops.setdefault(kind, []).append(drop)

    def start(self) -> None:
        self._begin()
        self._thread = threading.Thread(target=self._loop, name="metadata-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _begin(self) -> None:
        started = self._watch.clock()
        self._cursor.start_at(self._changes.latest_metadata_change_id())
        self._watch.following_since(started)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.follow_once()
            except Exception:  # a DB outage: the caches fall back to their short TTL meanwhile
                log.warning("cannot read the metadata change feed; trying again", exc_info=True)

    def follow_once(self) -> int:
        """Apply every change not yet applied, then mark the poll. Returns how many were new."""
        if self._cursor.floor is None:
            self._begin()
        started = self._watch.clock()  # before the first read: it sees every commit before this
        applied = 0
        after = self._cursor.floor
        assert after is not None
        while True:
            rows = self._changes.metadata_changes_after(after, READ_LIMIT)
            unread = set(self._cursor.unread(change_id for change_id, _, _ in rows))
            if unread:
                self._apply({(kind, name) for change_id, kind, name in rows if change_id in unread})
                self._cursor.applied(unread)
                applied += len(unread)
            if len(rows) < READ_LIMIT:
                break
            after = rows[-1][0]
        self._cursor.advance()
        self._watch.polled(started)
        return applied

    def _apply(self, changes: set[tuple[str, str]]) -> None:
        """Every drop raises nothing in practice (a dict pop under a lock); one that does fails
        the poll, so the watch is not marked and the caches fall back to the short TTL."""
        for kind, name in changes:
            for drop in self._drops.get(kind, ()):
                drop(name)

    def prune(self) -> int:
        """The job that deletes changes older than :data:`PRUNE_AFTER`."""
        return self._changes.prune_metadata_changes(self._clock.now() - PRUNE_AFTER)
