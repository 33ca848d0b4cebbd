"""The junk sweep: destroy the version objects on a token that this DB knows it abandoned.

A kill -9 can leave one that recovery never finds: its row was rolled back
while the object survived (e.g. still being written when the rollback
searched for it). Rollbacks and the reaper record the token ids they give up
on (``delete_key``/``delete_version`` with ``abandoned_at``), and an ABANDONED
version or a FAILED key names its own; only such an object (hsmstore label,
``keys/material.token_label``) is destroyed, once it has been seen so for
``grace`` (sightings are kept in this process). A row in use always wins, so a
CreateKey or rotation in flight is never swept. An object whose CKA_ID this DB
does not know at all is never destroyed: it is another DB's key (a wrong
``--db``, or another deployment on the token), and one warning says so.
Tombstones go once their object is destroyed or seen absent ``grace`` after
they were written, and after :data:`JUNK_TOMBSTONE_DAYS` in any case. Every
destruction is logged.

A token is walked only when there can be something to do: on the first sweep
of the process (which also reports unknown objects), while an abandoned
object is waiting out its grace, or while this DB holds a tombstone. A walk
visits every object under the token lock (linear on SoftHSM2, docs/hsm.md),
so an idle deployment does not pay it every period.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from hsmstore.core.keys.material import parse_token_label
from hsmstore.core.model import KeyMaterialRef
from hsmstore.core.ports import Clock, KeyStores, SymmetricKeyStore
from hsmstore.core.ports.metadata import TokenObjectTombstones

log = logging.getLogger(__name__)

JUNK_TOMBSTONE_DAYS = 7  # a tombstone is pruned after this, destroyed or not
JUNK_TOMBSTONE_BATCH = 1000  # tombstones checked for absence per sweep


class JunkSweep:
    def __init__(self, store: TokenObjectTombstones, key_stores: KeyStores, clock: Clock) -> None:
        self._store = store
        self._key_stores = key_stores
        self._clock = clock
        self._seen: dict[bytes, datetime] = {}  # token_id -> first sighting as junk
        self._unknown_reported = 0  # unknown objects last warned about
        self._walked = False  # the first sweep always walks the tokens

    def sweep_junk_objects(self, grace: timedelta) -> int:
        """One sweep of every key store's token (module docstring); how many objects it destroyed."""
        now = self._clock.now()
        if self._walked and not self._seen and not self._store.list_abandoned_token_objects(now, 1):
            self._store.prune_abandoned_token_objects(now - timedelta(days=JUNK_TOMBSTONE_DAYS))
            return 0
        self._walked = True
        still_junk: dict[bytes, datetime] = {}
        unknown: list[str] = []
        done: list[bytes] = []  # destroyed, or gone already: their tombstones go
        on_token: set[bytes] = set()
        destroyed = 0
        for key_store in self._key_stores.all():
            destroyed += self._sweep(key_store, grace, now, still_junk, unknown, done, on_token)
        self._seen = still_junk
        stale = self._store.list_abandoned_token_objects(now - grace, JUNK_TOMBSTONE_BATCH)
        done.extend(t.token_id for t in stale if t.token_id not in on_token)
        self._store.forget_abandoned_token_objects(done)
        self._store.prune_abandoned_token_objects(now - timedelta(days=JUNK_TOMBSTONE_DAYS))
        self._report_unknown_objects(unknown)
        return destroyed

    def _sweep(
        self,
        key_store: SymmetricKeyStore,
        grace: timedelta,
        now: datetime,
        still_junk: dict[bytes, datetime],
        unknown: list[str],
        done: list[bytes],
        on_token: set[bytes],
    ) -> int:
        listed = key_store.list_key_versions()  # before the rows: a row is committed before its object
        on_token.update(token_id for token_id, _ in listed)
        labelled = [(token_id, label) for token_id, label in listed if parse_token_label(label)]
        known = self._store.known_token_ids([token_id for token_id, _ in labelled])
        destroyed = 0
        for token_id, label in labelled:
            if token_id in known.in_use:
                continue
            if token_id not in known.abandoned:
                unknown.append(label)
                continue
            first_seen = self._seen.get(token_id, now)
            if now - first_seen < grace:
                still_junk[token_id] = first_seen
                continue
            if key_store.destroy_key(KeyMaterialRef.token_object(token_id, key_store.key_store_id)):
                destroyed += 1
                log.warning(
                    "destroyed junk token object %s labelled %r: this DB abandoned it", token_id.hex(), label
                )
            done.append(token_id)
        return destroyed

    def _report_unknown_objects(self, labels: list[str]) -> None:
        """One warning when the number of unknown hsmstore objects changes (so once per process)."""
        if labels and len(labels) != self._unknown_reported:
            log.warning(
                "the token holds %d hsmstore key objects this metadata DB does not know (first: %s): "
                "is --db the DB for this token? they are left alone",
                len(labels),
                labels[0],
            )
        self._unknown_reported = len(labels)
