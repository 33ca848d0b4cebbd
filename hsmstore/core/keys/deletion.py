"""ScheduleKeyDeletion, CancelKeyDeletion, and the reaper that destroys keys past their window.

AWS: "a waiting period of 7-30 days (default 30)"; a cancelled deletion
leaves the key DISABLED; once the window ends the key material is destroyed
and the key cannot be recovered.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from hsmstore.core.audit import capture
from hsmstore.core.failpoints import Failpoint, no_failpoint
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.material import VersionMaterial
from hsmstore.core.keys.results import KeyDescription
from hsmstore.core.keys.states import Operation, next_state
from hsmstore.core.model import Caller, KeyRecord, KeyState
from hsmstore.core.ports import Clock, KeyStores, MetadataStore
from hsmstore.errors import (
    DependencyUnavailableException,
    KMSInternalException,
    KMSInvalidStateException,
    ValidationException,
)

log = logging.getLogger(__name__)

PENDING_WINDOW_DAYS = (7, 30, 30)  # AWS PendingWindowInDays: min, max, default
STATE_CHANGE_ATTEMPTS = 5
JOB_BATCH_SIZE = 100


class KeyDeletion:
    def __init__(
        self,
        gate: KeyGate,
        store: MetadataStore,
        key_stores: KeyStores,
        material: VersionMaterial,
        clock: Clock,
        failpoint: Failpoint = no_failpoint,
    ) -> None:
        self._gate = gate
        self._store = store
        self._key_stores = key_stores
        self._material = material
        self._clock = clock
        self._failpoint = failpoint

    def schedule_key_deletion(
        self, caller: Caller, key_id: str, pending_window_in_days: int | None
    ) -> KeyDescription:
        """ScheduleKeyDeletion: "a waiting period of 7-30 days (default 30)", then the reaper."""
        low, high, default = PENDING_WINDOW_DAYS
        days = default if pending_window_in_days is None else pending_window_in_days
        if not low <= days <= high:
            raise ValidationException(f"PendingWindowInDays must be between {low} and {high}")
        for _attempt in range(STATE_CHANGE_ATTEMPTS):
            # A lost compare-and-set means another call changed the key: read it again and
            # answer from its new state (two ScheduleKeyDeletion at once: the second one is
            # KMSInvalidStateException, as in AWS, not an internal error).
            key = self._gate.admit(caller, key_id, Operation.SCHEDULE_KEY_DELETION, fresh=True)
            changed = self._schedule(key, days)
            self._gate.forget_key(key.key_id)
            if changed:
                return self._gate.describe(
                    self._gate.resolve(caller, key.key_id, "kms:ScheduleKeyDeletion", fresh=True)
                )
        raise KMSInternalException("The key state changed concurrently; retry the request")

    def _schedule(self, key: KeyRecord, days: int) -> bool:
        """One compare-and-set from the state just read; False when another call changed it first."""
        deletion_date = self._clock.now() + timedelta(days=days)
        return capture.change(
            lambda record: self._store.schedule_deletion(
                key.key_id, key.state, deletion_date, days, audit=record
            )
        )

    def cancel_key_deletion(self, caller: Caller, key_id: str) -> str:
        """CancelKeyDeletion: the key comes back DISABLED, as in AWS."""
        key = self._gate.admit(caller, key_id, Operation.CANCEL_KEY_DELETION, fresh=True)
        cancelled = capture.change(lambda record: self._store.cancel_deletion(key.key_id, audit=record))
        self._gate.forget_key(key.key_id)
        if not cancelled:
            # The reaper claimed it in between: it can no longer be cancelled.
            next_state(KeyState.DESTROYING, Operation.CANCEL_KEY_DELETION, key.key_id)
        return self._gate.arn(key)

    def destroy_due_keys(self) -> int:
        """The reaper: destroy the material of every version of keys past their window.

        Crash-safe and idempotent: ``begin_destruction`` moves the key to
        DESTROYING and records its versions in one transaction (a cancelled
        deletion fails that compare-and-set and is never touched); each
        version's material is destroyed, then marked destroyed; the key row
        goes last, leaving a tombstone per version (``keys/junk_sweep.py``). A
        reaper killed half-way finds the DESTROYING key on its next run.
        """
        destroyed = 0
        for key in self._store.list_keys_to_destroy(self._clock.now(), JOB_BATCH_SIZE):
            if not self._store.begin_destruction(key.key_id):
                continue
            try:
                self._destroy_material(key.key_id)
            except (KMSInvalidStateException, DependencyUnavailableException) as exc:
                # Issue 17: its custom key store is disconnected or its token does not answer; the
                # key stays DESTROYING and the next run finishes it, the other keys go on now.
                log.warning("key %s: its material cannot be destroyed yet: %s", key.key_id, exc.message)
                continue
            self._store.delete_key(key.key_id, abandoned_at=self._clock.now())
            self._gate.forget_key(key.key_id)
            self._material.forget(key.key_id)
            log.info("destroyed key %s and its token objects", key.key_id)
            destroyed += 1
        return destroyed

    def _destroy_material(self, key_id: str) -> None:
        """Destroy each version's material not yet destroyed, marking each as it goes."""
        for record in self._store.list_destructions(key_id):
            if record.destroyed_at is None:
                self._key_stores.key_store(record.key_store_id).destroy_key(record.material)
                self._failpoint("reaper.after_destroy_object")
                self._store.mark_version_destroyed(key_id, record.version, self._clock.now())
