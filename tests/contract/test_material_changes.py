"""The MetadataStore's feed of material changes (issue 18), on the fake, SQLite and PostgreSQL.

The SQL feed is written by migration 0012's triggers, so the tests change rows through the
store's ordinary methods (and, on SQL, by plain SQL as another release would) and read the feed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from hsmstore.core.model import KeyRecord, KeyState, Residency
from hsmstore.core.ports import MetadataStore
from hsmstore.store.schema import key_versions, keys
from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    sqlite_engine_fixture,
    store_fixture,
)
from tests.contract.test_domain_key_records import CLAIM_UNTIL, LATER, add_domain_key, add_wrapped_key, blob
from tests.contract.test_metadata_store import T0, add_enabled_key, make_key, rotation_version


def changes_since(store: MetadataStore, after_id: int) -> list[bytes]:
    return [token_id for _, token_id in store.material_changes_after(after_id, 1000)]


def key_with_two_versions(store: MetadataStore) -> tuple[KeyRecord, list[bytes]]:
    key = add_enabled_key(store)
    second = rotation_version(key, 2)
    assert store.insert_pending_version(second, 25)
    assert store.finish_rotation(key.key_id, 2, second.token_id, None)
    return key, [version.token_id for version in store.list_versions(key.key_id)]


def test_creating_and_rotating_keys_write_no_changes(store: MetadataStore) -> None:
    """Nothing was cached for material that was never usable (CREATING, PENDING)."""
    assert store.latest_material_change_id() == 0
    key_with_two_versions(store)
    under = add_domain_key(store, 1)
    add_wrapped_key(store, under)
    assert store.latest_material_change_id() == 0
    assert store.material_changes_after(0, 10) == []


def test_a_key_state_change_names_every_version_of_the_key(store: MetadataStore) -> None:
    key, token_ids = key_with_two_versions(store)
    other = add_enabled_key(store)
    start = store.latest_material_change_id()

    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED)
    disabled = store.latest_material_change_id()
    assert sorted(changes_since(store, start)) == sorted(token_ids)

    assert store.schedule_deletion(key.key_id, KeyState.DISABLED, T0, 7)
    assert sorted(changes_since(store, disabled)) == sorted(token_ids)
    assert store.list_versions(other.key_id)[0].token_id not in changes_since(store, start)


def test_a_failed_compare_and_set_or_a_description_writes_no_change(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    start = store.latest_material_change_id()
    assert not store.update_key_state(key.key_id, KeyState.DISABLED, KeyState.ENABLED)
    store.update_description(key.key_id, "new words")
    store.put_tags(key.key_id, {"team": "a"}, 50)
    assert store.latest_material_change_id() == start


def test_a_version_state_change_and_a_removed_version_are_named(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    abandoned = rotation_version(key, 2)
    assert store.insert_pending_version(abandoned, 25)
    start = store.latest_material_change_id()
    assert store.abandon_version(key.key_id, 2, abandoned.token_id)  # from PENDING: never usable
    assert store.material_changes_after(start, 10) == []
    store.delete_version(key.key_id, 2, abandoned.token_id, abandoned_at=LATER)
    assert changes_since(store, start) == [abandoned.token_id]


def test_destroying_a_key_names_its_versions(store: MetadataStore) -> None:
    key, token_ids = key_with_two_versions(store)
    assert store.schedule_deletion(key.key_id, KeyState.ENABLED, T0, 7)
    scheduled = store.latest_material_change_id()
    assert store.begin_destruction(key.key_id)
    destroying = store.latest_material_change_id()
    assert sorted(changes_since(store, scheduled)) == sorted(token_ids)
    store.delete_key(key.key_id, abandoned_at=LATER)
    assert sorted(changes_since(store, destroying)) == sorted(token_ids)


def test_blobs_claims_and_leases_write_no_change(store: MetadataStore) -> None:
    old = add_domain_key(store, 1)
    key, _ = add_wrapped_key(store, old)
    new = add_domain_key(store, 2, created_at=LATER)
    start = store.latest_material_change_id()
    [claimed] = store.claim_rewrap_batch(old, "node-a", T0, CLAIM_UNTIL, 10)
    assert store.finish_rewrap(key.key_id, 1, old, "node-a", blob(new))
    assert store.lease_invocations(key.key_id, 1, 10, 100) == 10
    assert claimed.residency is Residency.WRAPPED
    assert store.latest_material_change_id() == start


def test_the_feed_pages_by_id(store: MetadataStore) -> None:
    disabled = [add_enabled_key(store) for _ in range(5)]
    start = store.latest_material_change_id()
    for key in disabled:
        assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED)
    expected = [store.list_versions(key.key_id)[0].token_id for key in disabled]

    first = store.material_changes_after(start, 2)
    second = store.material_changes_after(first[-1][0], 2)
    rest = store.material_changes_after(second[-1][0], 10)
    ids = [change_id for change_id, _ in [*first, *second, *rest]]
    assert [token_id for _, token_id in [*first, *second, *rest]] == expected
    assert ids == sorted(ids) and len(set(ids)) == 5 and ids[0] > start
    assert store.latest_material_change_id() == ids[-1]


def test_pruning_removes_old_changes_and_ids_are_never_reused(store: MetadataStore) -> None:
    first, second = add_enabled_key(store), add_enabled_key(store)
    assert store.update_key_state(first.key_id, KeyState.ENABLED, KeyState.DISABLED)
    latest = store.latest_material_change_id()
    assert store.prune_material_changes(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert store.prune_material_changes(datetime.now(UTC) + timedelta(hours=1)) == 1
    assert store.material_changes_after(0, 10) == []

    assert store.update_key_state(second.key_id, KeyState.ENABLED, KeyState.DISABLED)
    [(change_id, token_id)] = store.material_changes_after(0, 10)
    assert change_id > latest
    assert token_id == store.list_versions(second.key_id)[0].token_id


def test_changes_made_by_plain_sql_are_in_the_feed(sql_engine: Engine) -> None:
    """Triggers: a node on another release, or an operator's UPDATE, cannot bypass the feed."""
    store = SqlMetadataStore(sql_engine)
    key, version = make_key()
    store.insert_creating_key(key, version)
    store.finish_creating_key(key.key_id)
    start = store.latest_material_change_id()
    with sql_engine.begin() as connection:
        connection.execute(keys.update().where(keys.c.key_id == key.key_id).values(key_state="DISABLED"))
        connection.execute(key_versions.update().values(state="ABANDONED"))
        connection.execute(key_versions.delete())
    assert changes_since(store, start) == [version.token_id] * 3
    assert replace(key, state=KeyState.DISABLED) == store.get_key(key.key_id)
