"""Key rotation on SQL: new versions, their claims, and the automatic schedule.

A rotation inserts its version PENDING, makes the token object, then finishes
(PENDING -> ACTIVE and the key's current version moves, atomically). Recovery
claims an interrupted one (PENDING -> ABANDONED) before removing it. Every
claim names the token object, since a version number can be retried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exc, func, or_, select

from hsmstore import errors
from hsmstore.core.model import KeyRecord, KeyState, KeyVersion, RotationType, VersionState
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.key_rows import key_from_row, version_from_row, version_values
from hsmstore.store.schema import inline_state, key_versions, keys
from hsmstore.store.tombstones_sql import record_abandoned


class _RollBack(Exception):
    """Raised inside a transaction to undo it; never escapes the store."""


class SqlKeyRotation:
    """Rotation of keys: versions after the first, and the automatic rotation schedule."""

    def __init__(self, database: Database, trail: SqlAuditLog) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = trail

    def set_rotation(
        self,
        key_id: str,
        period_days: int | None,
        next_rotation_date: datetime | None,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        if next_rotation_date is not None:
            require_aware(next_rotation_date, "next_rotation_date")
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id)
                .values(rotation_period_days=period_days, next_rotation_date=next_rotation_date)
            ).rowcount
            if changed:
                self._trail.record_change(connection, audit)
        if changed == 0:
            raise errors.NotFoundException(f"key {key_id} does not exist")

    def insert_pending_version(self, version: KeyVersion, max_on_demand_rotations: int) -> bool:
        """See the port. The on-demand count is read in the transaction that
        inserts; every rotation of a key contends for the same version number,
        so two rotations can never both pass the check."""
        if version.state is not VersionState.PENDING:
            raise ValueError("a new version must be PENDING")
        require_aware(version.creation_date, "creation_date")
        try:
            with self._writer.begin() as connection:
                if version.rotation_type is RotationType.ON_DEMAND:
                    count = connection.execute(
                        select(func.count())
                        .select_from(key_versions)
                        .where(
                            key_versions.c.key_id == version.key_id,
                            key_versions.c.rotation_type == RotationType.ON_DEMAND.value,
                        )
                    ).scalar_one()
                    if count >= max_on_demand_rotations:
                        raise errors.LimitExceededException(
                            f"The key has reached the limit of {max_on_demand_rotations} on-demand rotations"
                        )
                connection.execute(key_versions.insert().values(version_values(version)))
        except exc.IntegrityError:
            return False
        return True

    def finish_rotation(
        self,
        key_id: str,
        version: int,
        token_id: bytes,
        next_rotation_date: datetime | None,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """Both updates or neither: the version must still be PENDING (recovery may have
        removed it) and the key must still be at ``version - 1``."""
        values: dict[str, Any] = {"current_version": version}
        if next_rotation_date is not None:
            require_aware(next_rotation_date, "next_rotation_date")
            values["next_rotation_date"] = next_rotation_date
        try:
            with self._writer.begin() as connection:
                activated = connection.execute(
                    key_versions.update()
                    .where(
                        key_versions.c.key_id == key_id,
                        key_versions.c.version == version,
                        key_versions.c.token_id == token_id,
                        key_versions.c.state == VersionState.PENDING.value,
                    )
                    .values(state=VersionState.ACTIVE.value)
                ).rowcount
                if not activated:
                    return False
                moved = connection.execute(
                    keys.update()
                    .where(keys.c.key_id == key_id, keys.c.current_version == version - 1)
                    .values(**values)
                ).rowcount
                if not moved:
                    raise _RollBack
                self._trail.record_change(connection, audit)
        except _RollBack:
            return False
        return True

    def abandon_version(self, key_id: str, version: int, token_id: bytes) -> bool:
        where = (
            key_versions.c.key_id == key_id,
            key_versions.c.version == version,
            key_versions.c.token_id == token_id,
        )
        with self._writer.begin() as connection:
            connection.execute(
                key_versions.update()
                .where(*where, key_versions.c.state == VersionState.PENDING.value)
                .values(state=VersionState.ABANDONED.value)
            )
            state = connection.execute(select(key_versions.c.state).where(*where)).scalar()
        return state in (VersionState.ABANDONED.value, None)

    def delete_version(
        self, key_id: str, version: int, token_id: bytes, *, abandoned_at: datetime | None = None
    ) -> None:
        if abandoned_at is not None:
            require_aware(abandoned_at, "abandoned_at")
        with self._writer.begin() as connection:
            deleted = connection.execute(
                key_versions.delete()
                .where(
                    key_versions.c.key_id == key_id,
                    key_versions.c.version == version,
                    key_versions.c.token_id == token_id,
                    key_versions.c.state != VersionState.ACTIVE.value,
                )
                .returning(key_versions.c.token_id, key_versions.c.version)
            ).all()
            record_abandoned(connection, key_id, deleted, abandoned_at)

    def list_pending_versions(self, created_before: datetime) -> Sequence[KeyVersion]:
        require_aware(created_before, "created_before")
        query = (
            select(key_versions)
            .select_from(key_versions.join(keys, keys.c.key_id == key_versions.c.key_id))
            .where(
                or_(
                    and_(
                        key_versions.c.state == inline_state(VersionState.PENDING),
                        key_versions.c.creation_date < created_before,
                    ),
                    key_versions.c.state == inline_state(VersionState.ABANDONED),
                ),
                keys.c.key_state.not_in([KeyState.CREATING.value, KeyState.FAILED.value]),
            )
            .order_by(key_versions.c.creation_date)
        )
        with self._reader.connect() as connection:
            return [version_from_row(row._mapping) for row in connection.execute(query)]

    def list_due_rotations(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        require_aware(now, "now")
        require_positive_limit(limit)
        query = (
            select(keys)
            .where(
                keys.c.key_state == KeyState.ENABLED.value,
                keys.c.rotation_period_days.is_not(None),
                keys.c.next_rotation_date <= now,
            )
            .order_by(keys.c.next_rotation_date, keys.c.key_id)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [key_from_row(row._mapping) for row in connection.execute(query)]
