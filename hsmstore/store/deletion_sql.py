"""Scheduled key deletion on SQL: the waiting period, then destruction records.

A destruction record is written per version when a key starts being
destroyed (``begin_destruction``), in the transaction that moves the key to
DESTROYING, and outlives the key: the operator's proof that every version's
material was destroyed. It keeps its own copy of where that material was
(key store and residency, migration 0007), since the version row goes with the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, or_, select

from hsmstore.core.model import DestructionRecord, KeyRecord, KeyState, Origin
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.key_rows import destruction_from_row, destruction_values, key_from_row, version_from_row
from hsmstore.store.schema import inline_state, key_destructions, key_versions, keys


class SqlKeyDeletion:
    """Scheduling, cancelling and recording the destruction of keys."""

    def __init__(self, database: Database, trail: SqlAuditLog) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = trail

    def schedule_deletion(
        self,
        key_id: str,
        expected: KeyState,
        deletion_date: datetime,
        pending_window_days: int,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        require_aware(deletion_date, "deletion_date")
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == expected.value)
                .values(
                    key_state=KeyState.PENDING_DELETION.value,
                    deletion_date=deletion_date,
                    pending_window_days=pending_window_days,
                )
            ).rowcount
            if changed == 1:
                self._trail.record_change(connection, audit)
        return changed == 1

    def cancel_deletion(self, key_id: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        """PENDING_DELETION -> DISABLED; an EXTERNAL key without material -> PENDING_IMPORT (issue 22:
        its expiration_model is set exactly while it has imported material)."""
        without_material = and_(keys.c.origin == Origin.EXTERNAL.value, keys.c.expiration_model.is_(None))
        state_after = case((without_material, KeyState.PENDING_IMPORT.value), else_=KeyState.DISABLED.value)
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == KeyState.PENDING_DELETION.value)
                .values(key_state=state_after, deletion_date=None, pending_window_days=None)
            ).rowcount
            if changed == 1:
                self._trail.record_change(connection, audit)
        return changed == 1

    def list_keys_to_destroy(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        require_aware(now, "now")
        require_positive_limit(limit)
        due = and_(keys.c.key_state == inline_state(KeyState.PENDING_DELETION), keys.c.deletion_date <= now)
        query = (
            select(keys)
            .where(or_(due, keys.c.key_state == inline_state(KeyState.DESTROYING)))
            .order_by(keys.c.deletion_date, keys.c.key_id)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [key_from_row(row._mapping) for row in connection.execute(query)]

    def begin_destruction(self, key_id: str) -> bool:
        """See the port. The records are written in the same transaction as the
        state change, so a crash leaves either both or neither."""
        with self._writer.begin() as connection:
            row = connection.execute(select(keys).where(keys.c.key_id == key_id)).first()
            if row is None:
                return False
            key = key_from_row(row._mapping)
            if key.state is KeyState.PENDING_DELETION:
                connection.execute(
                    keys.update()
                    .where(keys.c.key_id == key_id, keys.c.key_state == KeyState.PENDING_DELETION.value)
                    .values(key_state=KeyState.DESTROYING.value)
                )
            elif key.state is not KeyState.DESTROYING:
                return False
            recorded = set(
                connection.execute(
                    select(key_destructions.c.version).where(key_destructions.c.key_id == key_id)
                ).scalars()
            )
            versions = connection.execute(select(key_versions).where(key_versions.c.key_id == key_id))
            for version_row in versions:
                version = version_from_row(version_row._mapping)
                if version.version in recorded:
                    continue
                connection.execute(key_destructions.insert().values(destruction_values(key, version)))
        return True

    def mark_version_destroyed(self, key_id: str, version: int, destroyed_at: datetime) -> None:
        require_aware(destroyed_at, "destroyed_at")
        with self._writer.begin() as connection:
            connection.execute(
                key_destructions.update()
                .where(
                    key_destructions.c.key_id == key_id,
                    key_destructions.c.version == version,
                    key_destructions.c.destroyed_at.is_(None),
                )
                .values(destroyed_at=destroyed_at)
            )

    def list_destructions(self, key_id: str | None = None) -> Sequence[DestructionRecord]:
        query = select(key_destructions).order_by(key_destructions.c.key_id, key_destructions.c.version)
        if key_id is not None:
            query = query.where(key_destructions.c.key_id == key_id)
        with self._reader.connect() as connection:
            return [destruction_from_row(row._mapping) for row in connection.execute(query)]
