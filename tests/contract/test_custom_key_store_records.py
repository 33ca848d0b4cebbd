"""The CustomKeyStoreRecords contract (issue 17), on the fake, SQLite and PostgreSQL.

What it pins down: a store comes back exactly as written (the PIN only as the
sealed bytes given); names are unique per tenant; pages by id within one
tenant; changes are compare-and-set on ``generation``; a store is deleted only
while no key (in any state) names it; a change's audit record commits with the
change and only if it happened.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import Engine, select

from hsmstore import errors
from hsmstore.core.key_stores.model import CustomKeyStore, DesiredConnection, TokenLocator
from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyState
from hsmstore.core.ports import AuditLog, MetadataStore
from hsmstore.core.ports.custom_key_stores import CustomKeyStoreRecords
from hsmstore.store.custom_key_stores_sql import lock_custom_key_store_of_new_key
from hsmstore.store.schema import custom_key_stores
from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    store_fixture,
)
from tests.contract.test_audit_log import record
from tests.contract.test_metadata_store import make_key

T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
TENANT = "111122223333"
SEALED = b"\x01sealed-pin-bytes\x00\xff"


def a_store(
    custom_key_store_id: str = "cks-0123456789abcdef0",
    tenant: str = TENANT,
    name: str = "finance",
    *,
    label: str | None = "team-a",
    serial: str | None = None,
) -> CustomKeyStore:
    return CustomKeyStore(
        custom_key_store_id=custom_key_store_id,
        tenant=tenant,
        name=name,
        locator=TokenLocator("softhsm", "softhsm2", token_label=label, token_serial=serial),
        sealed_pin=SEALED,
        desired=DesiredConnection.DISCONNECTED,
        creation_date=T0,
    )


def records_of(store: MetadataStore) -> CustomKeyStoreRecords:
    return cast(CustomKeyStoreRecords, store)


def event_names(store: MetadataStore) -> list[str]:
    return [event.event_name for event in cast(AuditLog, store).iter_audit_events()]


def test_a_store_comes_back_as_written_by_id_and_by_name(store: MetadataStore) -> None:
    records = records_of(store)
    by_label, by_serial = a_store(), a_store("cks-0123456789abcdef1", name="ops", label=None, serial="9f3a11")
    records.insert_custom_key_store(by_label)
    records.insert_custom_key_store(by_serial)

    for written in (by_label, by_serial):
        read = records.get_custom_key_store(written.custom_key_store_id)
        assert read == replace(written, creation_date=T0.astimezone(UTC))
        assert read is not None and read.creation_date.tzinfo is not None
        assert records.get_custom_key_store_by_name(TENANT, written.name) == read
    assert records.get_custom_key_store("cks-ffffffffffffffff0") is None
    assert records.get_custom_key_store_by_name("other-tenant", "finance") is None


def test_names_are_unique_per_tenant_only(store: MetadataStore) -> None:
    records = records_of(store)
    records.insert_custom_key_store(a_store(), audit=record("CreateCustomKeyStore"))

    with pytest.raises(errors.CustomKeyStoreNameInUseException):
        records.insert_custom_key_store(
            a_store("cks-0123456789abcdef1"), audit=record("CreateCustomKeyStore")
        )
    records.insert_custom_key_store(a_store("cks-0123456789abcdef2", tenant="444455556666"))

    assert event_names(store) == ["CreateCustomKeyStore"]
    assert len(records.list_all_custom_key_stores()) == 2


def test_a_taken_id_is_already_exists(store: MetadataStore) -> None:
    records = records_of(store)
    records.insert_custom_key_store(a_store())
    with pytest.raises(errors.AlreadyExistsException):
        records.insert_custom_key_store(a_store(name="another"))


def test_list_pages_one_tenants_stores_by_id(store: MetadataStore) -> None:
    records = records_of(store)
    ids = [f"cks-0123456789abcdef{digit}" for digit in "3a01f"]
    for number, custom_key_store_id in enumerate(ids):
        records.insert_custom_key_store(a_store(custom_key_store_id, name=f"store-{number}"))
    records.insert_custom_key_store(a_store("cks-0123456789abcdef2", tenant="444455556666"))

    first = records.list_custom_key_stores(TENANT, 2, None)
    rest = records.list_custom_key_stores(TENANT, 10, first[-1].custom_key_store_id)

    assert [s.custom_key_store_id for s in [*first, *rest]] == sorted(ids)
    assert records.list_custom_key_stores("nobody", 10, None) == []
    assert [s.tenant for s in records.list_all_custom_key_stores()].count("444455556666") == 1
    with pytest.raises(ValueError, match="limit"):
        records.list_custom_key_stores(TENANT, 0, None)


def test_replace_is_compare_and_set_on_the_generation(store: MetadataStore) -> None:
    records = records_of(store)
    original = a_store()
    records.insert_custom_key_store(original)
    connected = original.with_desired(DesiredConnection.CONNECTED)

    assert records.replace_custom_key_store(connected, 1, audit=record("ConnectCustomKeyStore"))
    stale = replace(original, name="renamed", generation=2)
    assert not records.replace_custom_key_store(stale, 1, audit=record("UpdateCustomKeyStore"))
    seen = replace(connected, token_serial="9f3a11", generation=3)
    assert records.replace_custom_key_store(seen, 2)

    assert records.get_custom_key_store(original.custom_key_store_id) == replace(
        seen, creation_date=T0.astimezone(UTC)
    )
    assert event_names(store) == ["ConnectCustomKeyStore"]
    assert not records.replace_custom_key_store(replace(a_store("cks-ffffffffffffffff0"), generation=2), 1)


def test_replace_keeps_the_id_tenant_and_creation_date(store: MetadataStore) -> None:
    records = records_of(store)
    records.insert_custom_key_store(a_store())
    moved = replace(a_store(), tenant="444455556666", generation=2)
    assert not records.replace_custom_key_store(moved, 1)
    later = replace(a_store(), creation_date=T0 + timedelta(days=1), generation=2)
    assert records.replace_custom_key_store(later, 1)
    read = records.get_custom_key_store(later.custom_key_store_id)
    assert read is not None and read.creation_date == T0 and read.tenant == TENANT


def test_a_rename_onto_a_taken_name_is_name_in_use_and_changes_nothing(store: MetadataStore) -> None:
    records = records_of(store)
    records.insert_custom_key_store(a_store())
    other = a_store("cks-0123456789abcdef1", name="ops")
    records.insert_custom_key_store(other)

    with pytest.raises(errors.CustomKeyStoreNameInUseException):
        records.replace_custom_key_store(
            replace(other, name="finance", generation=2), 1, audit=record("UpdateCustomKeyStore")
        )

    assert records.get_custom_key_store(other.custom_key_store_id) == replace(other, creation_date=T0)
    assert event_names(store) == []


def test_delete_only_without_keys_and_at_the_expected_generation(store: MetadataStore) -> None:
    records = records_of(store)
    cks = a_store()
    records.insert_custom_key_store(cks)
    key, version = make_key(tenant=TENANT)
    key = replace(key, key_store_id=cks.custom_key_store_id)
    store.insert_creating_key(key, replace(version, key_store_id=cks.custom_key_store_id))
    store.finish_creating_key(key.key_id)
    other_key, other_version = make_key(tenant=TENANT)
    store.insert_creating_key(other_key, other_version)  # the default key store

    assert records.count_keys_in_key_store(cks.custom_key_store_id) == 1
    assert not records.delete_custom_key_store(
        cks.custom_key_store_id, 1, audit=record("DeleteCustomKeyStore")
    )
    assert store.schedule_deletion(key.key_id, KeyState.ENABLED, T0, 7)
    assert records.count_keys_in_key_store(cks.custom_key_store_id) == 1  # pending deletion still counts
    assert not records.delete_custom_key_store(cks.custom_key_store_id, 1)

    store.delete_key(key.key_id)
    assert records.count_keys_in_key_store(cks.custom_key_store_id) == 0
    assert not records.delete_custom_key_store(cks.custom_key_store_id, 2)  # stale generation
    assert records.delete_custom_key_store(cks.custom_key_store_id, 1, audit=record("DeleteCustomKeyStore"))
    assert records.get_custom_key_store(cks.custom_key_store_id) is None
    assert not records.delete_custom_key_store(cks.custom_key_store_id, 1)
    assert event_names(store) == ["DeleteCustomKeyStore"]


def test_the_row_holds_the_sealed_pin_and_nothing_else_of_it(sql_engine: Engine) -> None:
    SqlMetadataStore(sql_engine).insert_custom_key_store(a_store())
    with sql_engine.connect() as connection:
        row: Any = connection.execute(select(custom_key_stores)).one()._mapping
    assert bytes(row["sealed_pin"]) == SEALED
    assert row["token_label"] == "team-a" and row["token_serial_wanted"] is None
    assert row["desired"] == "DISCONNECTED" and row["generation"] == 1


def test_a_new_key_can_hold_its_custom_key_store_until_commit(sql_engine: Engine) -> None:
    """store/custom_key_stores_sql.py lock_custom_key_store_of_new_key, for insert_creating_key."""
    store = SqlMetadataStore(sql_engine)
    store.insert_custom_key_store(a_store())
    with store.database.writer.begin() as connection:
        lock_custom_key_store_of_new_key(connection, "cks-0123456789abcdef0")
        lock_custom_key_store_of_new_key(connection, DEFAULT_KEY_STORE_ID)
        with pytest.raises(errors.CustomKeyStoreNotFoundException):
            lock_custom_key_store_of_new_key(connection, "cks-ffffffffffffffff0")
