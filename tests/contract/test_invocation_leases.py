"""The MetadataStore's AES-GCM usage leases (issue 18; NIST SP 800-38D §8.3), on the fake, SQLite
and PostgreSQL."""

from __future__ import annotations

import random
import threading
import traceback

import pytest

from hsmstore.core.ports import MetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    sqlite_engine_fixture,
    store_fixture,
)
from tests.contract.test_metadata_store import add_enabled_key


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
