"""Access keys on SQL (issue 19): the ``AccessKeyRecords`` port on SQLite and PostgreSQL.

The table is ``schema.access_keys`` (migration 0009). The secret is only ever
here sealed (``sealed_secret``, hsm/secret_sealer.py); this module neither
seals nor unseals, and never logs a row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, exc, select, update
from sqlalchemy.engine import RowMapping

from hsmstore import errors
from hsmstore.core.access_keys_model import AccessKeyRecord, AccessKeyStatus
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.checks import require_aware
from hsmstore.store.database import Database
from hsmstore.store.schema import access_keys


class SqlAccessKeys:
    """The access key records; one transaction per call, safe to share between threads."""

    def __init__(self, database: Database) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = SqlAuditLog(database)

    @classmethod
    def on(cls, engine: Engine) -> SqlAccessKeys:
        return cls(Database.of(engine))

    def insert_access_key(self, record: AccessKeyRecord, *, audit: Mapping[str, Any] | None = None) -> None:
        require_aware(record.created_at, "created_at")
        try:
            with self._writer.begin() as connection:
                connection.execute(access_keys.insert().values(_values(record)))
                self._trail.record_change(connection, audit)
        except exc.IntegrityError:
            raise errors.AlreadyExistsException(f"access key {record.access_key_id} already exists") from None

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None:
        with self._reader.connect() as connection:
            row = (
                connection.execute(select(access_keys).where(access_keys.c.access_key_id == access_key_id))
                .mappings()
                .first()
            )
        return _record(row) if row is not None else None

    def list_access_keys(self, tenant: str | None, principal: str | None) -> Sequence[AccessKeyRecord]:
        query = select(access_keys).order_by(
            access_keys.c.tenant, access_keys.c.principal, access_keys.c.access_key_id
        )
        if tenant is not None:
            query = query.where(access_keys.c.tenant == tenant)
        if principal is not None:
            query = query.where(access_keys.c.principal == principal)
        with self._reader.connect() as connection:
            return [_record(row) for row in connection.execute(query).mappings()]

    def set_access_key_status(
        self, access_key_id: str, status: AccessKeyStatus, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """A revoked key stays revoked: its status is never changed again."""
        with self._writer.begin() as connection:
            changed = connection.execute(
                update(access_keys)
                .where(
                    access_keys.c.access_key_id == access_key_id,
                    access_keys.c.status != AccessKeyStatus.REVOKED.value,
                )
                .values(status=status.value)
            ).rowcount
            if changed:
                self._trail.record_change(connection, audit)
                return True
            exists = connection.execute(
                select(access_keys.c.status).where(access_keys.c.access_key_id == access_key_id)
            ).first()
        return exists is not None and status is AccessKeyStatus.REVOKED

    def note_access_key_used(self, access_key_id: str, when: datetime) -> None:
        require_aware(when, "when")
        with self._writer.begin() as connection:
            connection.execute(
                update(access_keys).where(access_keys.c.access_key_id == access_key_id).values(last_used=when)
            )


def _values(record: AccessKeyRecord) -> dict[str, Any]:
    return {
        "access_key_id": record.access_key_id,
        "tenant": record.tenant,
        "principal": record.principal,
        "sealed_secret": record.sealed_secret,
        "status": record.status.value,
        "created_at": record.created_at,
        "last_used": record.last_used,
    }


def _record(row: RowMapping) -> AccessKeyRecord:
    return AccessKeyRecord(
        access_key_id=row["access_key_id"],
        tenant=row["tenant"],
        principal=row["principal"],
        sealed_secret=bytes(row["sealed_secret"]),
        status=AccessKeyStatus(row["status"]),
        created_at=row["created_at"],
        last_used=row["last_used"],
    )


if TYPE_CHECKING:
    from hsmstore.core.ports.access_keys import AccessKeyRecords

    def _implements_access_key_records(records: SqlAccessKeys) -> AccessKeyRecords:
        """mypy checks here that the class matches the ``AccessKeyRecords`` Protocol."""
        return records
