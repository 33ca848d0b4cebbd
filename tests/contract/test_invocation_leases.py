"""The MetadataStore's AES-GCM usage leases and first-use reservations (issue 18; NIST SP 800-38D
§8.3; migration 0015), on the fake, SQLite and PostgreSQL."""

from __future__ import annotations

import importlib
import itertools
import random
import threading
import traceback

import pytest

from hsmstore.core.keys.usage_limit import first_use_headroom
from hsmstore.core.ports import MetadataStore
from hsmstore.store import migrate
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.schema import key_versions
from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    sqlite_engine_fixture,
    store_fixture,
)
from tests.contract.test_metadata_store import (
    add_enabled_key,
    add_enabled_key_as_an_older_release,
    rotation_version,
)

# A migration's module name starts with its number.
NO_FIRST_USES: int = importlib.import_module(
    "hsmstore.store.migrations.versions.0015_first_use_reservations"
).NO_FIRST_USES


def test_leases_are_granted_up_to_the_limit_and_then_refused(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    assert store.leased_invocations(key.key_id, 1) == 0
    assert store.lease_invocations(key.key_id, 1, 400, 1000) == 400
    assert store.lease_invocations(key.key_id, 1, 400, 1000) == 400
    assert store.lease_invocations(key.key_id, 1, 400, 1000) == 200  # only what is left
    assert store.lease_invocations(key.key_id, 1, 1, 1000) == 0
    assert store.leased_invocations(key.key_id, 1) == 1000


def test_a_lower_limit_grants_nothing_past_what_was_leased(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    assert store.lease_invocations(key.key_id, 1, 500, 2**32) == 500
    assert store.lease_invocations(key.key_id, 1, 10, 100) == 0  # the limit was lowered
    assert store.leased_invocations(key.key_id, 1) == 500


def test_leases_are_per_version_and_a_missing_version_gets_none(store: MetadataStore) -> None:
    first, second = add_enabled_key(store), add_enabled_key(store)
    assert store.lease_invocations(first.key_id, 1, 7, 10) == 7
    assert store.lease_invocations(second.key_id, 1, 7, 10) == 7
    assert store.lease_invocations(first.key_id, 2, 7, 10) == 0
    assert store.lease_invocations("no-such-key", 1, 7, 10) == 0
    assert store.leased_invocations("no-such-key", 1) == 0
    assert (store.leased_invocations(first.key_id, 1), store.leased_invocations(second.key_id, 1)) == (7, 7)


def test_a_lease_of_nothing_is_refused(store: MetadataStore) -> None:
    key = add_enabled_key(store)
    with pytest.raises(ValueError, match="wanted"):
        store.lease_invocations(key.key_id, 1, 0, 10)


def test_concurrent_leases_never_pass_the_limit_in_total(store: MetadataStore) -> None:
    """Four threads (as processes or nodes would) lease small blocks until refused: the grants
    sum to exactly the limit, never more."""
    key = add_enabled_key(store)
    limit = 1000
    granted: list[int] = []
    failures: list[str] = []
    record = threading.Lock()
    start = threading.Barrier(4)

    def lease_until_refused(seed: int) -> None:
        blocks = random.Random(seed)
        try:
            start.wait()
            while grant := store.lease_invocations(key.key_id, 1, blocks.randint(1, 37), limit):
                with record:
                    granted.append(grant)
        except BaseException:
            with record:
                failures.append(traceback.format_exc())

    threads = [threading.Thread(target=lease_until_refused, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert not any(thread.is_alive() for thread in threads)
    assert sum(granted) == limit
    assert store.leased_invocations(key.key_id, 1) == limit


def test_reservations_add_up_and_each_learns_the_total_before_it(store: MetadataStore) -> None:
    first = store.reserve_first_uses(1)
    assert store.reserve_first_uses(3) == first + 1
    assert store.reserve_first_uses(1) == first + 4
    with pytest.raises(ValueError, match="per_version"):
        store.reserve_first_uses(0)


def test_a_version_records_the_reservations_made_before_it_was_made(store: MetadataStore) -> None:
    """Whatever path inserts the row: a new key's first version and a rotation's."""
    before = store.reserve_first_uses(2)
    key = add_enabled_key(store)
    store.reserve_first_uses(5)
    first = store.get_version(key.key_id, 1)
    assert first is not None and first.reservations_at_creation == before + 2
    second = rotation_version(key, 2)
    assert store.insert_pending_version(second, 25)
    assert store.finish_rotation(key.key_id, 2, second.token_id, None)
    rotated = store.get_version(key.key_id, 2)
    assert rotated is not None and rotated.reservations_at_creation == before + 7
    assert store.reserve_first_uses(1) == before + 7


def test_concurrent_reservations_get_disjoint_ranges(store: MetadataStore) -> None:
    """Four threads (as processes or nodes would) reserve 20 times each: the ranges
    ``[total before, total before + size)`` they learn never overlap and leave no gap."""
    start_total = store.reserve_first_uses(1) + 1
    ranges: list[tuple[int, int]] = []
    failures: list[str] = []
    record = threading.Lock()
    start = threading.Barrier(4)

    def reserve(size: int) -> None:
        try:
            start.wait()
            for _ in range(20):
                before = store.reserve_first_uses(size)
                with record:
                    ranges.append((before, before + size))
        except BaseException:
            with record:
                failures.append(traceback.format_exc())

    threads = [threading.Thread(target=reserve, args=(size,)) for size in (1, 2, 3, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    ranges.sort()
    assert ranges[0][0] == start_total
    assert all(earlier[1] == later[0] for earlier, later in itertools.pairwise(ranges))
    assert store.reserve_first_uses(1) == start_total + 20 * (1 + 2 + 3 + 5)


# -- migration 0015 (SQL only) ----------------------------------------------------------------


def test_upgrading_from_0014_leaves_no_first_uses_to_a_version_leased_past_every_headroom(
    database_url: str,
) -> None:
    """Before 0015 leases went up to the limit itself: a version leased past 2^20 - 2^20/256 may
    have no headroom left, so it gets a mark no reservation satisfies; the others get 0."""
    migrate.upgrade(database_url, "0014")
    engine = create_engine_for_url(database_url)
    try:
        fresh, _ = add_enabled_key_as_an_older_release(engine)
        leased, _ = add_enabled_key_as_an_older_release(engine)
        with engine.begin() as connection:
            connection.execute(
                key_versions.update()
                .where(key_versions.c.key_id == leased.key_id)
                .values(invocations_leased=2**32 - 5)
            )
        migrate.upgrade(database_url)
        sql_store = SqlMetadataStore(engine)
        marks = {
            key.key_id: version.reservations_at_creation
            for key in (fresh, leased)
            if (version := sql_store.get_version(key.key_id, 1)) is not None
        }
        assert marks == {fresh.key_id: 0, leased.key_id: NO_FIRST_USES}
        assert NO_FIRST_USES + first_use_headroom(2**32) < 0 <= sql_store.reserve_first_uses(1)
    finally:
        engine.dispose()
