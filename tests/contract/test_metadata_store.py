"""The MetadataStore contract, run against every implementation (see conftest_store)."""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Table, event, func, inspect, select, text

from hsmstore import errors
from hsmstore.core.key_stores.model import CustomKeyStore, DesiredConnection, TokenLocator
from hsmstore.core.model import (
    DEFAULT_KEY_STORE_ID,
    AliasRecord,
    DestructionRecord,
    KeyManager,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
    Residency,
    RotationType,
    VersionState,
    new_key_id,
    new_token_id,
)
from hsmstore.core.ports import KnownTokenIds, MetadataStore
from hsmstore.store import migrate
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.key_rows import destruction_values, key_values, version_values
from hsmstore.store.schema import key_destructions, key_versions, keys, metadata
from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    sqlite_engine_fixture,
    store_fixture,
)

# Microseconds and a non-UTC offset: both must survive a round trip.
T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))

# Orders differently in code point order and in a natural-language collation
# (en-US sorts "a_c" < "a-b" < "ab" < "aB" < "AB"); the store must use code points.
TRICKY_SUFFIXES = ["a-b", "aB", "a_c", "AB", "ab", "Z", "0"]


def make_key(
    tenant: str = "tenant-a",
    key_id: str | None = None,
    created: datetime = T0,
    description: str = "",
) -> tuple[KeyRecord, KeyVersion]:
    key_id = key_id or new_key_id()
    key = KeyRecord(
        key_id=key_id,
        tenant=tenant,
        description=description,
        state=KeyState.CREATING,
        key_usage=KeyUsage.ENCRYPT_DECRYPT,
        key_spec=KeySpec.SYMMETRIC_DEFAULT,
        origin=Origin.AWS_KMS,
        key_manager=KeyManager.CUSTOMER,
        creation_date=created,
        current_version=1,
    )
    version = KeyVersion(
        key_id=key_id,
        version=1,
        token_id=new_token_id(),
        state=VersionState.PENDING,
        creation_date=created,
    )
    return key, version


def add_enabled_key(store: MetadataStore, tenant: str = "tenant-a", key_id: str | None = None) -> KeyRecord:
    key, version = make_key(tenant=tenant, key_id=key_id)
    store.insert_creating_key(key, version)
    store.finish_creating_key(key.key_id)
    return key.with_state(KeyState.ENABLED)


def make_alias(tenant: str, alias_name: str, target_key_id: str, when: datetime = T0) -> AliasRecord:
    return AliasRecord(
        tenant=tenant,
        alias_name=alias_name,
        target_key_id=target_key_id,
        creation_date=when,
        last_updated_date=when,
    )


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.utcoffset() == timedelta(0)


# -- creating keys ------------------------------------------------------------


def test_new_key_is_creating_and_pending_until_finished(store: MetadataStore) -> None:
    key, version = make_key()
    store.insert_creating_key(key, version)

    assert store.get_key(key.key_id) == key
    assert store.get_version(key.key_id, 1) == version
    assert store.list_keys("tenant-a", 10, None) == []

    store.finish_creating_key(key.key_id)

    assert store.get_key(key.key_id) == key.with_state(KeyState.ENABLED)
    finished_version = store.get_version(key.key_id, 1)
    assert finished_version is not None
    assert finished_version.state is VersionState.ACTIVE
    assert [listed.key_id for listed in store.list_keys("tenant-a", 10, None)] == [key.key_id]


def test_list_pending_creations_by_age_with_versions(store: MetadataStore) -> None:
    old, old_version = make_key(created=T0)
    older, older_version = make_key(created=T0 - timedelta(minutes=1))
    new, new_version = make_key(created=T0 + timedelta(minutes=5))
    finished, finished_version = make_key(created=T0 - timedelta(minutes=2))
    for key, version in [(old, old_version), (older, older_version), (new, new_version)]:
        store.insert_creating_key(key, version)
    store.insert_creating_key(finished, finished_version)
    store.finish_creating_key(finished.key_id)

    pending = store.list_pending_creations(T0 + timedelta(microseconds=1))

    assert [creation.key for creation in pending] == [older, old]
    assert [creation.versions for creation in pending] == [[older_version], [old_version]]
    # Strictly before: a key created exactly at the cut-off is not pending yet.
    assert [creation.key for creation in store.list_pending_creations(T0)] == [older]


def test_finish_creating_key_leaves_a_key_that_is_not_creating_alone(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED)

    assert store.finish_creating_key(key.key_id) is False

    assert store.get_key(key.key_id) == key.with_state(KeyState.DISABLED)
    with pytest.raises(errors.NotFoundException):
        store.finish_creating_key(new_key_id())


def test_duplicate_key_id_or_token_id_is_refused_whole(store: MetadataStore) -> None:
    key, version = make_key()
    store.insert_creating_key(key, version)

    same_id, same_id_version = make_key(key_id=key.key_id, tenant="tenant-b")
    with pytest.raises(errors.AlreadyExistsException):
        store.insert_creating_key(same_id, same_id_version)

    other, _ = make_key()
    reused_token = KeyVersion(
        key_id=other.key_id,
        version=1,
        token_id=version.token_id,
        state=VersionState.PENDING,
        creation_date=T0,
    )
    with pytest.raises(errors.AlreadyExistsException):
        store.insert_creating_key(other, reused_token)
    # One transaction: the key row did not stay behind without its version.
    assert store.get_key(other.key_id) is None
    assert store.get_key(key.key_id) == key


