"""The MetadataStore's feed of metadata changes (issue 18), on the fake, SQLite and PostgreSQL.

The SQL feed is written by migration 0013's triggers, so the tests change rows through the
store's ordinary methods and read the feed: each table's change shows up under its kind and name.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from hsmstore.core.access_keys_model import AccessKeyStatus
from hsmstore.core.model import KeyState
from hsmstore.core.ports import Store
from hsmstore.core.ports import metadata_changes as changed
from hsmstore.store.access_keys_sql import SqlAccessKeys
from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    store_fixture,
)
from tests.contract.test_access_key_records import record
from tests.contract.test_authorization_store import ALICE, identity_policy, make_grant
from tests.contract.test_metadata_store import T0, add_enabled_key, make_alias, make_key


def changes_since(store: Store, after_id: int) -> list[tuple[str, str]]:
    return [(kind, name) for _, kind, name in store.metadata_changes_after(after_id, 1000)]


def test_creating_a_key_writes_only_its_finish(store: Store) -> None:
    """The CREATING insert (and on SQL its policy) is left out: nothing cached it."""
    assert store.latest_metadata_change_id() == 0
    key, version = make_key()
    store.insert_creating_key(key, version)
    assert store.latest_metadata_change_id() == 0
    store.finish_creating_key(key.key_id)
    assert changes_since(store, 0) == [(changed.KEY, key.key_id)]


def test_every_key_update_and_its_removal_name_the_key(store: Store) -> None:
    key = add_enabled_key(store)
    other = add_enabled_key(store)
    start = store.latest_metadata_change_id()
    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED)
    store.update_description(key.key_id, "new words")
    assert changes_since(store, start) == [(changed.KEY, key.key_id)] * 2
    middle = store.latest_metadata_change_id()
    store.delete_key(key.key_id)
    assert (changed.KEY, key.key_id) in changes_since(store, middle)
    assert (changed.KEY, other.key_id) not in changes_since(store, start)


def test_a_failed_compare_and_set_writes_no_change(store: Store) -> None:
    key = add_enabled_key(store)
    start = store.latest_metadata_change_id()
    assert not store.update_key_state(key.key_id, KeyState.DISABLED, KeyState.ENABLED)
    assert store.latest_metadata_change_id() == start


def test_a_key_policy_put_names_the_key(store: Store) -> None:
    key = add_enabled_key(store)
    start = store.latest_metadata_change_id()
    store.put_key_policy(key.key_id, "default", "{}", T0)  # an insert: none was stored
    store.put_key_policy(key.key_id, "default", '{"v": 2}', T0)  # an update
    assert changes_since(store, start) == [(changed.KEY_POLICY, key.key_id)] * 2


def test_a_grant_made_and_revoked_names_its_key(store: Store) -> None:
    key = add_enabled_key(store)
    start = store.latest_metadata_change_id()
    grant = store.create_grant(make_grant(key.key_id))
    assert changes_since(store, start) == [(changed.GRANTS, key.key_id)]
    made = store.latest_metadata_change_id()
    assert store.delete_grant(grant.grant_id)
    assert changes_since(store, made) == [(changed.GRANTS, key.key_id)]


def test_an_alias_made_moved_and_deleted_names_tenant_and_alias(store: Store) -> None:
    key = add_enabled_key(store)
    other = add_enabled_key(store)
    start = store.latest_metadata_change_id()
    store.create_alias(make_alias("tenant-a", "alias/app", key.key_id))
    assert store.update_alias("tenant-a", "alias/app", other.key_id, T0 + timedelta(seconds=1))
    assert store.delete_alias("tenant-a", "alias/app")
    assert changes_since(store, start) == [(changed.ALIAS, "tenant-a/alias/app")] * 3
    assert changed.split_tenant_name("tenant-a/alias/app") == ("tenant-a", "alias/app")


def test_deleting_a_key_names_its_aliases_policy_and_grants(store: Store) -> None:
    key = add_enabled_key(store)
    store.create_alias(make_alias("tenant-a", "alias/gone", key.key_id))
    store.put_key_policy(key.key_id, "default", "{}", T0)
    store.create_grant(make_grant(key.key_id))
    start = store.latest_metadata_change_id()
    store.delete_key(key.key_id)
    found = set(changes_since(store, start))
    assert {
        (changed.KEY, key.key_id),
        (changed.ALIAS, "tenant-a/alias/gone"),
        (changed.KEY_POLICY, key.key_id),
        (changed.GRANTS, key.key_id),
    } <= found


def test_an_identity_policy_put_and_deleted_names_tenant_and_principal(store: Store) -> None:
    start = store.latest_metadata_change_id()
    store.put_identity_policy(identity_policy(ALICE, "a"))
    store.put_identity_policy(identity_policy(ALICE, "a", '{"x": 1}'))
    assert store.delete_identity_policy("acme", ALICE, "a")
    name = f"acme/{ALICE}"
    assert changes_since(store, start) == [(changed.IDENTITY_POLICIES, name)] * 3
    assert changed.split_tenant_name(name) == ("acme", ALICE)


def test_the_feed_pages_by_id_and_prunes_by_age(store: Store) -> None:
    made = [add_enabled_key(store) for _ in range(5)]
    start = store.latest_metadata_change_id()
    for key in made:
        assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED)
    first = store.metadata_changes_after(start, 2)
    second = store.metadata_changes_after(first[-1][0], 2)
    rest = store.metadata_changes_after(second[-1][0], 10)
    rows = [*first, *second, *rest]
    assert [name for _, _, name in rows] == [key.key_id for key in made]
    ids = [change_id for change_id, _, _ in rows]
    assert ids == sorted(ids) and len(set(ids)) == 5 and ids[0] > start
    assert store.latest_metadata_change_id() == ids[-1]
    assert store.prune_metadata_changes(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert store.prune_metadata_changes(datetime.now(UTC) + timedelta(hours=1)) == 10
    assert store.metadata_changes_after(0, 100) == []


def test_an_access_key_status_change_names_it_but_its_use_does_not(sql_engine: Engine) -> None:
    """Access keys live in their own records (SQL only); ``last_used`` is written once a minute
    per process and changes nothing a cache holds, so it writes no change."""
    store = SqlMetadataStore(sql_engine)
    access_keys = SqlAccessKeys(store.database)
    made = record()
    access_keys.insert_access_key(made)
    assert store.latest_metadata_change_id() == 0  # unknown access keys are never cached
    access_keys.note_access_key_used(made.access_key_id, datetime.now(UTC))
    assert store.latest_metadata_change_id() == 0
    assert access_keys.set_access_key_status(made.access_key_id, AccessKeyStatus.INACTIVE)
    assert changes_since(store, 0) == [(changed.ACCESS_KEY, made.access_key_id)]


def test_only_a_postgresql_feed_may_commit_ids_out_of_order(sql_engine: Engine) -> None:
    store = SqlMetadataStore(sql_engine)
    assert store.metadata_change_ids_commit_in_order() is (sql_engine.dialect.name == "sqlite")
