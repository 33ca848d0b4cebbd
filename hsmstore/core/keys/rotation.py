"""Key rotation: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
RotateKeyOnDemand, ListKeyRotations, and the automatic rotations the scheduler runs.

AWS: rotation makes new key material and keeps every earlier version for
decryption; automatic rotation happens every ``RotationPeriodInDays``
(90-2560, default 365), and "up to 25 on-demand rotations per key".
"""

from __future__ import annotations

import contextvars
import logging
import time
from datetime import datetime, timedelta

from hsmstore.core.audit import capture
from hsmstore.core.failpoints import Failpoint, no_failpoint
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.material import token_label
from hsmstore.core.keys.residency import VersionResidency, discard_material
from hsmstore.core.keys.results import RotationEntry, RotationStatus
from hsmstore.core.keys.states import Operation
from hsmstore.core.model import (
    Caller,
    KeyRecord,
    KeySpec,
    KeyUsage,
    KeyVersion,
    Origin,
    RotationType,
    VersionState,
    new_token_id,
)
from hsmstore.core.paging import Page, check_limit, decode_marker, encode_marker
from hsmstore.core.ports import Clock, KeyStores, MetadataStore
from hsmstore.errors import (
    InvalidMarkerException,
    KMSInternalException,
    UnsupportedOperationException,
    ValidationException,
)

log = logging.getLogger(__name__)

MAX_ON_DEMAND_ROTATIONS = 25
ROTATION_PERIOD_DAYS = (90, 2560, 365)  # AWS RotationPeriodInDays: min, max, default
ROTATION_RETRY_SECONDS = 10.0
JOB_BATCH_SIZE = 100


