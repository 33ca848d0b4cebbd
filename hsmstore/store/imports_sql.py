"""Imported key material on SQL (issue 22): import parameters, the import claim, the material's
validity and key check value (the ``KeyImportRecords`` port, core/ports/key_imports.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exc, or_, select
from sqlalchemy.engine import RowMapping

from hsmstore import errors
from hsmstore.core.model import ExpirationModel, KeyRecord, KeyState
from hsmstore.core.ports.key_imports import ImportParametersRecord
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.key_rows import key_from_row
from hsmstore.store.schema import import_parameters, keys

# The states whose material can expire (AWS: the key of a PendingDeletion key expires too).
_WITH_MATERIAL = (KeyState.ENABLED.value, KeyState.DISABLED.value, KeyState.PENDING_DELETION.value)


class SqlKeyImports:
    def __init__(self, database: Database, trail: SqlAuditLog) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = trail

    # -- import parameters -------------------------------------------------

    def insert_import_parameters(self, record: ImportParametersRecord) -> None:
        require_aware(record.valid_to, "valid_to")
        try:
            with self._writer.begin() as connection:
                connection.execute(import_parameters.insert().values(_parameters_values(record)))
        except exc.IntegrityError:
            raise errors.AlreadyExistsException(
                "the wrapping key id or the import token already exists"
            ) from None

    def set_import_public_key(self, wrapping_token_id: bytes, public_key: bytes) -> bool:
        with self._writer.begin() as connection:
            changed = connection.execute(
                import_parameters.update()
                .where(import_parameters.c.wrapping_token_id == wrapping_token_id)
                .values(public_key=public_key)
            ).rowcount
        return changed == 1

    def find_import_parameters(self, token_hash: bytes) -> ImportParametersRecord | None:
        query = select(import_parameters).where(import_parameters.c.token_hash == token_hash)
        with self._reader.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else _parameters_from_row(row._mapping)

    def list_expired_import_parameters(self, now: datetime, limit: int) -> Sequence[ImportParametersRecord]:
        require_aware(now, "now")
        require_positive_limit(limit)
        query = (
            select(import_parameters)
            .where(import_parameters.c.valid_to < now)
            .order_by(import_parameters.c.valid_to)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [_parameters_from_row(row._mapping) for row in connection.execute(query)]

    def delete_import_parameters(self, wrapping_token_id: bytes) -> None:
        with self._writer.begin() as connection:
            connection.execute(
                import_parameters.delete().where(import_parameters.c.wrapping_token_id == wrapping_token_id)
            )

    # -- the import claim and the material's record --------------------------

    def claim_import(self, key_id: str, claim: str, now: datetime, stale_before: datetime) -> bool:
        require_aware(now, "now")
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(
                    keys.c.key_id == key_id,
                    or_(keys.c.import_claim.is_(None), keys.c.import_claimed_at < stale_before),
                )
                .values(import_claim=claim, import_claimed_at=now)
            ).rowcount
        return changed == 1

    def release_import_claim(self, key_id: str, claim: str) -> None:
        with self._writer.begin() as connection:
            connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.import_claim == claim)
                .values(import_claim=None, import_claimed_at=None)
            )

    def get_key_check_value(self, key_id: str) -> bytes | None:
        with self._reader.connect() as connection:
            value = connection.execute(select(keys.c.key_check_value).where(keys.c.key_id == key_id)).scalar()
        return None if value is None else bytes(value)

    def finish_import(
        self,
        key_id: str,
        claim: str,
        expected: KeyState,
        new_state: KeyState,
        key_check_value: bytes,
        valid_to: datetime | None,
        expiration_model: ExpirationModel,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """One UPDATE: the state, the validity and the claim; the key check value only if unset."""
        with self._writer.begin() as connection:
            stored = connection.execute(
                select(keys.c.key_check_value).where(
                    keys.c.key_id == key_id, keys.c.key_state == expected.value, keys.c.import_claim == claim
                )
            ).first()
            if stored is None or (stored[0] is not None and bytes(stored[0]) != key_check_value):
                return False
            changed = connection.execute(
                keys.update()
                .where(
                    keys.c.key_id == key_id, keys.c.key_state == expected.value, keys.c.import_claim == claim
                )
                .values(
                    key_state=new_state.value,
                    valid_to=valid_to,
                    expiration_model=expiration_model.value,
                    key_check_value=key_check_value,
                    import_claim=None,
                    import_claimed_at=None,
                )
            ).rowcount
            if changed == 1:
                self._trail.record_change(connection, audit)
        return changed == 1

    def delete_imported_material(
        self,
        key_id: str,
        expected: KeyState,
        new_state: KeyState,
        *,
        expired_before: datetime | None = None,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        query = keys.update().where(keys.c.key_id == key_id, keys.c.key_state == expected.value)
        if expired_before is not None:
            query = query.where(keys.c.valid_to < expired_before)
        with self._writer.begin() as connection:
            changed = connection.execute(
                query.values(key_state=new_state.value, valid_to=None, expiration_model=None)
            ).rowcount
            if changed == 1:
                self._trail.record_change(connection, audit)
        return changed == 1

    def list_keys_with_expired_material(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        require_aware(now, "now")
        require_positive_limit(limit)
        query = (
            select(keys)
            .where(
                keys.c.valid_to < now,
                keys.c.expiration_model == ExpirationModel.KEY_MATERIAL_EXPIRES.value,
                keys.c.key_state.in_(_WITH_MATERIAL),
            )
            .order_by(keys.c.valid_to)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [key_from_row(row._mapping) for row in connection.execute(query)]


def _parameters_values(record: ImportParametersRecord) -> dict[str, Any]:
    return {
        "wrapping_token_id": record.wrapping_token_id,
        "key_id": record.key_id,
        "key_store_id": record.key_store_id,
        "token_hash": record.token_hash,
        "wrapping_algorithm": record.wrapping_algorithm,
        "wrapping_key_spec": record.wrapping_key_spec,
        "created_at": record.created_at,
        "valid_to": record.valid_to,
        "public_key": record.public_key,
    }


def _parameters_from_row(row: RowMapping) -> ImportParametersRecord:
    public_key = row["public_key"]
    return ImportParametersRecord(
        wrapping_token_id=bytes(row["wrapping_token_id"]),
        key_id=row["key_id"],
        key_store_id=row["key_store_id"],
        token_hash=bytes(row["token_hash"]),
        wrapping_algorithm=row["wrapping_algorithm"],
        wrapping_key_spec=row["wrapping_key_spec"],
        created_at=row["created_at"],
        valid_to=row["valid_to"],
        public_key=None if public_key is None else bytes(public_key),
    )
