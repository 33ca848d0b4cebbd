"""An in-memory ``MetadataStore`` for unit tests.

It behaves like ``hsmstore.store.sql.SqlMetadataStore`` (the contract tests in
``tests/contract/test_metadata_store.py`` run against both): the same errors,
the same orders, datetimes normalised to UTC, and one lock so that it can be
used from several threads like the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from hsmstore import errors
from hsmstore.core.model import (
    AliasRecord,
    KeyRecord,
    KeyState,
    KeyVersion,
    PendingCreation,
    VersionState,
)


class FakeMetadataStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, KeyRecord] = {}
        self._versions: dict[tuple[str, int], KeyVersion] = {}
        self._aliases: dict[tuple[str, str], AliasRecord] = {}

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

    def finish_creating_key(self, key_id: str) -> None:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            if key.state is not KeyState.CREATING:
                return
            self._keys[key_id] = key.with_state(KeyState.ENABLED)
            for version_id, version in self._versions.items():
                if version.key_id == key_id and version.state is VersionState.PENDING:
                    self._versions[version_id] = replace(version, state=VersionState.ACTIVE)

    def list_pending_creations(self, created_before: datetime) -> Sequence[PendingCreation]:
        created_before = _utc(created_before)
        with self._lock:
            pending = sorted(
                (
                    key
                    for key in self._keys.values()
                    if key.state is KeyState.CREATING and key.creation_date < created_before
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
                    and key.state is not KeyState.CREATING
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
