"""Keys and their versions on SQL: creation, reads, state and description changes, removal.

Rotation (``rotation_sql.py``), scheduled deletion (``deletion_sql.py``) and
the token-object tombstones (``tombstones_sql.py``) are the other parts of
the ``MetadataStore`` port that write these rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, exc, func, or_, select
from sqlalchemy.engine import Connection

from hsmstore import errors
from hsmstore.core.model import (
    KeyRecord,
    KeyState,
    KeyVersion,
    PendingCreation,
    Residency,
    VersionState,
    WrappedMaterial,
)
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.custom_key_stores_sql import lock_custom_key_store_of_new_key
from hsmstore.store.database import Database, PreparedRead
from hsmstore.store.domain_keys_sql import key_store_wrapping_under, store_wrapped_material
from hsmstore.store.key_rows import (
    VERSION_COLUMNS,
    VERSION_PREFIX,
    key_from_row,
    key_values,
    version_from_row,
    version_values,
)
from hsmstore.store.schema import (
    aliases,
    grants,
    inline_state,
    key_policies,
    key_versions,
    keys,
    tags,
    tenant_key_counts,
)
from hsmstore.store.tombstones_sql import record_abandoned

# The point reads of a key's first use, built once: building a ``select`` costs as much as running
# it on SQLite, and a cold key's first GenerateDataKey makes four such reads (docs/performance.md,
# "Scale").
_KEY_BY_ID = PreparedRead(select(keys).where(keys.c.key_id == bindparam("key_id")))
_VERSION_BY_ID = PreparedRead(
    select(key_versions).where(
        key_versions.c.key_id == bindparam("key_id"), key_versions.c.version == bindparam("version")
    )
)


class SqlKeys:
    """Keys and versions; management changes are recorded in ``trail`` with the change."""

    def __init__(self, database: Database, trail: SqlAuditLog) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = trail

    # -- creation -------------------------------------------------------

    def insert_creating_key(self, key: KeyRecord, version: KeyVersion, policy: str | None = None) -> None:
        """Insert the key (CREATING), its first version (PENDING) and its key policy together.

        Raises ``AlreadyExistsException`` if the key id or the token id is
        taken, ``ValueError`` if the records are not a CREATING key and its
        PENDING version in the key's key store.
        """
        _check_new_key(key, version)
        try:
            with self._writer.begin() as connection:
                # Issue 17: a DeleteCustomKeyStore racing this insert cannot leave the key in a deleted store.
                lock_custom_key_store_of_new_key(connection, key.key_store_id)
                self._insert_new_key(connection, key, version, policy)
        except exc.IntegrityError:
            raise errors.AlreadyExistsException(
                f"key {key.key_id} or its token object id already exists"
            ) from None

    @staticmethod
    def _insert_new_key(
        connection: Connection, key: KeyRecord, version: KeyVersion, policy: str | None
    ) -> None:
        connection.execute(keys.insert().values(key_values(key)))
        connection.execute(key_versions.insert().values(version_values(version)))
        if policy is not None:
            connection.execute(
                key_policies.insert().values(
                    key_id=key.key_id, policy_name="default", document=policy, last_updated=key.creation_date
                )
            )

    def insert_wrapped_key(
        self,
        key: KeyRecord,
        version: KeyVersion,
        policy: str | None = None,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """The port's: an ENABLED key and its ACTIVE wrapped first version in one transaction."""
        _check_new_key(key, version, KeyState.ENABLED, VersionState.ACTIVE)
        if version.residency is not Residency.WRAPPED or version.wrapped is None:
            raise ValueError("insert_wrapped_key takes a WRAPPED version with its blob")
        try:
            with self._writer.begin() as connection:
                wrapping = key_store_wrapping_under(connection, version.wrapped.domain_key_id)
                if wrapping != version.key_store_id:
                    return False
                lock_custom_key_store_of_new_key(connection, key.key_store_id)
                self._insert_new_key(connection, key, version, policy)
                self._trail.record_change(connection, audit)
        except exc.IntegrityError:
            raise errors.AlreadyExistsException(
                f"key {key.key_id} or its token object id already exists"
            ) from None
        return True

    def finish_creating_key(
        self,
        key_id: str,
        *,
        audit: Mapping[str, Any] | None = None,
        state: KeyState = KeyState.ENABLED,
        wrapped: WrappedMaterial | None = None,
    ) -> bool:
        """CREATING -> ``state`` (ENABLED; PENDING_IMPORT for an EXTERNAL key, issue 22) and the
        key's PENDING versions -> ACTIVE, in one transaction.

        False for a key that is no longer CREATING (recovery claimed it);
        raises ``NotFoundException`` if the key is gone (recovery deleted it).
        """
        try:
            with self._writer.begin() as connection:
                flipped = connection.execute(
                    keys.update()
                    .where(keys.c.key_id == key_id, keys.c.key_state == KeyState.CREATING.value)
                    .values(key_state=state.value)
                ).rowcount
                if (
                    flipped
                    and wrapped is not None
                    and not store_wrapped_material(connection, wrapped, key_versions.c.key_id == key_id)
                ):
                    raise _BlobRefused  # rolls the flip back with the transaction
                if flipped:
                    connection.execute(
                        key_versions.update()
                        .where(
                            key_versions.c.key_id == key_id,
                            key_versions.c.state == VersionState.PENDING.value,
                        )
                        .values(state=VersionState.ACTIVE.value)
                    )
                    self._trail.record_change(connection, audit)
                    return True
                exists = connection.execute(select(keys.c.key_id).where(keys.c.key_id == key_id)).first()
        except _BlobRefused:
            return False
        if exists is None:
            raise errors.NotFoundException(f"key {key_id} does not exist")
        return False

    def claim_failed_creation(self, key_id: str) -> bool:
        with self._writer.begin() as connection:
            connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == KeyState.CREATING.value)
                .values(key_state=KeyState.FAILED.value)
            )
            state = connection.execute(select(keys.c.key_state).where(keys.c.key_id == key_id)).scalar()
        return state in (KeyState.FAILED.value, None)

    def list_pending_creations(self, created_before: datetime) -> Sequence[PendingCreation]:
        """CREATING keys older than ``created_before``, oldest first, with their versions.

        One SELECT (keys LEFT JOIN versions), so a key and its versions come
        from the same snapshot even without a transaction.
        """
        require_aware(created_before, "created_before")
        query = (
            select(*keys.c, *VERSION_COLUMNS)
            .select_from(keys.outerjoin(key_versions, key_versions.c.key_id == keys.c.key_id))
            .where(
                or_(
                    and_(
                        keys.c.key_state == inline_state(KeyState.CREATING),
                        keys.c.creation_date < created_before,
                    ),
                    keys.c.key_state == inline_state(KeyState.FAILED),
                )
            )
            .order_by(keys.c.creation_date, keys.c.key_id, key_versions.c.version)
        )
        pending: dict[str, PendingCreation] = {}
        with self._reader.connect() as connection:
            for row in connection.execute(query):
                values = row._mapping
                creation = pending.get(values["key_id"])
                if creation is None:
                    creation = PendingCreation(key=key_from_row(values))
                    pending[creation.key.key_id] = creation
                if values[VERSION_PREFIX + "key_id"] is not None:
                    creation.versions.append(version_from_row(values, prefix=VERSION_PREFIX))
        return list(pending.values())

    def delete_key(self, key_id: str, *, abandoned_at: datetime | None = None) -> None:
        """Delete the key, its versions, aliases, tags, policy and grants; a missing key is not an error.

        The foreign keys cascade too, but the explicit deletes do not depend on
        SQLite's per-connection ``foreign_keys`` pragma being on. With
        ``abandoned_at``, the version rows this transaction deleted (DELETE ...
        RETURNING: a concurrent delete of the same key returns none) become tombstones.
        """
        if abandoned_at is not None:
            require_aware(abandoned_at, "abandoned_at")
        with self._writer.begin() as connection:
            connection.execute(aliases.delete().where(aliases.c.target_key_id == key_id))
            connection.execute(tags.delete().where(tags.c.key_id == key_id))
            connection.execute(grants.delete().where(grants.c.key_id == key_id))
            connection.execute(key_policies.delete().where(key_policies.c.key_id == key_id))
            deleted = connection.execute(
                key_versions.delete()
                .where(key_versions.c.key_id == key_id)
                .returning(key_versions.c.token_id, key_versions.c.version)
            ).all()
            record_abandoned(connection, key_id, deleted, abandoned_at)
            connection.execute(keys.delete().where(keys.c.key_id == key_id))

    # -- reading ----------------------------------------------------------

    def get_key(self, key_id: str) -> KeyRecord | None:
        """A primary-key lookup: the hot path of every cryptographic call."""
        row = self._reader.first(_KEY_BY_ID, {"key_id": key_id})
        return None if row is None else key_from_row(row)

    def get_version(self, key_id: str, version: int) -> KeyVersion | None:
        """A primary-key lookup: the hot path of Decrypt."""
        row = self._reader.first(_VERSION_BY_ID, {"key_id": key_id, "version": version})
        return None if row is None else version_from_row(row)

    def set_public_key(self, key_id: str, version: int, public_key: bytes) -> bool:
        """Record a PENDING version's public key (issue 23); False if no such version is PENDING.

        Only while PENDING: once the version is ACTIVE its public key is immutable,
        which is what lets readers cache it for the life of the process.
        """
        if not public_key:
            raise ValueError("a public key must not be empty")
        with self._writer.begin() as connection:
            changed = connection.execute(
                key_versions.update()
                .where(
                    key_versions.c.key_id == key_id,
                    key_versions.c.version == version,
                    key_versions.c.state == VersionState.PENDING.value,
                )
                .values(public_key=public_key)
            ).rowcount
        return changed == 1

    def get_public_key(self, key_id: str, version: int) -> bytes | None:
        """A primary-key lookup: the version's DER SubjectPublicKeyInfo, None if it has none."""
        query = select(key_versions.c.public_key).where(
            key_versions.c.key_id == key_id, key_versions.c.version == version
        )
        with self._reader.connect() as connection:
            value = connection.execute(query).scalar()
        return None if value is None else bytes(value)

    def list_versions(self, key_id: str) -> Sequence[KeyVersion]:
        query = select(key_versions).where(key_versions.c.key_id == key_id).order_by(key_versions.c.version)
        with self._reader.connect() as connection:
            return [version_from_row(row._mapping) for row in connection.execute(query)]

    def list_keys(self, tenant: str, limit: int, after_key_id: str | None) -> Sequence[KeyRecord]:
        """One page of a tenant's keys by key_id (keyset paging), CREATING ones left out."""
        require_positive_limit(limit)
        query = select(keys).where(
            keys.c.tenant == tenant, keys.c.key_state.not_in([KeyState.CREATING.value, KeyState.FAILED.value])
        )
        if after_key_id is not None:
            query = query.where(keys.c.key_id > after_key_id)
        query = query.order_by(keys.c.key_id).limit(limit)
        with self._reader.connect() as connection:
            return [key_from_row(row._mapping) for row in connection.execute(query)]

    def count_keys_by_state(self) -> Mapping[KeyState, int]:
        """One ``GROUP BY key_state`` over every tenant's keys (the metrics' ``hsmstore_keys``)."""
        query = select(keys.c.key_state, func.count()).group_by(keys.c.key_state)
        with self._reader.connect() as connection:
            return {KeyState(state): int(count) for state, count in connection.execute(query)}

    def count_customer_keys(self, tenant: str) -> int:
        """The tenant's customer managed keys in every state: one row that migration 0014's triggers keep."""
        query = select(tenant_key_counts.c.customer_keys).where(tenant_key_counts.c.tenant == tenant)
        with self._reader.connect() as connection:
            return int(connection.execute(query).scalar_one_or_none() or 0)

    # -- changing -----------------------------------------------------------

    def update_key_state(
        self, key_id: str, expected: KeyState, new_state: KeyState, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """Compare-and-set in one UPDATE, so two racing callers cannot both win."""
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == expected.value)
                .values(key_state=new_state.value)
            ).rowcount
            if changed == 1:
                self._trail.record_change(connection, audit)
        return changed == 1

    def update_description(
        self, key_id: str, description: str, *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Raises ``NotFoundException`` if the key does not exist, so no write is lost silently."""
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update().where(keys.c.key_id == key_id).values(description=description)
            ).rowcount
            if changed:
                self._trail.record_change(connection, audit)
        if changed == 0:
            raise errors.NotFoundException(f"key {key_id} does not exist")


class _BlobRefused(Exception):
    """``finish_creating_key``: the blob's domain key no longer wraps; undo the whole transaction."""


def _check_new_key(
    key: KeyRecord,
    version: KeyVersion,
    key_state: KeyState = KeyState.CREATING,
    version_state: VersionState = VersionState.PENDING,
) -> None:
    """What ``insert_creating_key`` takes: a CREATING key and its PENDING first version
    (``insert_wrapped_key``: an ENABLED key and its ACTIVE first version).

    The version lives in its key's key store (core/model.py, ``KeyVersion``):
    a version recorded in another store would send its key's calls to the wrong token.
    """
    if key.state is not key_state:
        raise ValueError(f"a new key must be {key_state.value}, not {key.state}")
    if version.state is not version_state:
        raise ValueError(f"a new key's first version must be {version_state.value}, not {version.state}")
    if version.key_id != key.key_id:
        raise ValueError("the version belongs to another key")
    if version.key_store_id != key.key_store_id:
        raise ValueError(
            f"the version is in key store {version.key_store_id!r}, its key in {key.key_store_id!r}"
        )
    require_aware(key.creation_date, "creation_date")
    require_aware(version.creation_date, "version creation_date")
    if key.deletion_date is not None:
        require_aware(key.deletion_date, "deletion_date")