def test_insert_refuses_records_that_are_not_a_new_key(store: MetadataStore) -> None:
    key, version = make_key()
    with pytest.raises(ValueError, match="CREATING"):
        store.insert_creating_key(key.with_state(KeyState.ENABLED), version)
    with pytest.raises(ValueError, match="PENDING"):
        store.insert_creating_key(key, KeyVersion(key.key_id, 1, version.token_id, VersionState.ACTIVE, T0))
    with pytest.raises(ValueError, match="another key"):
        store.insert_creating_key(key, make_key()[1])
    naive, naive_version = make_key(created=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.insert_creating_key(naive, naive_version)
    assert store.get_key(key.key_id) is None


# -- reading keys -------------------------------------------------------------


def test_key_and_version_round_trip_exactly(store: MetadataStore) -> None:
    key, version = make_key(description="Schlüssel für die Buchhaltung \U0001f511")
    key = replace(key, deletion_date=T0 + timedelta(days=7, microseconds=1))
    store.insert_creating_key(key, version)

    stored_key = store.get_key(key.key_id)
    stored_version = store.get_version(key.key_id, 1)

    assert stored_key == key
    assert stored_version == version
    assert store.list_versions(key.key_id) == [version]
    assert stored_key is not None
    assert stored_version is not None
    assert stored_key.creation_date == T0
    assert stored_key.creation_date.microsecond == T0.astimezone(UTC).microsecond
    assert_utc(stored_key.creation_date)
    assert_utc(stored_key.deletion_date)
    assert_utc(stored_version.creation_date)
    assert isinstance(stored_version.token_id, bytes)
    assert isinstance(stored_key.state, KeyState)
    assert isinstance(stored_version.state, VersionState)


def test_missing_keys_and_versions_read_as_none_or_empty(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    assert store.get_key(new_key_id()) is None
    assert store.get_version(key.key_id, 2) is None
    assert store.get_version(new_key_id(), 1) is None
    assert store.list_versions(new_key_id()) == []


def test_list_keys_pages_by_key_id_per_tenant_without_creating_keys(store: MetadataStore) -> None:
    tenant_a_ids = [f"key-{suffix}" for suffix in TRICKY_SUFFIXES]
    for key_id in tenant_a_ids:
        add_enabled_key(store, "tenant-a", key_id)
    tenant_b_key = add_enabled_key(store, "tenant-b")
    creating, creating_version = make_key(tenant="tenant-a", key_id="key-aa")
    store.insert_creating_key(creating, creating_version)
    expected = sorted(tenant_a_ids)

    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = [key.key_id for key in store.list_keys("tenant-a", 3, after)]
        if not page:
            break
        pages.append(page)
        after = page[-1]

    assert pages == [expected[0:3], expected[3:6], expected[6:]]
    assert [key.key_id for key in store.list_keys("tenant-b", 100, None)] == [tenant_b_key.key_id]
    assert store.list_keys("tenant-c", 100, None) == []
    assert [key.key_id for key in store.list_keys("tenant-a", 100, "key-Z")] == [
        key_id for key_id in expected if key_id > "key-Z"
    ]
    with pytest.raises(ValueError, match="limit"):
        store.list_keys("tenant-a", 0, None)


# -- changing keys ------------------------------------------------------------


def test_update_key_state_is_compare_and_set(store: MetadataStore) -> None:
    key = add_enabled_key(store)

    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED) is True
    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.PENDING_DELETION) is False
    assert store.get_key(key.key_id) == key.with_state(KeyState.DISABLED)
    assert store.update_key_state(key.key_id, KeyState.DISABLED, KeyState.PENDING_DELETION) is True
    assert store.update_key_state(new_key_id(), KeyState.ENABLED, KeyState.DISABLED) is False


