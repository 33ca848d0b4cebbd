"""Custom key stores on SQL (issue 17): the ``CustomKeyStoreRecords`` port (core/ports/custom_key_stores.py).

One row per store (``schema.custom_key_stores``, migration 0008). Every
change is a compare-and-set on ``generation`` and appends its audit record in
the same transaction, only if the change happened (like ``keys_sql.py``).
The PIN is only ever here sealed (``sealed_pin``); nothing in this module
unseals or logs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import exc, func, select
from sqlalchemy.engine import Connection, RowMapping

from hsmstore import errors
from hsmstore.core.key_stores.model import CustomKeyStore, DesiredConnection, TokenLocator
from hsmstore.core.model import DEFAULT_KEY_STORE_ID
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.schema import custom_key_stores, keys

_store_id = custom_key_stores.c.custom_key_store_id


class SqlCustomKeyStores:
    """A tenant's custom key stores; each change is recorded in ``trail`` with the change."""

    def __init__(self, database: Database, trail: SqlAuditLog) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = trail

    def insert_custom_key_store(
        self, store: CustomKeyStore, *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Raise ``CustomKeyStoreNameInUseException`` if the tenant has a store of that name,
        ``AlreadyExistsException`` if the id is taken."""
        require_aware(store.creation_date, "creation_date")
        try:
            with self._writer.begin() as connection:
                connection.execute(custom_key_stores.insert().values(_values(store)))
                self._trail.record_change(connection, audit)
        except exc.IntegrityError:
            if self.get_custom_key_store_by_name(store.tenant, store.name) is not None:
                raise _name_in_use(store.name) from None
            raise errors.AlreadyExistsException(
                f"custom key store {store.custom_key_store_id} already exists"
            ) from None

    def get_custom_key_store(self, custom_key_store_id: str) -> CustomKeyStore | None:
        with self._reader.connect() as connection:
            row = connection.execute(
                select(custom_key_stores).where(_store_id == custom_key_store_id)
            ).first()
        return None if row is None else _from_row(row._mapping)

    def get_custom_key_store_by_name(self, tenant: str, name: str) -> CustomKeyStore | None:
        query = select(custom_key_stores).where(
            custom_key_stores.c.tenant == tenant, custom_key_stores.c.name == name
        )
        with self._reader.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else _from_row(row._mapping)

    def list_custom_key_stores(
        self, tenant: str, limit: int, after_id: str | None
    ) -> Sequence[CustomKeyStore]:
        """One page of a tenant's stores by id (keyset paging, index ``tenant, custom_key_store_id``)."""
        require_positive_limit(limit)
        query = select(custom_key_stores).where(custom_key_stores.c.tenant == tenant)
        if after_id is not None:
            query = query.where(_store_id > after_id)
        query = query.order_by(_store_id).limit(limit)
        with self._reader.connect() as connection:
            return [_from_row(row._mapping) for row in connection.execute(query)]

    def list_all_custom_key_stores(self) -> Sequence[CustomKeyStore]:
        with self._reader.connect() as connection:
            return [
                _from_row(row._mapping)
                for row in connection.execute(select(custom_key_stores).order_by(_store_id))
            ]

    def replace_custom_key_store(
        self, store: CustomKeyStore, expected_generation: int, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """Compare-and-set in one UPDATE: two racing changes cannot both win.

        The id, tenant and creation date never change; everything else is ``store``'s.
        """
        if store.generation <= expected_generation:
            raise ValueError("the replacement's generation must be greater than the expected one")
        values = _values(store)
        for fixed in ("custom_key_store_id", "tenant", "creation_date"):
            del values[fixed]
        try:
            with self._writer.begin() as connection:
                changed = connection.execute(
                    custom_key_stores.update()
                    .where(
                        _store_id == store.custom_key_store_id,
                        custom_key_stores.c.tenant == store.tenant,
                        custom_key_stores.c.generation == expected_generation,
                    )
                    .values(values)
                ).rowcount
                if changed == 1:
                    self._trail.record_change(connection, audit)
        except exc.IntegrityError:
            raise _name_in_use(store.name) from None
        return changed == 1

    def delete_custom_key_store(
        self, custom_key_store_id: str, expected_generation: int, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """Delete the row if it has ``expected_generation`` and no key names the store.

        The row is locked (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
        IMMEDIATE`` serialises writers) before the keys are counted, so the
        count and the delete see the same store.
        """
        with self._writer.begin() as connection:
            locked = connection.execute(
                select(custom_key_stores.c.generation)
                .where(_store_id == custom_key_store_id)
                .with_for_update()
            ).first()
            if locked is None or locked.generation != expected_generation:
                return False
            if _count_keys(connection, custom_key_store_id):
                return False
            connection.execute(custom_key_stores.delete().where(_store_id == custom_key_store_id))
            self._trail.record_change(connection, audit)
        return True

    def count_keys_in_key_store(self, key_store_id: str) -> int:
        with self._reader.connect() as connection:
            return _count_keys(connection, key_store_id)


def _count_keys(connection: Connection, key_store_id: str) -> int:
    """Keys in every state (index ``keys.key_store_id``): pending deletion and CREATING included."""
    query = select(func.count()).select_from(keys).where(keys.c.key_store_id == key_store_id)
    return int(connection.execute(query).scalar_one())


def _name_in_use(name: str) -> errors.CustomKeyStoreNameInUseException:
    return errors.CustomKeyStoreNameInUseException(f"custom key store name {name!r} is already in use")


def _values(store: CustomKeyStore) -> dict[str, Any]:
    return {
        "custom_key_store_id": store.custom_key_store_id,
        "tenant": store.tenant,
        "name": store.name,
        "key_store_type": store.key_store_type,
        "module": store.locator.module,
        "hsm_profile": store.locator.hsm_profile,
        "token_label": store.locator.token_label,
        "token_serial_wanted": store.locator.token_serial,
        "token_serial_seen": store.token_serial,
        "sealed_pin": store.sealed_pin,
        "desired": store.desired.value,
        "generation": store.generation,
        "creation_date": store.creation_date,
    }


def _from_row(row: RowMapping) -> CustomKeyStore:
    return CustomKeyStore(
        custom_key_store_id=row["custom_key_store_id"],
        tenant=row["tenant"],
        name=row["name"],
        locator=TokenLocator(
            module=row["module"],
            hsm_profile=row["hsm_profile"],
            token_label=row["token_label"],
            token_serial=row["token_serial_wanted"],
        ),
        sealed_pin=bytes(row["sealed_pin"]),
        desired=DesiredConnection(row["desired"]),
        creation_date=row["creation_date"],
        generation=row["generation"],
        token_serial=row["token_serial_seen"],
        key_store_type=row["key_store_type"],
    )


def lock_custom_key_store_of_new_key(connection: Connection, key_store_id: str) -> None:
    """For ``keys_sql.insert_creating_key``: a key naming a custom key store is inserted only while
    the store's row exists, and holds it (``FOR SHARE`` on PostgreSQL) until commit, so
    ``delete_custom_key_store`` (``FOR UPDATE``, then the key count) either sees the key or
    deletes first and the insert refuses. Raise ``CustomKeyStoreNotFoundException`` if it is gone.
    The default key store has no row and is never locked.
    """
    if key_store_id == DEFAULT_KEY_STORE_ID:
        return
    query = select(_store_id).where(_store_id == key_store_id).with_for_update(read=True)
    if connection.execute(query).first() is None:
        raise errors.CustomKeyStoreNotFoundException(f"custom key store {key_store_id} does not exist")
