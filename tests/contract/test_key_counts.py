"""``MetadataStore.count_keys_by_state`` (issue 16, the ``hsmstore_keys`` metric) on every backend.

One aggregate over all tenants; the fake and the SQL stores must agree.
"""

from __future__ import annotations

from hsmstore.core.model import KeyState
from hsmstore.core.ports import MetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    sqlite_engine_fixture,
    store_fixture,
)
from tests.contract.test_metadata_store import add_enabled_key, make_key


def test_an_empty_store_counts_no_keys(store: MetadataStore) -> None:
    assert {state: count for state, count in store.count_keys_by_state().items() if count} == {}


def test_keys_are_counted_by_state_across_tenants(store: MetadataStore) -> None:
    for tenant in ("tenant-a", "tenant-a", "tenant-b"):
        add_enabled_key(store, tenant=tenant)
    disabled = add_enabled_key(store, tenant="tenant-b")
    assert store.update_key_state(disabled.key_id, KeyState.ENABLED, KeyState.DISABLED)
    creating, version = make_key(tenant="tenant-c")
    store.insert_creating_key(creating, version)
    counts = {state: count for state, count in store.count_keys_by_state().items() if count}
    assert counts == {KeyState.ENABLED: 3, KeyState.DISABLED: 1, KeyState.CREATING: 1}
    assert all(isinstance(state, KeyState) for state in counts)
