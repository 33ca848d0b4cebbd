"""An in-memory ``MetadataStore`` and ``AuditLog`` for unit tests.

It behaves like ``hsmstore.store.sql.SqlMetadataStore`` (the contract tests in
``tests/contract/test_metadata_store.py`` run against both): the same errors,
the same orders, datetimes normalised to UTC, and one lock so that it can be
used from several threads like the real one.

The audit trail is the same hash chain as the SQL store's (core/audit/record.py),
indexed by the same fields (``core/audit/fields.py``). ``audit=`` on a
management write appends the record under the same lock as the change, and
only if the change happened: the in-memory version of "one transaction".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from hsmstore import errors
from hsmstore.core.access.grants import GrantRecord
from hsmstore.core.audit.chain import GENESIS_HASH, StoredAuditEvent, chain_hash
from hsmstore.core.audit.fields import AuditFields, audit_fields
from hsmstore.core.audit.record import SerializedRecord, serialized
from hsmstore.core.key_stores.model import CustomKeyStore
from hsmstore.core.model import (
    DEFAULT_KEY_STORE_ID,
    AliasRecord,
    DestructionRecord,
    KeyManager,
    KeyRecord,
    KeyState,
    KeyVersion,
    Origin,
    PendingCreation,
    Residency,
    RotationType,
    VersionState,
    WrappedMaterial,
)
from hsmstore.core.ports import (
    AbandonedTokenObject,
    AuditQuery,
    AuditSeal,
    IdentityPolicyRecord,
    KnownTokenIds,
)
from hsmstore.core.ports import metadata_changes as changed
from tests.fakes.custom_key_stores import FakeCustomKeyStoreRecords
from tests.fakes.key_imports import FakeKeyImportRecords
from tests.fakes.metadata_changes import FakeMetadataChanges, FeedRows, KeyFeedRows, MetadataFeed
from tests.fakes.wrapped_key_records import FakeWrappedKeyRecords, MaterialFeed, VersionRows

ITER_BATCH = 1000

Audit = Mapping[str, Any] | None


@dataclass(frozen=True)
class _Row:
    fields: AuditFields
    event: StoredAuditEvent


class FakeMetadataStore(
    FakeCustomKeyStoreRecords, FakeKeyImportRecords, FakeWrappedKeyRecords, FakeMetadataChanges
):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Issue 18: the rows record migration 0012's change feed (tests/fakes/wrapped_key_records.py).
        self._feed = MaterialFeed()
        self._versions: VersionRows = VersionRows(self._feed)
        # Issue 18: and migration 0013's metadata change feed (tests/fakes/metadata_changes.py).
        self._metadata_feed = feed = MetadataFeed()
        self._keys: dict[str, KeyRecord] = KeyFeedRows(self._feed, self._versions, feed)
        self._public_keys: dict[tuple[str, int], bytes] = {}  # issue 23: RSA and EC versions only
        self._aliases: dict[tuple[str, str], AliasRecord] = FeedRows(
            feed, changed.ALIAS, lambda alias_id, _: "/".join(alias_id)
        )
        self._tags: dict[str, dict[str, str]] = {}
        self._destructions: dict[tuple[str, int], DestructionRecord] = {}
        self._tombstones: dict[bytes, AbandonedTokenObject] = {}
        self._events: dict[int, _Row] = {}  # seq -> row; dicts keep insertion (= seq) order
        self._head: tuple[int, bytes] = (0, GENESIS_HASH)
        self._anchor: tuple[int, bytes] = (0, GENESIS_HASH)
        self._seals: dict[int, AuditSeal] = {}
        self._spool_offsets: dict[str, int] = {}
        self._key_policies: dict[str, str] = FeedRows(feed, changed.KEY_POLICY, lambda key_id, _: key_id)
        self._grants: dict[str, GrantRecord] = FeedRows(feed, changed.GRANTS, lambda _, grant: grant.key_id)
        self._identity_policies: dict[tuple[str, str, str], IdentityPolicyRecord] = FeedRows(
            feed, changed.IDENTITY_POLICIES, lambda policy_id, _: f"{policy_id[0]}/{policy_id[1]}"
        )
        self._custom_key_stores: dict[str, CustomKeyStore] = {}  # tests/fakes/custom_key_stores.py

    # -- creation -------------------------------------------------------

    def insert_creating_key(self, key: KeyRecord, version: KeyVersion, policy: str | None = None) -> None:
        if key.state is not KeyState.CREATING:
            raise ValueError(f"a new key must be CREATING, not {key.state}")
        if version.state is not VersionState.PENDING:
            raise ValueError(f"a new key's first version must be PENDING, not {version.state}")
        if version.key_id != key.key_id:
            raise ValueError("the version belongs to another key")
        if version.key_store_id != key.key_store_id:
            raise ValueError(
                f"the version is in key store {version.key_store_id!r}, its key in {key.key_store_id!r}"
            )
        with self._lock:
            self._insert_new_key(key, version, policy)

    def _insert_new_key(self, key: KeyRecord, version: KeyVersion, policy: str | None) -> None:
        """The lock is held."""
        key = replace(
            key,
            creation_date=_utc(key.creation_date),
            deletion_date=None if key.deletion_date is None else _utc(key.deletion_date),
        )
        version = replace(
            version,
            creation_date=_utc(version.creation_date),
            reservations_at_creation=self.reserved_total(),  # migration 0015's trigger
        )
        if key.key_store_id != DEFAULT_KEY_STORE_ID and key.key_store_id not in self._custom_key_stores:
            raise errors.CustomKeyStoreNotFoundException(
                f"custom key store {key.key_store_id} does not exist"
            )
        token_ids = {existing.token_id for existing in self._versions.values()}
        if key.key_id in self._keys or version.token_id in token_ids:
            raise errors.AlreadyExistsException(f"key {key.key_id} or its token object id already exists")
        self._keys[key.key_id] = key
        self._versions[(version.key_id, version.version)] = version
        if policy is not None:
            self._key_policies[key.key_id] = policy

    def insert_wrapped_key(
        self, key: KeyRecord, version: KeyVersion, policy: str | None = None, *, audit: Audit = None
    ) -> bool:
        if key.state is not KeyState.ENABLED or version.state is not VersionState.ACTIVE:
            raise ValueError("insert_wrapped_key takes an ENABLED key and its ACTIVE first version")
        if version.residency is not Residency.WRAPPED or version.wrapped is None:
            raise ValueError("insert_wrapped_key takes a WRAPPED version with its blob")
        with self._lock:
            if self._key_store_wrapping_under(version.wrapped.domain_key_id) != version.key_store_id:
                return False
            self._insert_new_key(key, version, policy)
            self._audit_change(audit)
        return True

    def finish_creating_key(
        self,
        key_id: str,
        *,
        audit: Audit = None,
        state: KeyState = KeyState.ENABLED,
        wrapped: WrappedMaterial | None = None,
    ) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            if key.state is not KeyState.CREATING:
                return False
            if wrapped is not None and not self._store_wrapped_material(key_id, wrapped):
                return False
            self._keys[key_id] = key.with_state(state)
            for version_id, version in self._versions.items():
                if version.key_id == key_id and version.state is VersionState.PENDING:
                    self._versions[version_id] = replace(version, state=VersionState.ACTIVE)
            self._audit_change(audit)
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

    def delete_key(self, key_id: str, *, abandoned_at: datetime | None = None) -> None:
        with self._lock:
            self._keys.pop(key_id, None)
            for version_id in [version_id for version_id in self._versions if version_id[0] == key_id]:
                self._public_keys.pop(version_id, None)
                self._abandon(self._versions.pop(version_id), abandoned_at)
            for alias_id, alias in list(self._aliases.items()):
                if alias.target_key_id == key_id:
                    del self._aliases[alias_id]
            self._tags.pop(key_id, None)
            self._key_policies.pop(key_id, None)
            for grant_id in [g.grant_id for g in self._grants.values() if g.key_id == key_id]:
                del self._grants[grant_id]

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

    def set_public_key(self, key_id: str, version: int, public_key: bytes) -> bool:
        if not public_key:
            raise ValueError("a public key must not be empty")
        with self._lock:
            found = self._versions.get((key_id, version))
            if found is None or found.state is not VersionState.PENDING:
                return False
            self._public_keys[(key_id, version)] = bytes(public_key)
            return True

    def get_public_key(self, key_id: str, version: int) -> bytes | None:
        with self._lock:
            if (key_id, version) not in self._versions:
                return None
            return self._public_keys.get((key_id, version))

    def count_keys_by_state(self) -> Mapping[KeyState, int]:
        with self._lock:
            counts: dict[KeyState, int] = {}
            for key in self._keys.values():
                counts[key.state] = counts.get(key.state, 0) + 1
            return counts

    def count_customer_keys(self, tenant: str) -> int:
        with self._lock:
            return sum(
                1
                for key in self._keys.values()
                if key.tenant == tenant and key.key_manager is KeyManager.CUSTOMER
            )

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

    def update_key_state(
        self, key_id: str, expected: KeyState, new_state: KeyState, *, audit: Audit = None
    ) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.state is not expected:
                return False
            self._keys[key_id] = key.with_state(new_state)
            self._audit_change(audit)
            return True

    def update_description(self, key_id: str, description: str, *, audit: Audit = None) -> None:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            self._keys[key_id] = replace(key, description=description)
            self._audit_change(audit)

    # -- scheduled deletion ---------------------------------------------

    def schedule_deletion(
        self,
        key_id: str,
        expected: KeyState,
        deletion_date: datetime,
        pending_window_days: int,
        *,
        audit: Audit = None,
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
            self._audit_change(audit)
            return True

    def cancel_deletion(self, key_id: str, *, audit: Audit = None) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.state is not KeyState.PENDING_DELETION:
                return False
            without_material = key.origin is Origin.EXTERNAL and key.expiration_model is None  # issue 22
            state = KeyState.PENDING_IMPORT if without_material else KeyState.DISABLED
            self._keys[key_id] = replace(key, state=state, deletion_date=None, pending_window_days=None)
            self._audit_change(audit)
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
                        key_store_id=version.key_store_id,
                        residency=version.residency,
                        domain_key_id=None if version.wrapped is None else version.wrapped.domain_key_id,
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

    def set_rotation(
        self,
        key_id: str,
        period_days: int | None,
        next_rotation_date: datetime | None,
        *,
        audit: Audit = None,
    ) -> None:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            self._keys[key_id] = replace(
                key,
                rotation_period_days=period_days,
                next_rotation_date=None if next_rotation_date is None else _utc(next_rotation_date),
            )
            self._audit_change(audit)

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
                version,
                creation_date=_utc(version.creation_date),
                reservations_at_creation=self.reserved_total(),
            )
            return True

    def finish_rotation(
        self,
        key_id: str,
        version: int,
        token_id: bytes,
        next_rotation_date: datetime | None,
        *,
        audit: Audit = None,
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
            self._audit_change(audit)
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

    def delete_version(
        self, key_id: str, version: int, token_id: bytes, *, abandoned_at: datetime | None = None
    ) -> None:
        with self._lock:
            existing = self._versions.get((key_id, version))
            if (
                existing is not None
                and existing.token_id == token_id
                and existing.state is not VersionState.ACTIVE
            ):
                self._public_keys.pop((key_id, version), None)
                self._abandon(self._versions.pop((key_id, version)), abandoned_at)

    def _abandon(self, version: KeyVersion, abandoned_at: datetime | None) -> None:
        """A tombstone for a version row just deleted (under the lock), if ``abandoned_at``."""
        if abandoned_at is not None:
            self._tombstones[version.token_id] = AbandonedTokenObject(
                version.token_id, version.key_id, version.version, _utc(abandoned_at)
            )

    # -- abandoned token objects (the junk sweep) -------------------------

    def known_token_ids(self, token_ids: Sequence[bytes]) -> KnownTokenIds:
        wanted = set(token_ids)
        in_use: set[bytes] = set()
        abandoned: set[bytes] = set()
        with self._lock:
            for version in self._versions.values():
                if version.token_id not in wanted:
                    continue
                key = self._keys.get(version.key_id)
                given_up = version.state is VersionState.ABANDONED or (
                    key is not None and key.state is KeyState.FAILED
                )
                (abandoned if given_up else in_use).add(version.token_id)
            abandoned.update(wanted & self._tombstones.keys())
        return KnownTokenIds(frozenset(in_use), frozenset(abandoned - in_use))

    def list_abandoned_token_objects(
        self, abandoned_before: datetime, limit: int
    ) -> Sequence[AbandonedTokenObject]:
        abandoned_before = _utc(abandoned_before)
        _require_positive_limit(limit)
        with self._lock:
            older = [t for t in self._tombstones.values() if t.abandoned_at < abandoned_before]
        return sorted(older, key=lambda t: (t.abandoned_at, t.token_id))[:limit]

    def forget_abandoned_token_objects(self, token_ids: Sequence[bytes]) -> None:
        with self._lock:
            for token_id in token_ids:
                self._tombstones.pop(token_id, None)

    def prune_abandoned_token_objects(self, abandoned_before: datetime) -> int:
        abandoned_before = _utc(abandoned_before)
        with self._lock:
            old = [t.token_id for t in self._tombstones.values() if t.abandoned_at < abandoned_before]
            for token_id in old:
                del self._tombstones[token_id]
        return len(old)

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

    def put_tags(self, key_id: str, tags: Mapping[str, str], max_tags: int, *, audit: Audit = None) -> None:
        with self._lock:
            if key_id not in self._keys:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            current = self._tags.setdefault(key_id, {})
            if len(set(current) | set(tags)) > max_tags:
                raise errors.LimitExceededException(f"A key can have at most {max_tags} tags")
            current.update(tags)
            self._audit_change(audit)

    def remove_tags(self, key_id: str, tag_keys: Sequence[str], *, audit: Audit = None) -> None:
        with self._lock:
            for tag_key in tag_keys:
                self._tags.get(key_id, {}).pop(tag_key, None)
            self._audit_change(audit)

    def list_tags(self, key_id: str) -> Mapping[str, str]:
        with self._lock:
            return dict(sorted(self._tags.get(key_id, {}).items()))

    # -- aliases --------------------------------------------------------

    def create_alias(self, alias: AliasRecord, *, audit: Audit = None) -> None:
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
            self._audit_change(audit)

    def update_alias(
        self, tenant: str, alias_name: str, target_key_id: str, now: datetime, *, audit: Audit = None
    ) -> bool:
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
            self._audit_change(audit)
            return True

    def delete_alias(self, tenant: str, alias_name: str, *, audit: Audit = None) -> bool:
        with self._lock:
            deleted = self._aliases.pop((tenant, alias_name), None) is not None
            if deleted:
                self._audit_change(audit)
            return deleted

    def get_alias(self, tenant: str, alias_name: str) -> AliasRecord | None:
        with self._lock:
            return self._aliases.get((tenant, alias_name))

    def count_aliases_of_key(self, key_id: str) -> int:
        with self._lock:
            return sum(1 for alias in self._aliases.values() if alias.target_key_id == key_id)

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

    # -- authorization ------------------------------------------------------

    def get_key_policy(self, key_id: str) -> str | None:
        with self._lock:
            return self._key_policies.get(key_id)

    def put_key_policy(
        self, key_id: str, policy_name: str, document: str, now: datetime, *, audit: Audit = None
    ) -> None:
        with self._lock:
            if key_id not in self._keys:
                raise errors.NotFoundException(f"key {key_id} does not exist")
            self._key_policies[key_id] = document
            self._audit_change(audit)

    def create_grant(self, grant: GrantRecord, *, audit: Audit = None) -> GrantRecord:
        grant = replace(
            grant, operations=tuple(sorted(grant.operations)), creation_date=_utc(grant.creation_date)
        )
        with self._lock:
            if grant.key_id not in self._keys:
                raise errors.NotFoundException(f"key {grant.key_id} does not exist")
            if grant.name:
                for existing in self._grants.values():
                    if _same_grant(existing, grant):
                        return existing
            if grant.grant_id in self._grants:
                raise errors.AlreadyExistsException(f"grant {grant.grant_id} already exists")
            self._grants[grant.grant_id] = grant
            self._audit_change(audit)
            return grant

    def count_grants(self, key_id: str) -> int:
        with self._lock:
            return sum(1 for grant in self._grants.values() if grant.key_id == key_id)

    def get_grant(self, grant_id: str) -> GrantRecord | None:
        with self._lock:
            return self._grants.get(grant_id)

    def list_grants(
        self,
        key_id: str,
        limit: int,
        after_grant_id: str | None,
        grant_id: str | None = None,
        grantee_principal: str | None = None,
    ) -> Sequence[GrantRecord]:
        with self._lock:
            found = [
                grant
                for grant in self._grants.values()
                if grant.key_id == key_id
                and (after_grant_id is None or grant.grant_id > after_grant_id)
                and (grant_id is None or grant.grant_id == grant_id)
                and (grantee_principal is None or grant.grantee_principal == grantee_principal)
            ]
        return sorted(found, key=lambda grant: grant.grant_id)[:limit]

    def list_retirable_grants(
        self, retiring_principal: str, limit: int, after_grant_id: str | None
    ) -> Sequence[GrantRecord]:
        with self._lock:
            found = [
                grant
                for grant in self._grants.values()
                if grant.retiring_principal == retiring_principal
                and (after_grant_id is None or grant.grant_id > after_grant_id)
            ]
        return sorted(found, key=lambda grant: grant.grant_id)[:limit]

    def delete_grant(self, grant_id: str, *, audit: Audit = None) -> bool:
        with self._lock:
            if self._grants.pop(grant_id, None) is None:
                return False
            self._audit_change(audit)
            return True

    def identity_policies_of(self, tenant: str, principal: str) -> Sequence[IdentityPolicyRecord]:
        with self._lock:
            found = [
                record
                for (t, p, _name), record in self._identity_policies.items()
                if t == tenant and p == principal
            ]
        return sorted(found, key=lambda record: record.policy_name)

    def put_identity_policy(self, record: IdentityPolicyRecord, *, audit: Audit = None) -> None:
        record = replace(record, last_updated=_utc(record.last_updated))
        with self._lock:
            self._identity_policies[(record.tenant, record.principal, record.policy_name)] = record
            self._audit_change(audit)

    def delete_identity_policy(
        self, tenant: str, principal: str, policy_name: str, *, audit: Audit = None
    ) -> bool:
        with self._lock:
            if self._identity_policies.pop((tenant, principal, policy_name), None) is None:
                return False
            self._audit_change(audit)
            return True

    def list_identity_policies(
        self, tenant: str, limit: int, after: tuple[str, str] | None, principal: str | None = None
    ) -> Sequence[IdentityPolicyRecord]:
        with self._lock:
            found = [
                record
                for record in self._identity_policies.values()
                if record.tenant == tenant
                and (principal is None or record.principal == principal)
                and (after is None or (record.principal, record.policy_name) > after)
            ]
        return sorted(found, key=lambda record: (record.principal, record.policy_name))[:limit]

    def ping(self) -> None:
        """Memory always answers."""

    # -- audit trail (AuditLog) -------------------------------------------

    def append_audit_records(
        self,
        records: Sequence[Mapping[str, Any] | SerializedRecord],
        spool_position: tuple[str, int] | None = None,
    ) -> list[int]:
        with self._lock:
            if spool_position is not None:
                name, offset = spool_position
                current = self._spool_offsets.get(name)
                if current is not None and current >= offset:
                    raise errors.AlreadyExistsException(
                        f"audit spool {name} was ingested to {current} already"
                    )
            seqs = self._append_audit(records)
            if spool_position is not None:
                self._spool_offsets[spool_position[0]] = spool_position[1]
            return seqs

    def spool_offset(self, spool_name: str) -> int:
        with self._lock:
            return self._spool_offsets.get(spool_name, 0)

    def lookup_audit_events(self, query: AuditQuery) -> Sequence[StoredAuditEvent]:
        if query.limit < 1:
            raise ValueError(f"limit must be at least 1, not {query.limit}")
        start = None if query.start_time is None else _utc(query.start_time)
        end = None if query.end_time is None else _utc(query.end_time)
        found: list[StoredAuditEvent] = []
        with self._lock:
            order = sorted(self._events, key=lambda s: (self._events[s].fields.event_time, s), reverse=True)
            before = None if query.before is None else (_utc(query.before[0]), query.before[1])
            for seq in order:
                fields = self._events[seq].fields
                if (
                    fields.tenant == query.tenant
                    and (before is None or (fields.event_time, seq) < before)
                    and (query.event_name is None or fields.event_name == query.event_name)
                    and (query.principal is None or fields.principal == query.principal)
                    and (query.key_id is None or fields.key_id == query.key_id)
                    and (start is None or fields.event_time >= start)
                    and (end is None or fields.event_time < end)
                ):
                    found.append(self._events[seq].event)
                    if len(found) == query.limit:
                        break
        return found

    def iter_audit_events(self, after_seq: int = 0) -> Iterator[StoredAuditEvent]:
        last = after_seq
        while True:
            with self._lock:
                batch = [row.event for seq, row in sorted(self._events.items()) if seq > last][:ITER_BATCH]
            yield from batch
            if len(batch) < ITER_BATCH:
                return
            last = batch[-1].seq

    def newest_audit_event(self) -> StoredAuditEvent | None:
        with self._lock:
            return self._events[max(self._events)].event if self._events else None

    def last_key_usage(self, key_id: str) -> Sequence[tuple[int | None, StoredAuditEvent]]:
        with self._lock:
            used = [
                row
                for _, row in sorted(self._events.items())
                if row.fields.is_key_usage and row.fields.key_id == key_id
            ]
        if not used:
            return []
        by_version = {row.fields.key_version: row.event for row in used if row.fields.key_version is not None}
        newest: list[tuple[int | None, StoredAuditEvent]] = [(None, used[-1].event)]
        newest.extend((version, by_version[version]) for version in sorted(by_version))
        return newest

    def audit_anchor(self) -> tuple[int, bytes]:
        with self._lock:
            return self._anchor

    def add_audit_seal(self, seal: AuditSeal) -> None:
        with self._lock:
            if seal.seq in self._seals:
                raise errors.AlreadyExistsException(f"the audit chain at {seal.seq} is sealed already")
            self._seals[seal.seq] = replace(seal, sealed_at=_utc(seal.sealed_at))

    def list_audit_seals(self) -> Sequence[AuditSeal]:
        with self._lock:
            return [self._seals[seq] for seq in sorted(self._seals)]

    def purge_audit_before(self, cutoff: datetime) -> int:
        """Only a prefix goes, up to the first event at or after ``cutoff`` (as the SQL store)."""
        cutoff = _utc(cutoff)
        with self._lock:
            gone: list[int] = []
            for seq in sorted(self._events):
                if self._events[seq].fields.event_time >= cutoff:
                    break
                gone.append(seq)
            if not gone:
                return 0
            last = self._events[gone[-1]].event
            for seq in gone:
                del self._events[seq]
            self._anchor = (last.seq, last.hash)
            for seq in [seq for seq in self._seals if seq <= last.seq]:
                del self._seals[seq]
            return len(gone)

    def tamper_with_audit_event(self, seq: int, record_json: str) -> None:
        """Test hook: overwrite a stored record as an attacker with DB access would."""
        with self._lock:
            row = self._events[seq]
            self._events[seq] = replace(row, event=replace(row.event, record_json=record_json))

    def delete_audit_events(self, seqs: Sequence[int]) -> None:
        """Test hook: remove rows without moving the head or the anchor (a deletion, not a purge)."""
        with self._lock:
            for seq in seqs:
                del self._events[seq]

    def replace_audit_seal(self, seal: AuditSeal) -> None:
        """Test hook: overwrite a stored seal."""
        with self._lock:
            self._seals[seal.seq] = seal

    def _audit_change(self, audit: Audit) -> None:
        """Caller holds the lock and has made the change."""
        if audit is not None:
            self._append_audit([audit])

    def _append_audit(self, records: Sequence[Mapping[str, Any] | SerializedRecord]) -> list[int]:
        """Caller holds the lock. All or nothing, like the SQL transaction."""
        rows = [
            (item.fields or audit_fields(item.record), item.canonical) for item in map(serialized, records)
        ]
        known = {row.fields.event_id for row in self._events.values()}
        new_ids = [fields.event_id for fields, _ in rows]
        if known.intersection(new_ids) or len(set(new_ids)) != len(new_ids):
            raise errors.AlreadyExistsException("an audit record with that eventID is in the trail")
        seq, previous = self._head
        seqs: list[int] = []
        for fields, record_bytes in rows:
            seq += 1
            digest = chain_hash(previous, seq, record_bytes)
            event = StoredAuditEvent(
                seq=seq,
                event_id=fields.event_id,
                event_time=fields.event_time,
                tenant=fields.tenant,
                event_name=fields.event_name,
                key_id=fields.key_id,
                record_json=record_bytes.decode("utf-8"),
                previous_hash=previous,
                hash=digest,
            )
            self._events[seq] = _Row(fields, event)
            seqs.append(seq)
            previous = digest
        self._head = (seq, previous)
        return seqs

    def _versions_of(self, key_id: str) -> list[KeyVersion]:
        """Caller holds the lock."""
        return sorted(
            (version for version in self._versions.values() if version.key_id == key_id),
            key=lambda version: version.version,
        )


def _same_grant(existing: GrantRecord, new: GrantRecord) -> bool:
    """Idempotent named CreateGrant: the same key, name and parameters."""
    return (
        existing.key_id == new.key_id
        and existing.name == new.name
        and existing.grantee_principal == new.grantee_principal
        and existing.retiring_principal == new.retiring_principal
        and existing.operations == new.operations
        and existing.constraints == new.constraints
    )


def _utc(value: datetime) -> datetime:
    """Refuse naive datetimes and normalise to UTC, as the SQL store does."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the metadata store only takes timezone-aware datetimes")
    return value.astimezone(UTC)


def _require_positive_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