class KeyRotation:
    def __init__(
        self,
        gate: KeyGate,
        store: MetadataStore,
        key_stores: KeyStores,
        clock: Clock,
        failpoint: Failpoint = no_failpoint,
        residency: VersionResidency | None = None,
    ) -> None:
        """``residency``: where a new version's material goes (core/keys/residency.py, issue 18);
        None makes every version a token object."""
        self._residency = residency or VersionResidency(key_stores, failpoint=failpoint)
        self._gate = gate
        self._store = store
        self._key_stores = key_stores
        self._clock = clock
        self._failpoint = failpoint

    def enable_key_rotation(self, caller: Caller, key_id: str, rotation_period_in_days: int | None) -> None:
        """EnableKeyRotation: the first rotation comes one period after it is enabled."""
        low, high, default = ROTATION_PERIOD_DAYS
        period = default if rotation_period_in_days is None else rotation_period_in_days
        if not low <= period <= high:
            raise ValidationException(f"RotationPeriodInDays must be between {low} and {high}")
        key = self._gate.admit(caller, key_id, Operation.ENABLE_KEY_ROTATION, fresh=True)
        _require_rotatable(key)
        next_date = self._clock.now() + timedelta(days=period)
        capture.change(lambda record: self._store.set_rotation(key.key_id, period, next_date, audit=record))
        self._gate.forget_key(key.key_id)

    def disable_key_rotation(self, caller: Caller, key_id: str) -> None:
        key = self._gate.admit(caller, key_id, Operation.DISABLE_KEY_ROTATION, fresh=True)
        _require_rotatable(key)
        capture.change(lambda record: self._store.set_rotation(key.key_id, None, None, audit=record))
        self._gate.forget_key(key.key_id)

    def get_key_rotation_status(self, caller: Caller, key_id: str) -> RotationStatus:
        """AWS: asymmetric and HMAC keys answer KeyRotationEnabled false (they can never enable it)."""
        key = self._gate.admit(caller, key_id, Operation.GET_KEY_ROTATION_STATUS)
        return RotationStatus(
            self._gate.arn(key), key.rotation_enabled, key.rotation_period_days, key.next_rotation_date
        )

    def rotate_key_on_demand(self, caller: Caller, key_id: str) -> str:
        """RotateKeyOnDemand: a new version now; the automatic schedule is unchanged.

        Every rotation of a key contends for the next version number, so a
        concurrent rotation makes this one wait and then rotate once more:
        each answered call is exactly one rotation.
        """
        deadline = time.monotonic() + ROTATION_RETRY_SECONDS
        while True:
            key = self._gate.admit(caller, key_id, Operation.ROTATE_KEY_ON_DEMAND, fresh=True)
            _require_rotatable(key)
            if self._rotate(key, RotationType.ON_DEMAND, next_rotation_date=None):
                return self._gate.arn(key)
            if time.monotonic() > deadline:
                raise KMSInternalException("Another rotation of this key is still in progress; retry")
            time.sleep(0.02)

    def rotate_due_keys(self) -> int:
        """The scheduler: one automatic rotation per due key, once across every process.

        Disabled and pending-deletion keys are not listed as due, so their
        rotation is skipped and resumes when they are enabled again (AWS).
        """
        rotated = 0
        now = self._clock.now()
        for key in self._store.list_due_rotations(now, JOB_BATCH_SIZE):
            assert key.rotation_period_days is not None
            if key.key_spec is not KeySpec.SYMMETRIC_DEFAULT or key.origin is Origin.EXTERNAL:
                continue  # never enabled for them (_require_rotatable); a stray row is not rotated
            next_date = now + timedelta(days=key.rotation_period_days)
            if self._rotate(key, RotationType.AUTOMATIC, next_rotation_date=next_date):
                rotated += 1
        return rotated

    def rotate_for_usage_limit(self, key: KeyRecord) -> bool:
        """A new version because the current one reached the AES-GCM usage limit (issue 18,
        NIST SP 800-38D §8.3; core/keys/usage_limit.py). False when another rotation took n+1.

        AWS has no such rotation: it is recorded as AUTOMATIC, is not counted against the
        on-demand quota, and keeps the key's automatic schedule (``next_rotation_date``). It runs
        outside the encrypting call's audit capture, as the scheduler's rotations do, so that
        call's record is not committed with it.
        """
        return contextvars.Context().run(self._rotate, key, RotationType.AUTOMATIC, None)

    def list_key_rotations(
        self, caller: Caller, key_id: str, limit: int | None, marker: str
    ) -> Page[RotationEntry]:
        """ListKeyRotations: every completed rotation (not the original material), oldest first."""
        page_size = check_limit(limit)
        after = _decode_version_marker(marker) if marker else 1
        key = self._gate.admit(caller, key_id, Operation.LIST_KEY_ROTATIONS)
        rotations = [
            v
            for v in self._store.list_versions(key.key_id)
            if v.version > after and v.state is VersionState.ACTIVE and v.rotation_type is not None
        ]
        truncated = len(rotations) > page_size
        rotations = rotations[:page_size]
        entries = [
            RotationEntry(self._gate.arn(key), v.creation_date, v.rotation_type.value)  # type: ignore[union-attr]
            for v in rotations
        ]
        return Page(entries, encode_marker("r", str(rotations[-1].version)) if truncated else "", truncated)

    def roll_back(self, version: KeyVersion) -> None:
        """Claim the version (PENDING -> ABANDONED), then destroy, then delete (as CreateKey's rollback)."""
        try:
            if not self._store.abandon_version(version.key_id, version.version, version.token_id):
                return
            discard_material(self._key_stores, version.material)
            self._store.delete_version(
                version.key_id, version.version, version.token_id, abandoned_at=self._clock.now()
            )
        except Exception:
            log.exception("could not roll back an interrupted rotation; recovery will retry")

    def _rotate(
        self, key: KeyRecord, rotation_type: RotationType, next_rotation_date: datetime | None
    ) -> bool:
        """Make version n+1: DB row PENDING, material, then the key moves to it.

        The same order as CreateKey, so a crash leaves a PENDING version that
        start-up recovery rolls back. False when another rotation took n+1.
        A new version lives in its key's key store, as a token object or wrapped
        (``keys/residency.py``: decided here, at insert).
        """
        version = KeyVersion(
            key.key_id,
            key.current_version + 1,
            new_token_id(),
            VersionState.PENDING,
            self._clock.now(),
            rotation_type,
            key_store_id=key.key_store_id,
            residency=self._residency.residency_for(key),
        )
        if not self._store.insert_pending_version(version, MAX_ON_DEMAND_ROTATIONS):
            return False
        self._failpoint("rotate.after_db_insert")
        try:
            if not self._residency.make_symmetric(
                version, token_label(key.key_id, version.version), "rotate"
            ):
                raise KMSInternalException("The rotation took too long and was rolled back; retry")
            self._failpoint("rotate.after_token_create")
            capture.note_key(self._gate.arn(key), version.version)
            finished = capture.change(
                lambda record: self._store.finish_rotation(
                    key.key_id, version.version, version.token_id, next_rotation_date, audit=record
                )
            )
            self._gate.forget_key(key.key_id)
        except BaseException:
            self.roll_back(version)
            raise
        if not finished:
            self.roll_back(version)
        return finished


def _require_rotatable(key: KeyRecord) -> None:
    """AWS: "You cannot perform this operation on a non-symmetric key or a key with non-ENCRYPT_DECRYPT
    key usage." (UnsupportedOperationException): asymmetric and HMAC keys are never rotated; nor are
    keys with imported material (issue 22: "Rotation of imported keys is refused")."""
    if key.key_spec is not KeySpec.SYMMETRIC_DEFAULT or key.key_usage is not KeyUsage.ENCRYPT_DECRYPT:
        raise UnsupportedOperationException(
            "You cannot perform this operation on a non-symmetric key "
            "or a key with non-ENCRYPT_DECRYPT key usage."
        )
    if key.origin is Origin.EXTERNAL:
        raise UnsupportedOperationException(
            f"Key '{key.key_id}' has imported key material (Origin EXTERNAL): it cannot be rotated"
        )


def _decode_version_marker(marker: str) -> int:
    value = decode_marker("r", marker)
    if not value.isdigit():
        raise InvalidMarkerException("The marker is not valid")
    return int(value)
