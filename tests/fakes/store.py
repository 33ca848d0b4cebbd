"""An in-memory ``MetadataStore`` for unit tests.

It behaves like ``hsmstore.store.sql.SqlMetadataStore`` (the contract tests in
``tests/contract/test_metadata_store.py`` run against both): the same errors,
the same orders, datetimes normalised to UTC, and one lock so that it can be
used from several threads like the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from hsmstore import errors
from hsmstore.core.model import (
    AliasRecord,
    DestructionRecord,
    KeyRecord,
    KeyState,
    KeyVersion,
    PendingCreation,
    RotationType,
    VersionState,
)


class FakeMetadataStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, KeyRecord] = {}
        self._versions: dict[tuple[str, int], KeyVersion] = {}
        self._aliases: dict[tuple[str, str], AliasRecord] = {}
        self._tags: dict[str, dict[str, str]] = {}
        self._destructions: dict[tuple[str, int], DestructionRecord] = {}

    # -- creation -------------------------------------------------------

    def insert_creating_key(self, key: KeyRecord, version: KeyVersion) -> None:
        if key.state is not KeyState.CREATING:
            raise ValueError(f"a new key must be CREATING, not {key.state}")
        if version.state is not VersionState.PENDING:
            raise ValueError(f"a new key's first version must be PENDING, not {version.state}")
        if version.key_id != key.key_id:
            raise ValueError("the version belongs to another key")
        key = replace(
            key,
            creation_date=_utc(key.creation_date),
            deletion_date=None if key.deletion_date is None else _utc(key.deletion_date),
        )
        version = replace(version, creation_date=_utc(version.creation_date))
        with self._lock:
            token_ids = {existing.token_id for existing in self._versions.values()}
            if key.key_id in self._keys or version.token_id in token_ids:
                raise errors.AlreadyExistsException(f"key {key.key_id} or its token object id already exists")
            self._keys[key.key_id] = key
            self._versions[(version.key_id, version.version)] = version

    def finish_creating_key(self, key_id: str) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            if key.state is not KeyState.CREATING:
                return False
            self._keys[key_id] = key.with_state(KeyState.ENABLED)
            for version_id, version in self._versions.items():
                if version.key_id == key_id and version.state is VersionState.PENDING:
                    self._versions[version_id] = replace(version, state=VersionState.ACTIVE)
            return True

    def claim_failed_creation(self, key_id: str) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                return True
            if key.state is KeyState.CREATING:
                self._keys[key_id] = key.with_state(KeyState.FAILED)
                return True
            return key.state is KeyState.FAILED

    def list_pending_creations(self, created_before: datetime) -> Sequence[PendingCreation]:
        created_before = _utc(created_before)
        with self._lock:
            pending = sorted(
                (
                    key
                    for key in self._keys.values()
                    if (key.state is KeyState.CREATING and key.creation_date < created_before)
                    or key.state is KeyState.FAILED
                ),
                key=lambda key: (key.creation_date, key.key_id),
            )
            return [PendingCreation(key=key, versions=self._versions_of(key.key_id)) for key in pending]

    def delete_key(self, key_id: str) -> None:
        with self._lock:
            self._keys.pop(key_id, None)
            for version_id in [version_id for version_id in self._versions if version_id[0] == key_id]:
                del self._versions[version_id]
            for alias_id, alias in list(self._aliases.items()):
                if alias.target_key_id == key_id:
                    del self._aliases[alias_id]
            self._tags.pop(key_id, None)

    # -- keys -----------------------------------------------------------

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            return self._keys.get(key_id)

    def get_version(self, key_id: str, version: int) -> KeyVersion | None:
        with self._lock:
            return self._versions.get((key_id, version))

    def list_versions(self, key_id: str) -> Sequence[KeyVersion]:
        with self._lock:
            return self._versions_of(key_id)

    def list_keys(self, tenant: str, limit: int, after_key_id: str | None) -> Sequence[KeyRecord]:
        _require_positive_limit(limit)
        with self._lock:
            selected = sorted(
                (
                    key
                    for key in self._keys.values()
                    if key.tenant == tenant
                    and key.state.exists_for_callers
                    and (after_key_id is None or key.key_id > after_key_id)
                ),
                key=lambda key: key.key_id,
            )
        return selected[:limit]

    def update_key_state(self, key_id: str, expected: KeyState, new_state: KeyState) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.state is not expected:
                return False
            self._keys[key_id] = key.with_state(new_state)
            return True

    def update_description(self, key_id: str, description: str) -> None:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            self._keys[key_id] = replace(key, description=description)

    # -- scheduled deletion ---------------------------------------------

    def schedule_deletion(
        self, key_id: str, expected: KeyState, deletion_date: datetime, pending_window_days: int
    ) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.state is not expected:
                return False
            self._keys[key_id] = replace(
                key,
                state=KeyState.PENDING_DELETION,
                deletion_date=_utc(deletion_date),
                pending_window_days=pending_window_days,
            )
            return True

    def cancel_deletion(self, key_id: str) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.state is not KeyState.PENDING_DELETION:
                return False
            self._keys[key_id] = replace(
                key, state=KeyState.DISABLED, deletion_date=None, pending_window_days=None
            )
            return True

    def list_keys_to_destroy(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        now = _utc(now)
        _require_positive_limit(limit)
        with self._lock:
            selected = [
                key
                for key in self._keys.values()
                if key.state is KeyState.DESTROYING
                or (
                    key.state is KeyState.PENDING_DELETION
                    and key.deletion_date is not None
                    and key.deletion_date <= now
                )
            ]
        selected.sort(key=lambda key: (key.deletion_date or now, key.key_id))
        return selected[:limit]

    def begin_destruction(self, key_id: str) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.state not in (KeyState.PENDING_DELETION, KeyState.DESTROYING):
                return False
            self._keys[key_id] = key.with_state(KeyState.DESTROYING)
            for version in self._versions_of(key_id):
                self._destructions.setdefault(
                    (key_id, version.version),
                    DestructionRecord(
                        key_id,
                        key.tenant,
                        version.version,
                        version.token_id,
                        key.deletion_date or version.creation_date,
                    ),
                )
            return True

    def mark_version_destroyed(self, key_id: str, version: int, destroyed_at: datetime) -> None:
        with self._lock:
            record = self._destructions.get((key_id, version))
            if record is not None and record.destroyed_at is None:
                self._destructions[(key_id, version)] = replace(record, destroyed_at=_utc(destroyed_at))

    def list_destructions(self, key_id: str | None = None) -> Sequence[DestructionRecord]:
        with self._lock:
            return [
                record
                for _, record in sorted(self._destructions.items())
                if key_id is None or record.key_id == key_id
            ]

    # -- rotation ---------------------------------------------------------

    def set_rotation(self, key_id: str, period_days: int | None, next_rotation_date: datetime | None) -> None:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            self._keys[key_id] = replace(
                key,
                rotation_period_days=period_days,
                next_rotation_date=None if next_rotation_date is None else _utc(next_rotation_date),
            )

    def insert_pending_version(self, version: KeyVersion, max_on_demand_rotations: int) -> bool:
        if version.state is not VersionState.PENDING:
            raise ValueError("a new version must be PENDING")
        with self._lock:
            if (version.key_id, version.version) in self._versions:
                return False
            if version.rotation_type is RotationType.ON_DEMAND:
                count = sum(
                    1 for v in self._versions_of(version.key_id) if v.rotation_type is RotationType.ON_DEMAND
                )
                if count >= max_on_demand_rotations:
                    raise errors.LimitExceededException(
                        f"The key has reached the limit of {max_on_demand_rotations} on-demand rotations"
                    )
            self._versions[(version.key_id, version.version)] = replace(
                version, creation_date=_utc(version.creation_date)
            )
            return True

    def finish_rotation(
        self, key_id: str, version: int, token_id: bytes, next_rotation_date: datetime | None
    ) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            pending = self._versions.get((key_id, version))
            if key is None or key.current_version != version - 1:
                return False
            if pending is None or pending.state is not VersionState.PENDING or pending.token_id != token_id:
                return False
            self._versions[(key_id, version)] = replace(pending, state=VersionState.ACTIVE)
            self._keys[key_id] = replace(
                key,
                current_version=version,
                next_rotation_date=key.next_rotation_date
                if next_rotation_date is None
                else _utc(next_rotation_date),
            )
            return True

    def abandon_version(self, key_id: str, version: int, token_id: bytes) -> bool:
        with self._lock:
            existing = self._versions.get((key_id, version))
            if existing is None or existing.token_id != token_id:
                return True
            if existing.state is VersionState.PENDING:
                self._versions[(key_id, version)] = replace(existing, state=VersionState.ABANDONED)
                return True
            return existing.state is VersionState.ABANDONED

    def delete_version(self, key_id: str, version: int, token_id: bytes) -> None:
        with self._lock:
            existing = self._versions.get((key_id, version))
            if (
                existing is not None
                and existing.token_id == token_id
                and existing.state is not VersionState.ACTIVE
            ):
                del self._versions[(key_id, version)]

    def list_pending_versions(self, created_before: datetime) -> Sequence[KeyVersion]:
        created_before = _utc(created_before)
        with self._lock:
            return sorted(
                (
                    version
                    for version in self._versions.values()
                    if (
                        (version.state is VersionState.PENDING and version.creation_date < created_before)
                        or version.state is VersionState.ABANDONED
                    )
                    and version.key_id in self._keys
                    and self._keys[version.key_id].state.exists_for_callers
                ),
                key=lambda version: version.creation_date,
            )

    def list_due_rotations(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        now = _utc(now)
        _require_positive_limit(limit)
        with self._lock:
            due = [
                key
                for key in self._keys.values()
                if key.state is KeyState.ENABLED
                and key.rotation_period_days is not None
                and key.next_rotation_date is not None
                and key.next_rotation_date <= now
            ]
        due.sort(key=lambda key: (key.next_rotation_date or now, key.key_id))
        return due[:limit]

    # -- tags -----------------------------------------------------------------

    def put_tags(self, key_id: str, tags: Mapping[str, str], max_tags: int) -> None:
        with self._lock:
            if key_id not in self._keys:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            current = self._tags.setdefault(key_id, {})
            if len(set(current) | set(tags)) > max_tags:
                raise errors.LimitExceededException(f"A key can have at most {max_tags} tags")
            current.update(tags)

    def remove_tags(self, key_id: str, tag_keys: Sequence[str]) -> None:
        with self._lock:
            for tag_key in tag_keys:
                self._tags.get(key_id, {}).pop(tag_key, None)

    def list_tags(self, key_id: str) -> Mapping[str, str]:
        with self._lock:
            return dict(sorted(self._tags.get(key_id, {}).items()))

    # -- aliases --------------------------------------------------------

    def create_alias(self, alias: AliasRecord) -> None:
        alias = replace(
            alias,
            creation_date=_utc(alias.creation_date),
            last_updated_date=_utc(alias.last_updated_date),
        )
        with self._lock:
            if alias.target_key_id not in self._keys:
                raise errors.NotFoundException(f"key {alias.target_key_id} does not exist")
            alias_id = (alias.tenant, alias.alias_name)
            if alias_id in self._aliases:
                raise errors.AlreadyExistsException(f"alias {alias.alias_name} already exists")
            self._aliases[alias_id] = alias

    def update_alias(self, tenant: str, alias_name: str, target_key_id: str, now: datetime) -> bool:
        now = _utc(now)
        with self._lock:
            if target_key_id not in self._keys:
                raise errors.NotFoundException(f"key {target_key_id} does not exist")
            alias = self._aliases.get((tenant, alias_name))
            if alias is None:
                return False
            self._aliases[(tenant, alias_name)] = replace(
                alias, target_key_id=target_key_id, last_updated_date=now
            )
            return True

    def delete_alias(self, tenant: str, alias_name: str) -> bool:
        with self._lock:
            return self._aliases.pop((tenant, alias_name), None) is not None

    def get_alias(self, tenant: str, alias_name: str) -> AliasRecord | None:
        with self._lock:
            return self._aliases.get((tenant, alias_name))

    def list_aliases(
        self, tenant: str, limit: int, after_alias_name: str | None, key_id: str | None
    ) -> Sequence[AliasRecord]:
        _require_positive_limit(limit)
        with self._lock:
            selected = sorted(
                (
                    alias
                    for alias in self._aliases.values()
                    if alias.tenant == tenant
                    and (after_alias_name is None or alias.alias_name > after_alias_name)
                    and (key_id is None or alias.target_key_id == key_id)
                ),
                key=lambda alias: alias.alias_name,
            )
        return selected[:limit]

    def ping(self) -> None:
        """Memory always answers."""

    def _versions_of(self, key_id: str) -> list[KeyVersion]:
        """Caller holds the lock."""
        return sorted(
            (version for version in self._versions.values() if version.key_id == key_id),
            key=lambda version: version.version,
        )


def _utc(value: datetime) -> datetime:
    """Refuse naive datetimes and normalise to UTC, as the SQL store does."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the metadata store only takes timezone-aware datetimes")
    return value.astimezone(UTC)


def _require_positive_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