def test_update_description(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    other = add_enabled_key(store)

    store.update_description(key.key_id, "rotated quarterly")

    stored = store.get_key(key.key_id)
    assert stored is not None
    assert stored.description == "rotated quarterly"
    assert store.get_key(other.key_id) == other
    with pytest.raises(errors.NotFoundException):
        store.update_description(new_key_id(), "nobody")


def test_delete_key_removes_its_versions_and_aliases_only(store: MetadataStore) -> None:
    doomed, doomed_version = make_key()
    store.insert_creating_key(doomed, doomed_version)
    store.finish_creating_key(doomed.key_id)
    survivor = add_enabled_key(store)
    store.create_alias(make_alias("tenant-a", "alias/doomed", doomed.key_id))
    store.create_alias(make_alias("tenant-a", "alias/survivor", survivor.key_id))

    store.delete_key(doomed.key_id)
    store.delete_key(doomed.key_id)  # deleting twice is not an error (recovery may retry)

    assert store.get_key(doomed.key_id) is None
    assert store.get_version(doomed.key_id, 1) is None
    assert store.list_versions(doomed.key_id) == []
    assert store.get_alias("tenant-a", "alias/doomed") is None
    assert [alias.alias_name for alias in store.list_aliases("tenant-a", 10, None, None)] == [
        "alias/survivor"
    ]
    assert store.get_key(survivor.key_id) == survivor
    # The token id is free again for a new version.
    reborn, _ = make_key()
    store.insert_creating_key(
        reborn, KeyVersion(reborn.key_id, 1, doomed_version.token_id, VersionState.PENDING, T0)
    )


def test_concurrent_compare_and_set_from_threads(store: MetadataStore) -> None:
    """8 threads race to flip one key; an atomic CAS lets exactly one win each flip."""
    key = add_enabled_key(store)
    flips: Counter[tuple[KeyState, KeyState]] = Counter()
    failures: list[str] = []
    record = threading.Lock()
    start = threading.Barrier(8)

    def flip_repeatedly() -> None:
        try:
            start.wait()
            for _ in range(100):
                current = store.get_key(key.key_id)
                assert current is not None
                target = KeyState.DISABLED if current.state is KeyState.ENABLED else KeyState.ENABLED
                if store.update_key_state(key.key_id, current.state, target):
                    with record:
                        flips[(current.state, target)] += 1
        except BaseException:
            with record:
                failures.append(traceback.format_exc())

    threads = [threading.Thread(target=flip_repeatedly) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert failures == []
    assert not any(thread.is_alive() for thread in threads)
    disables = flips[(KeyState.ENABLED, KeyState.DISABLED)]
    enables = flips[(KeyState.DISABLED, KeyState.ENABLED)]
    assert disables >= 1
    # Successful flips alternate, so the two counts differ by the final state only.
    final = store.get_key(key.key_id)
    assert final is not None
    assert disables - enables == (1 if final.state is KeyState.DISABLED else 0)


# -- aliases ------------------------------------------------------------------


def test_alias_create_get_and_duplicate(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    other_tenant_key = add_enabled_key(store, "tenant-b")
    alias = make_alias("tenant-a", "alias/payments", key.key_id)

    store.create_alias(alias)

    stored = store.get_alias("tenant-a", "alias/payments")
    assert stored == alias
    assert stored is not None
    assert_utc(stored.creation_date)
    assert_utc(stored.last_updated_date)
    with pytest.raises(errors.AlreadyExistsException) as raised:
        store.create_alias(make_alias("tenant-a", "alias/payments", add_enabled_key(store).key_id))
    assert "alias/payments" in raised.value.message
    assert key.key_id not in raised.value.message
    # Alias names are per tenant.
    store.create_alias(make_alias("tenant-b", "alias/payments", other_tenant_key.key_id))
    assert store.get_alias("tenant-a", "alias/payments") == alias
    assert store.get_alias("tenant-c", "alias/payments") is None
    assert store.get_alias("tenant-a", "alias/other") is None


def test_alias_to_a_missing_key_is_refused(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    with pytest.raises(errors.NotFoundException):
        store.create_alias(make_alias("tenant-a", "alias/nowhere", new_key_id()))
    assert store.get_alias("tenant-a", "alias/nowhere") is None

    store.create_alias(make_alias("tenant-a", "alias/somewhere", key.key_id))
    with pytest.raises(errors.NotFoundException):
        store.update_alias("tenant-a", "alias/somewhere", new_key_id(), T0)
    assert store.get_alias("tenant-a", "alias/somewhere") == make_alias(
        "tenant-a", "alias/somewhere", key.key_id
    )


def test_update_alias_points_it_at_another_key(store: MetadataStore) -> None:
    first = add_enabled_key(store)
    second = add_enabled_key(store)
    store.create_alias(make_alias("tenant-a", "alias/current", first.key_id))
    later = T0 + timedelta(hours=1, microseconds=7)

    assert store.update_alias("tenant-a", "alias/current", second.key_id, later) is True

    updated = store.get_alias("tenant-a", "alias/current")
    assert updated == AliasRecord("tenant-a", "alias/current", second.key_id, T0, later)
    assert updated is not None
    assert_utc(updated.last_updated_date)
    assert store.update_alias("tenant-a", "alias/missing", second.key_id, later) is False
    assert store.update_alias("tenant-b", "alias/current", second.key_id, later) is False
    assert store.get_alias("tenant-b", "alias/current") is None


def test_delete_alias(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    store.create_alias(make_alias("tenant-a", "alias/short-lived", key.key_id))

    assert store.delete_alias("tenant-b", "alias/short-lived") is False
    assert store.delete_alias("tenant-a", "alias/short-lived") is True
    assert store.delete_alias("tenant-a", "alias/short-lived") is False
    assert store.get_alias("tenant-a", "alias/short-lived") is None
    assert store.get_key(key.key_id) == key


def test_list_aliases_pages_by_name_with_optional_key_filter(store: MetadataStore) -> None:
    first = add_enabled_key(store)
    second = add_enabled_key(store)
    names = [f"alias/{suffix}" for suffix in TRICKY_SUFFIXES]
    target_of = {name: (first if index % 2 else second).key_id for index, name in enumerate(names)}
    for name, key_id in target_of.items():
        store.create_alias(make_alias("tenant-a", name, key_id))
    other_tenant_key = add_enabled_key(store, "tenant-b")
    store.create_alias(make_alias("tenant-b", "alias/a-b", other_tenant_key.key_id))
    expected = sorted(names)

    def all_pages(key_id: str | None) -> list[list[str]]:
        pages: list[list[str]] = []
        after: str | None = None
        while page := [a.alias_name for a in store.list_aliases("tenant-a", 2, after, key_id)]:
            pages.append(page)
            after = page[-1]
        return pages

    assert all_pages(None) == [expected[0:2], expected[2:4], expected[4:6], expected[6:]]
    first_names = [name for name in expected if target_of[name] == first.key_id]
    assert [name for page in all_pages(first.key_id) for name in page] == first_names
    assert all(len(page) <= 2 for page in all_pages(first.key_id))
    assert store.list_aliases("tenant-a", 10, None, new_key_id()) == []
    assert [a.alias_name for a in store.list_aliases("tenant-b", 10, None, None)] == ["alias/a-b"]
    assert store.list_aliases("tenant-b", 10, None, first.key_id) == []
    listed = store.list_aliases("tenant-a", 1, None, None)[0]
    assert listed == make_alias("tenant-a", expected[0], target_of[expected[0]])
    with pytest.raises(ValueError, match="limit"):
        store.list_aliases("tenant-a", 0, None, None)


def test_ping(store: MetadataStore) -> None:
    store.ping()


# -- SQL only: engine, hot path, migrations -------------------------------------


@contextmanager
def recorded_statements(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_hot_path_reads_are_one_indexed_select(sql_engine: Engine) -> None:
    sql_store = SqlMetadataStore(sql_engine)
    key = add_enabled_key(sql_store)
    sql_store.get_key(key.key_id)  # warm the pool: first-connect queries are not the hot path

    with recorded_statements(sql_store.database.reader.engine) as statements:
        assert sql_store.get_key(key.key_id) == key
        assert sql_store.get_version(key.key_id, 1) is not None

    assert len(statements) == 2
    assert all(statement.lstrip().upper().startswith("SELECT") for statement in statements)
    if sql_engine.dialect.name == "sqlite":
        with sql_engine.connect() as connection:
            for statement, parameters in [(statements[0], (key.key_id,)), (statements[1], (key.key_id, 1))]:
                plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
                details = " ".join(str(row[-1]) for row in plan)
                assert "SEARCH" in details
                assert "SCAN" not in details


def test_writes_on_sqlite_take_the_write_lock_first(sqlite_engine: Engine) -> None:
    sql_engine = sqlite_engine
    sql_store = SqlMetadataStore(sql_engine)
    key = add_enabled_key(sql_store)

    with recorded_statements(sql_engine) as statements:
        sql_store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED)

    assert statements[0] == "BEGIN IMMEDIATE"


def test_sqlite_connections_get_the_pragmas(sqlite_engine: Engine) -> None:
    """The pooled ones, and those the reading threads keep (store/database.py ``Reader``)."""
    database = SqlMetadataStore(sqlite_engine).database
    for connect in (sqlite_engine.connect, database.reader.connect):
        with connect() as connection:
            pragmas = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
            }
        assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000, "synchronous": 2}
    database.reader.close()


def test_create_engine_for_url_picks_drivers_and_refuses_the_rest(tmp_path: Path) -> None:
    for url in ("postgresql://u@db.invalid/hsm", "postgres://u@db.invalid/hsm"):
        engine = create_engine_for_url(url)  # no connection is made
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.pool.size() == 10  # type: ignore[attr-defined]
    for url in ("sqlite://", "sqlite:///:memory:", "mysql://u@db.invalid/hsm", "postgresql+psycopg2://u@h/d"):
        with pytest.raises(ValueError, match=r"SQLite|unsupported"):
            create_engine_for_url(url)
    assert create_engine_for_url(f"sqlite:///{tmp_path / 'x.db'}").dialect.name == "sqlite"


def test_migrations_create_exactly_the_schema(database_url: str) -> None:
    assert migrate.current_revision(database_url) is None

    migrate.upgrade(database_url)

    assert migrate.current_revision(database_url) == migrate.head_revision()
    engine = create_engine_for_url(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert differences == []
    assert tables == {"alembic_version", *metadata.tables}


def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = create_engine_for_url(database_url)
    try:
        key = add_enabled_key(SqlMetadataStore(engine))
        with engine.connect() as connection:
            versions_before = connection.execute(text("SELECT version_num FROM alembic_version")).all()

        migrate.upgrade(database_url)

        with engine.connect() as connection:
            versions_after = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert versions_after == versions_before == [(migrate.head_revision(),)]
        assert SqlMetadataStore(engine).get_key(key.key_id) == key
    finally:
        engine.dispose()


def upgrade_together(url: str, start: Any) -> None:
    """Run in a spawned process: wait for the other upgrader, then race it."""
    start.wait(timeout=60)
    migrate.upgrade(url)


def test_concurrent_upgrades_of_a_fresh_database_both_succeed(database_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    upgraders = [context.Process(target=upgrade_together, args=(database_url, start)) for _ in range(2)]
    for upgrader in upgraders:
        upgrader.start()
    for upgrader in upgraders:
        upgrader.join(timeout=120)

    assert [upgrader.exitcode for upgrader in upgraders] == [0, 0]
    assert migrate.current_revision(database_url) == migrate.head_revision()
    engine = create_engine_for_url(database_url)
    try:
        sql_store = SqlMetadataStore(engine)
        key = add_enabled_key(sql_store)
        assert sql_store.get_key(key.key_id) == key
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


# -- crash-safety claims ----------------------------------------------------


def test_recovery_claim_and_finish_exclude_each_other(store: MetadataStore) -> None:
    claimed, version = make_key()
    store.insert_creating_key(claimed, version)
    assert store.claim_failed_creation(claimed.key_id) is True
    assert store.claim_failed_creation(claimed.key_id) is True  # resuming is allowed
    assert store.finish_creating_key(claimed.key_id) is False
    assert store.get_key(claimed.key_id).state is KeyState.FAILED  # type: ignore[union-attr]
    assert [c.key.key_id for c in store.list_pending_creations(T0 - timedelta(days=1))] == [claimed.key_id]
    assert store.list_keys(claimed.tenant, 10, None) == []

    finished = add_enabled_key(store)
    assert store.claim_failed_creation(finished.key_id) is False
    assert store.get_key(finished.key_id).state is KeyState.ENABLED  # type: ignore[union-attr]


def rotation_version(
    key: KeyRecord, number: int, rotation_type: RotationType = RotationType.ON_DEMAND
) -> KeyVersion:
    return KeyVersion(key.key_id, number, new_token_id(), VersionState.PENDING, T0, rotation_type)


def test_a_rotation_claims_its_version_number_once(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    first = rotation_version(key, 2)
    assert store.insert_pending_version(first, 25) is True
    assert store.insert_pending_version(rotation_version(key, 2), 25) is False
    assert store.finish_rotation(key.key_id, 2, new_token_id(), None) is False  # not this attempt's object
    assert store.finish_rotation(key.key_id, 2, first.token_id, None) is True
    assert store.get_key(key.key_id).current_version == 2  # type: ignore[union-attr]
    assert store.get_version(key.key_id, 2).state is VersionState.ACTIVE  # type: ignore[union-attr]
    assert store.finish_rotation(key.key_id, 2, first.token_id, None) is False


def test_an_abandoned_rotation_cannot_be_finished_and_a_finished_one_cannot_be_abandoned(
    store: MetadataStore,
) -> None:
    key = add_enabled_key(store)
    abandoned = rotation_version(key, 2)
    store.insert_pending_version(abandoned, 25)
    assert store.abandon_version(key.key_id, 2, abandoned.token_id) is True
    assert store.finish_rotation(key.key_id, 2, abandoned.token_id, None) is False
    assert store.get_key(key.key_id).current_version == 1  # type: ignore[union-attr]
    assert [v.version for v in store.list_pending_versions(T0 - timedelta(days=1))] == [2]
    store.delete_version(key.key_id, 2, abandoned.token_id)
    assert store.get_version(key.key_id, 2) is None

    retried = rotation_version(key, 2)
    store.insert_pending_version(retried, 25)
    store.abandon_version(key.key_id, 2, abandoned.token_id)  # a late claim on the old attempt
    store.delete_version(key.key_id, 2, abandoned.token_id)
    assert store.get_version(key.key_id, 2).state is VersionState.PENDING  # type: ignore[union-attr]
    assert store.finish_rotation(key.key_id, 2, retried.token_id, None) is True
    assert store.abandon_version(key.key_id, 2, retried.token_id) is False
    store.delete_version(key.key_id, 2, retried.token_id)  # an ACTIVE version is never deleted
    assert store.get_version(key.key_id, 2) is not None


def test_on_demand_rotations_stop_at_the_limit(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    for number in (2, 3):
        version = rotation_version(key, number)
        store.insert_pending_version(version, 2)
        store.finish_rotation(key.key_id, number, version.token_id, None)
    with pytest.raises(errors.LimitExceededException):
        store.insert_pending_version(rotation_version(key, 4), 2)
    assert store.insert_pending_version(rotation_version(key, 4, RotationType.AUTOMATIC), 2) is True


def test_due_rotations_are_enabled_keys_past_their_date(store: MetadataStore) -> None:
    due, later, disabled = add_enabled_key(store), add_enabled_key(store), add_enabled_key(store)
    store.set_rotation(due.key_id, 90, T0)
    store.set_rotation(later.key_id, 90, T0 + timedelta(days=1))
    store.set_rotation(disabled.key_id, 90, T0)
    store.update_key_state(disabled.key_id, KeyState.ENABLED, KeyState.DISABLED)
    assert [k.key_id for k in store.list_due_rotations(T0, 10)] == [due.key_id]
    store.set_rotation(due.key_id, None, None)
    assert store.list_due_rotations(T0, 10) == []


def test_deletion_schedule_cancel_and_destruction_claim(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    when = T0 + timedelta(days=7)
    assert store.schedule_deletion(key.key_id, KeyState.DISABLED, when, 7) is False
    assert store.schedule_deletion(key.key_id, KeyState.ENABLED, when, 7) is True
    scheduled = store.get_key(key.key_id)
    assert scheduled is not None
    assert (scheduled.state, scheduled.deletion_date, scheduled.pending_window_days) == (
        KeyState.PENDING_DELETION,
        when,
        7,
    )
    assert store.list_keys_to_destroy(when - timedelta(seconds=1), 10) == []
    assert store.cancel_deletion(key.key_id) is True
    assert store.get_key(key.key_id).state is KeyState.DISABLED  # type: ignore[union-attr]
    assert store.begin_destruction(key.key_id) is False  # a cancelled deletion is never destroyed

    store.schedule_deletion(key.key_id, KeyState.DISABLED, when, 7)
    assert [k.key_id for k in store.list_keys_to_destroy(when, 10)] == [key.key_id]
    assert store.begin_destruction(key.key_id) is True
    assert store.cancel_deletion(key.key_id) is False
    assert store.begin_destruction(key.key_id) is True  # resuming is allowed
    [record] = store.list_destructions(key.key_id)
    assert (record.version, record.destroyed_at) == (1, None)
    store.mark_version_destroyed(key.key_id, 1, when)
    store.delete_key(key.key_id)
    assert store.get_key(key.key_id) is None
    assert [r.destroyed_at for r in store.list_destructions(key.key_id)] == [when]


def test_tags_put_overwrite_remove_and_limit(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    store.put_tags(key.key_id, {"b": "2", "a": "1"}, 3)
    store.put_tags(key.key_id, {"a": "one"}, 3)
    assert list(store.list_tags(key.key_id).items()) == [("a", "one"), ("b", "2")]
    with pytest.raises(errors.LimitExceededException):
        store.put_tags(key.key_id, {"c": "3", "d": "4"}, 3)
    store.remove_tags(key.key_id, ["b", "missing"])
    assert dict(store.list_tags(key.key_id)) == {"a": "one"}
    store.delete_key(key.key_id)
    assert dict(store.list_tags(key.key_id)) == {}


# -- tombstones of abandoned token objects (the junk sweep) ---------------------


def test_deleted_rows_given_abandoned_at_become_tombstones_and_live_rows_stay_in_use(
    store: MetadataStore,
) -> None:
    live = add_enabled_key(store)
    [live_version] = store.list_versions(live.key_id)
    rotation = rotation_version(live, 2)
    store.insert_pending_version(rotation, 25)
    failed, failed_version = make_key()
    store.insert_creating_key(failed, failed_version)
    unknown = new_token_id()
    ids = [live_version.token_id, rotation.token_id, failed_version.token_id, unknown]

    known = store.known_token_ids(ids)
    assert known.in_use == {live_version.token_id, rotation.token_id, failed_version.token_id}
    assert known.abandoned == set(), "a CreateKey or rotation in flight is in use"

    store.abandon_version(live.key_id, 2, rotation.token_id)
    store.claim_failed_creation(failed.key_id)
    known = store.known_token_ids(ids)
    assert known == KnownTokenIds(
        frozenset({live_version.token_id}), frozenset({rotation.token_id, failed_version.token_id})
    )

    store.delete_version(live.key_id, 2, rotation.token_id, abandoned_at=T0)
    store.delete_key(failed.key_id, abandoned_at=T0 + timedelta(seconds=1))
    store.delete_key(failed.key_id, abandoned_at=T0 + timedelta(seconds=2))  # a retry records nothing more
    store.delete_version(live.key_id, 1, live_version.token_id, abandoned_at=T0)  # ACTIVE: not deleted
    known = store.known_token_ids(ids)
    assert known == KnownTokenIds(
        frozenset({live_version.token_id}), frozenset({rotation.token_id, failed_version.token_id})
    )
    tombstones = store.list_abandoned_token_objects(T0 + timedelta(days=1), 10)
    assert [(t.token_id, t.key_id, t.version, t.abandoned_at) for t in tombstones] == [
        (rotation.token_id, live.key_id, 2, T0),
        (failed_version.token_id, failed.key_id, 1, T0 + timedelta(seconds=1)),
    ]
    assert_utc(tombstones[0].abandoned_at)


def test_deleting_without_abandoned_at_leaves_no_tombstone(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    [version] = store.list_versions(key.key_id)
    store.delete_key(key.key_id)
    assert store.list_abandoned_token_objects(T0 + timedelta(days=1), 10) == []
    assert store.known_token_ids([version.token_id]) == KnownTokenIds(frozenset(), frozenset())


def test_a_destroyed_keys_versions_become_tombstones_with_its_rows(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    rotation = rotation_version(key, 2)
    store.insert_pending_version(rotation, 25)
    store.finish_rotation(key.key_id, 2, rotation.token_id, None)
    store.schedule_deletion(key.key_id, KeyState.ENABLED, T0, 7)
    store.begin_destruction(key.key_id)
    store.delete_key(key.key_id, abandoned_at=T0)
    token_ids = {v.token_id for v in store.list_destructions(key.key_id)}
    assert {t.token_id for t in store.list_abandoned_token_objects(T0 + timedelta(days=1), 10)} == token_ids
    assert store.known_token_ids(list(token_ids)).abandoned == token_ids


def test_tombstones_list_oldest_first_and_are_forgotten_or_pruned(store: MetadataStore) -> None:
    made = []
    for minutes in (3, 1, 2):
        key, version = make_key()
        store.insert_creating_key(key, version)
        store.claim_failed_creation(key.key_id)
        store.delete_key(key.key_id, abandoned_at=T0 + timedelta(minutes=minutes))
        made.append(version.token_id)
    third, first, second = made

    def listed(before: datetime, limit: int = 10) -> list[bytes]:
        return [t.token_id for t in store.list_abandoned_token_objects(before, limit)]

    assert listed(T0 + timedelta(minutes=4)) == [first, second, third]
    assert listed(T0 + timedelta(minutes=2)) == [first], "strictly older than the bound"
    assert listed(T0 + timedelta(minutes=4), limit=2) == [first, second]
    store.forget_abandoned_token_objects([second, new_token_id()])
    assert listed(T0 + timedelta(minutes=4)) == [first, third]
    assert store.prune_abandoned_token_objects(T0 + timedelta(minutes=3)) == 1
    assert listed(T0 + timedelta(minutes=4)) == [third]
    assert store.known_token_ids([first, second, third]).abandoned == {third}


def test_known_token_ids_answers_for_more_ids_than_one_query_takes(store: MetadataStore) -> None:
    live = add_enabled_key(store)
    [live_version] = store.list_versions(live.key_id)
    gone, gone_version = make_key()
    store.insert_creating_key(gone, gone_version)
    store.claim_failed_creation(gone.key_id)
    store.delete_key(gone.key_id, abandoned_at=T0)
    strangers = [new_token_id() for _ in range(1200)]
    ids = [*strangers[:700], live_version.token_id, *strangers[700:], gone_version.token_id]
    known = store.known_token_ids(ids)
    assert known == KnownTokenIds(frozenset({live_version.token_id}), frozenset({gone_version.token_id}))


def insert_as_an_older_release(engine: Engine, table: Table, values: Mapping[str, Any]) -> None:
    """Insert a row as the release of the DB's revision did: only the columns the DB has yet."""
    with engine.begin() as connection:
        present = {column["name"] for column in inspect(connection).get_columns(table.name)}
        connection.execute(table.insert().values({k: v for k, v in values.items() if k in present}))


def add_enabled_key_as_an_older_release(engine: Engine) -> tuple[KeyRecord, KeyVersion]:
    key, version = make_key()
    key, version = key.with_state(KeyState.ENABLED), replace(version, state=VersionState.ACTIVE)
    insert_as_an_older_release(engine, keys, key_values(key))
    insert_as_an_older_release(engine, key_versions, version_values(version))
    return key, version


def test_upgrading_from_0005_keeps_the_keys_and_adds_an_empty_tombstone_table(database_url: str) -> None:
    migrate.upgrade(database_url, "0005")
    engine = create_engine_for_url(database_url)
    try:
        key, _ = add_enabled_key_as_an_older_release(engine)
        migrate.upgrade(database_url)
        sql_store = SqlMetadataStore(engine)
        assert sql_store.get_key(key.key_id) == key
        assert sql_store.list_abandoned_token_objects(T0 + timedelta(days=1), 10) == []
        [version] = sql_store.list_versions(key.key_id)
        assert sql_store.known_token_ids([version.token_id]).in_use == {version.token_id}
    finally:
        engine.dispose()


# -- key stores (migration 0007) ------------------------------------------------

CUSTOM_KEY_STORE = "cks-1234567890abcdef0"  # the form of an AWS CustomKeyStoreId


def a_custom_key_store(custom_key_store_id: str) -> CustomKeyStore:
    return CustomKeyStore(
        custom_key_store_id=custom_key_store_id,
        tenant="tenant-a",
        name="finance",
        locator=TokenLocator("softhsm2", "softhsm2", token_label="team-a"),
        sealed_pin=b"sealed",
        desired=DesiredConnection.DISCONNECTED,
        creation_date=T0,
    )


def test_a_key_in_a_custom_key_store_that_does_not_exist_is_refused(store: MetadataStore) -> None:
    """Issue 17: a key is inserted only while its custom key store's row exists (a racing
    DeleteCustomKeyStore cannot leave a key in a deleted store)."""
    key, first = make_key()
    key = replace(key, key_store_id=CUSTOM_KEY_STORE)
    first = replace(first, key_store_id=CUSTOM_KEY_STORE)
    with pytest.raises(errors.CustomKeyStoreNotFoundException):
        store.insert_creating_key(key, first)
    assert store.get_key(key.key_id) is None


def test_key_store_and_residency_round_trip_for_keys_versions_and_destructions(store: MetadataStore) -> None:
    store.insert_custom_key_store(a_custom_key_store(CUSTOM_KEY_STORE))  # type: ignore[attr-defined]
    key, first = make_key()
    key = replace(key, key_store_id=CUSTOM_KEY_STORE)
    first = replace(first, key_store_id=CUSTOM_KEY_STORE, residency=Residency.WRAPPED)
    store.insert_creating_key(key, first)

    assert store.get_key(key.key_id) == key
    assert store.get_version(key.key_id, 1) == first
    assert [c.versions for c in store.list_pending_creations(T0 + timedelta(seconds=1))] == [[first]]
    store.finish_creating_key(key.key_id)
    first = replace(first, state=VersionState.ACTIVE)
    [listed] = store.list_keys("tenant-a", 10, None)
    assert listed.key_store_id == CUSTOM_KEY_STORE

    rotation = replace(rotation_version(key, 2), key_store_id=CUSTOM_KEY_STORE)
    assert store.insert_pending_version(rotation, 25) is True
    assert store.get_version(key.key_id, 2) == rotation
    assert store.list_pending_versions(T0 + timedelta(seconds=1)) == [rotation]
    assert store.finish_rotation(key.key_id, 2, rotation.token_id, None) is True
    rotation = replace(rotation, state=VersionState.ACTIVE)
    assert store.list_versions(key.key_id) == [first, rotation]
    assert rotation.residency is Residency.TOKEN_OBJECT  # versions of one key may differ in residency

    store.schedule_deletion(key.key_id, KeyState.ENABLED, T0, 7)
    assert [k.key_store_id for k in store.list_keys_to_destroy(T0, 10)] == [CUSTOM_KEY_STORE]
    store.begin_destruction(key.key_id)
    store.delete_key(key.key_id)  # the records outlive the version rows and keep where the material was
    assert list(store.list_destructions(key.key_id)) == [
        DestructionRecord(
            key.key_id, "tenant-a", 1, first.token_id, T0, None, CUSTOM_KEY_STORE, Residency.WRAPPED
        ),
        DestructionRecord(key.key_id, "tenant-a", 2, rotation.token_id, T0, None, CUSTOM_KEY_STORE),
    ]
    assert [r.material for r in store.list_destructions(key.key_id)] == [first.material, rotation.material]


def test_keys_and_versions_that_name_no_key_store_are_in_the_default_one(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    [version] = store.list_versions(key.key_id)
    stored = store.get_key(key.key_id)
    assert stored is not None
    assert (stored.key_store_id, version.key_store_id, version.residency) == (
        DEFAULT_KEY_STORE_ID,
        DEFAULT_KEY_STORE_ID,
        Residency.TOKEN_OBJECT,
    )


def test_a_new_keys_first_version_must_be_in_the_keys_key_store(store: MetadataStore) -> None:
    key, version = make_key()
    with pytest.raises(ValueError, match="key store"):
        store.insert_creating_key(key, replace(version, key_store_id=CUSTOM_KEY_STORE))
    with pytest.raises(ValueError, match="key store"):
        store.insert_creating_key(replace(key, key_store_id=CUSTOM_KEY_STORE), version)
    assert store.get_key(key.key_id) is None


def test_upgrading_from_0006_puts_every_key_version_and_destruction_in_the_default_store(
    database_url: str,
) -> None:
    migrate.upgrade(database_url, "0006")
    engine = create_engine_for_url(database_url)
    try:
        live, live_version = add_enabled_key_as_an_older_release(engine)
        rotated = replace(rotation_version(live, 2), state=VersionState.ACTIVE)
        insert_as_an_older_release(engine, key_versions, version_values(rotated))
        doomed, doomed_version = add_enabled_key_as_an_older_release(engine)
        doomed = replace(doomed, state=KeyState.DESTROYING, deletion_date=T0, pending_window_days=7)
        with engine.begin() as connection:
            connection.execute(
                keys.update()
                .where(keys.c.key_id == doomed.key_id)
                .values(key_state=doomed.state.value, deletion_date=T0, pending_window_days=7)
            )
        insert_as_an_older_release(engine, key_destructions, destruction_values(doomed, doomed_version))

        migrate.upgrade(database_url)

        sql_store = SqlMetadataStore(engine)
        assert sql_store.get_key(live.key_id) == live
        assert sql_store.get_key(doomed.key_id) == doomed
        assert sql_store.list_versions(live.key_id) == [live_version, rotated]
        assert sql_store.list_versions(doomed.key_id) == [doomed_version]
        assert sql_store.list_destructions() == [
            DestructionRecord(doomed.key_id, doomed.tenant, 1, doomed_version.token_id, T0)
        ]
        with engine.connect() as connection:
            for table in (keys, key_versions, key_destructions):
                assert set(connection.execute(select(table.c.key_store_id)).scalars()) == {
                    DEFAULT_KEY_STORE_ID
                }
            for table in (key_versions, key_destructions):
                assert set(connection.execute(select(table.c.residency)).scalars()) == {"TOKEN_OBJECT"}
    finally:
        engine.dispose()


def test_downgrading_0007_keeps_every_key_and_version(database_url: str) -> None:
    """SQLite: a batch table copy of ``keys`` would cascade to every version row."""
    migrate.upgrade(database_url)
    engine = create_engine_for_url(database_url)
    try:
        sql_store = SqlMetadataStore(engine)
        key = add_enabled_key(sql_store)
        versions = sql_store.list_versions(key.key_id)
        with engine.connect() as connection:
            command.downgrade(migrate.alembic_config(connection), "0006")
        assert migrate.current_revision(database_url) == "0006"
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(key_versions)).scalar() == 1
        migrate.upgrade(database_url)
        assert sql_store.get_key(key.key_id) == key
        assert sql_store.list_versions(key.key_id) == versions
    finally:
        engine.dispose()
