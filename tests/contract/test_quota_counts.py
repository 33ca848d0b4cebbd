"""The store counts the resource quotas read (core/quotas.py), held to the same answers on every backend."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hsmstore.core.model import KeyManager, KeyState
from hsmstore.store import migrate
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    store_fixture,
)
from tests.contract.test_authorization_store import make_grant
from tests.contract.test_metadata_store import (
    T0,
    add_enabled_key,
    add_enabled_key_as_an_older_release,
    make_alias,
    make_key,
)


def test_customer_keys_are_counted_per_tenant_in_every_state_but_service_keys_are_not(store: Any) -> None:
    assert store.count_customer_keys("tenant-a") == 0
    enabled = add_enabled_key(store)
    store.update_key_state(enabled.key_id, KeyState.ENABLED, KeyState.DISABLED)
    creating, version = make_key()
    store.insert_creating_key(creating, version)  # still being made: counted, as AWS counts every state
    pending = add_enabled_key(store)
    store.schedule_deletion(pending.key_id, KeyState.ENABLED, T0, 7)
    service, service_version = make_key()
    store.insert_creating_key(replace(service, key_manager=KeyManager.SERVICE), service_version)
    add_enabled_key(store, tenant="tenant-b")
    assert store.count_customer_keys("tenant-a") == 3
    assert store.count_customer_keys("tenant-b") == 1
    store.delete_key(enabled.key_id)
    assert store.count_customer_keys("tenant-a") == 2


def test_aliases_are_counted_per_target_key(store: Any) -> None:
    first, second = add_enabled_key(store), add_enabled_key(store)
    assert store.count_aliases_of_key(first.key_id) == 0
    store.create_alias(make_alias("tenant-a", "alias/one", first.key_id))
    store.create_alias(make_alias("tenant-a", "alias/two", first.key_id))
    store.create_alias(make_alias("tenant-a", "alias/three", second.key_id))
    assert store.count_aliases_of_key(first.key_id) == 2
    store.update_alias("tenant-a", "alias/two", second.key_id, T0)
    assert (store.count_aliases_of_key(first.key_id), store.count_aliases_of_key(second.key_id)) == (1, 2)
    store.delete_alias("tenant-a", "alias/one")
    assert store.count_aliases_of_key(first.key_id) == 0


def test_grants_are_counted_per_key(store: Any) -> None:
    first, second = add_enabled_key(store), add_enabled_key(store)
    grants = [make_grant(first.key_id) for _ in range(3)]
    for grant in grants:
        store.create_grant(grant)
    store.create_grant(make_grant(second.key_id))
    assert (store.count_grants(first.key_id), store.count_grants(second.key_id)) == (3, 1)
    store.delete_grant(grants[0].grant_id)
    assert store.count_grants(first.key_id) == 2
    assert store.count_grants("00000000-0000-0000-0000-000000000000") == 0


# -- migration 0014 (SQL only) ----------------------------------------------------------------


def test_upgrading_from_0013_counts_the_keys_that_exist(database_url: str) -> None:
    migrate.upgrade(database_url, "0013")
    engine = create_engine_for_url(database_url)
    try:
        add_enabled_key_as_an_older_release(engine)
        add_enabled_key_as_an_older_release(engine)
        migrate.upgrade(database_url)
        sql_store = SqlMetadataStore(engine)
        assert sql_store.count_customer_keys("tenant-a") == 2
        add_enabled_key(sql_store)  # and the triggers go on from there
        assert sql_store.count_customer_keys("tenant-a") == 3
    finally:
        engine.dispose()
