"""Aliases on SQL: names per tenant that point at a key (CreateAlias, UpdateAlias, ListAliases)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exc, func, select
from sqlalchemy.engine import RowMapping

from hsmstore import errors
from hsmstore.core.model import AliasRecord
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.locks import lock_existing_key
from hsmstore.store.schema import aliases


class SqlAliases:
    """A tenant's aliases; each change is recorded in ``trail`` with the change."""

    def __init__(self, database: Database, trail: SqlAuditLog) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = trail

    def create_alias(self, alias: AliasRecord, *, audit: Mapping[str, Any] | None = None) -> None:
        """Raises ``NotFoundException`` if the target key does not exist,
        ``AlreadyExistsException`` if the tenant already has an alias of that name.
        """
        require_aware(alias.creation_date, "creation_date")
        require_aware(alias.last_updated_date, "last_updated_date")
        try:
            with self._writer.begin() as connection:
                lock_existing_key(connection, alias.target_key_id)
                connection.execute(aliases.insert().values(_alias_values(alias)))
                self._trail.record_change(connection, audit)
        except exc.IntegrityError:
            # The target key is locked above, so the only constraint left to
            # break is the (tenant, alias_name) primary key.
            raise errors.AlreadyExistsException(f"alias {alias.alias_name} already exists") from None

    def update_alias(
        self,
        tenant: str,
        alias_name: str,
        target_key_id: str,
        now: datetime,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """Raises ``NotFoundException`` if the new target key does not exist."""
        require_aware(now, "now")
        with self._writer.begin() as connection:
            lock_existing_key(connection, target_key_id)
            changed = connection.execute(
                aliases.update()
                .where(aliases.c.tenant == tenant, aliases.c.alias_name == alias_name)
                .values(target_key_id=target_key_id, last_updated_date=now)
            ).rowcount
            if changed == 1:
                self._trail.record_change(connection, audit)
        return changed == 1

    def delete_alias(self, tenant: str, alias_name: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        with self._writer.begin() as connection:
            changed = connection.execute(
                aliases.delete().where(aliases.c.tenant == tenant, aliases.c.alias_name == alias_name)
            ).rowcount
            if changed == 1:
                self._trail.record_change(connection, audit)
        return changed == 1

    def get_alias(self, tenant: str, alias_name: str) -> AliasRecord | None:
        query = select(aliases).where(aliases.c.tenant == tenant, aliases.c.alias_name == alias_name)
        with self._reader.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else _alias_from_row(row._mapping)

    def count_aliases_of_key(self, key_id: str) -> int:
        """Aliases that point at the key (index ``target_key_id``)."""
        query = select(func.count()).select_from(aliases).where(aliases.c.target_key_id == key_id)
        with self._reader.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def list_aliases(
        self, tenant: str, limit: int, after_alias_name: str | None, key_id: str | None
    ) -> Sequence[AliasRecord]:
        """One page of a tenant's aliases by name (keyset paging), optionally of one key."""
        require_positive_limit(limit)
        conditions = [aliases.c.tenant == tenant]
        if after_alias_name is not None:
            conditions.append(aliases.c.alias_name > after_alias_name)
        if key_id is not None:
            conditions.append(aliases.c.target_key_id == key_id)
        query = select(aliases).where(and_(*conditions)).order_by(aliases.c.alias_name).limit(limit)
        with self._reader.connect() as connection:
            return [_alias_from_row(row._mapping) for row in connection.execute(query)]


def _alias_values(alias: AliasRecord) -> dict[str, Any]:
    return {
        "tenant": alias.tenant,
        "alias_name": alias.alias_name,
        "target_key_id": alias.target_key_id,
        "creation_date": alias.creation_date,
        "last_updated_date": alias.last_updated_date,
    }


def _alias_from_row(row: RowMapping) -> AliasRecord:
    return AliasRecord(
        tenant=row["tenant"],
        alias_name=row["alias_name"],
        target_key_id=row["target_key_id"],
        creation_date=row["creation_date"],
        last_updated_date=row["last_updated_date"],
    )
