"""Follow the DB's feed of material changes, so no process uses cached material it may not (issue 18).

Issue 18, Deliver 2: an unwrapped session object is destroyed "as soon as the
version may no longer be used (disable, pending deletion, destruction,
domain-key retirement) within the <= 1 s staleness bound that metadata
already has across nodes". The DB writes a change row (``MaterialChanges``)
from triggers whenever a key's state or a version changes, whoever changed it
(any process, any node); every process follows the feed here and releases the
named versions' session objects in each key store that keeps them
(``WrappedKeys.release``). The same thread polls the domain keys
(``DomainKeyService.poll``), so a retiring domain key's objects go too.

Change ids come from a sequence and may commit out of order (PostgreSQL), so a
change can appear below the highest id already read. The follower keeps a
floor below which every id was read, re-reads from it, and lets a missing id
(a transaction still open, or a rolled-back sequence value that never
commits) hold the floor for at most ``gap_seconds``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from datetime import timedelta

from hsmstore.core.feed_cursor import FeedCursor
from hsmstore.core.keys.domain_keys import DomainKeyService
from hsmstore.core.ports import Clock, KeyStores
from hsmstore.core.ports.wrapped_keys import MaterialChanges, WrappedKeys

log = logging.getLogger(__name__)

FOLLOW_INTERVAL_SECONDS = 0.25
"""Four reads a second: well within the 1 s staleness bound."""
GAP_SECONDS = 5.0
"""How long a missing id holds the floor: longer than any transaction that writes a change."""
READ_LIMIT = 5_000
PRUNE_AFTER = timedelta(minutes=10)
"""Changes older than this are deleted: every live process read them long ago."""


class MaterialFollower:
    """A daemon thread: the change feed -> ``WrappedKeys.release``, and the domain keys' poll."""

    def __init__(
        self,
        changes: MaterialChanges,
        key_stores: KeyStores,
        domain_keys: DomainKeyService | None,
        clock: Clock,
        interval: float = FOLLOW_INTERVAL_SECONDS,
        gap_seconds: float = GAP_SECONDS,
    ) -> None:
        self._changes = changes
        self._key_stores = key_stores
        self._domain_keys = domain_keys
        self._clock = clock
        self._interval = interval
        self._cursor = FeedCursor(gap_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._cursor.start_at(self._changes.latest_material_change_id())
        self._thread = threading.Thread(target=self._loop, name="material-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.follow_once()
            except Exception:  # a DB outage: cached objects stay until the DB answers again
                log.warning("cannot read the material change feed; trying again", exc_info=True)

    def follow_once(self) -> int:
        """Apply every change not yet applied; poll the domain keys. Returns how many were new."""
        if self._cursor.floor is None:
            self._cursor.start_at(self._changes.latest_material_change_id())
        applied = 0
        after = self._cursor.floor
        assert after is not None
        while True:
            rows = self._changes.material_changes_after(after, READ_LIMIT)
            unread = set(self._cursor.unread(change_id for change_id, _ in rows))
            if unread:
                self.release({token_id for change_id, token_id in rows if change_id in unread})
                self._cursor.applied(unread)
                applied += len(unread)
            if len(rows) < READ_LIMIT:
                break
            after = rows[-1][0]
        self._cursor.advance()
        if self._domain_keys is not None:
            self._domain_keys.poll()
        return applied

    def release(self, token_ids: Collection[bytes]) -> None:
        """Destroy these versions' cached session objects in every key store that keeps any."""
        for store in self._key_stores.all():
            if not isinstance(store, WrappedKeys):
                continue
            try:
                store.release(token_ids)
            except Exception as error:  # a custom store whose token does not answer holds nothing usable
                log.debug("key store %s: cached material not released: %s", store.key_store_id, error)

    def prune(self) -> int:
        """The job that deletes changes older than :data:`PRUNE_AFTER`."""
        return self._changes.prune_material_changes(self._clock.now() - PRUNE_AFTER)
