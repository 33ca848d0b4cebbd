"""Two nodes on one PostgreSQL DB and one token re-wrap each version exactly once (issue 18,
Acceptance: "two nodes on PostgreSQL re-wrap each version exactly once").

Both nodes run the domain-key job every second (bootstrap.py) with no leader; the re-wrap claims
(``FOR UPDATE SKIP LOCKED``) and the compare-and-set of ``finish_rewrap`` share the work. Each
node logs, per batch, how many versions it moved (core/keys/domain_keys.py); the sum over both
nodes is the number of versions, and every version ends under the new domain key: so no
version moved twice and none was missed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.hsm.templates import DOMAIN_KEY_LABEL_PREFIX
from hsmstore.store.engine import create_engine_for_url
from tests.integration.harness import ServerProcess, two_nodes, wait_until
from tests.integration.test_domain_key_rotation import domain_key_labels, hsmstore, opened, seal
from tests.postgres import fresh_database

pytestmark = pytest.mark.integration

ARGS = ["--key-residency", "wrapped", "--jobs-interval-seconds", "0.5"]
KEYS_PER_NODE = 400
REWRAPPED = re.compile(r"domain key (?P<old>[0-9a-f]{32}): re-wrapped (?P<count>\d+) version\(s\) under")


@pytest.fixture
def database_url(postgresql_url: str) -> Iterator[str]:
    with fresh_database(postgresql_url) as url:
        yield url


def query(database_url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine_for_url(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


def domain_keys(database_url: str) -> list[tuple[str, str]]:
    rows = query(database_url, "SELECT domain_key_id, state FROM domain_keys ORDER BY created_at")
    return [(str(key), str(state)) for key, state in rows]


def rewrapped_by(node: ServerProcess, old: str) -> int:
    return sum(
        int(match["count"])
        for line in node.output
        if (match := REWRAPPED.search(line)) and match["old"] == old
    )


def create_keys(node: ServerProcess, count: int) -> dict[str, bytes]:
    sealed = {}
    for _ in range(count):
        key_id = node.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        sealed[key_id] = seal(node, key_id, key_id.encode())
    return sealed


def test_two_nodes_rewrap_each_version_exactly_once(tmp_path: Path, database_url: str) -> None:
    with two_nodes(tmp_path / "a", tmp_path / "b", [*ARGS, "--db", database_url]) as (a, b):
        at_start = domain_keys(database_url)
        # Each node's workers start at once: they must agree on one key, not retire each other's.
        assert [state for _, state in at_start] == ["ACTIVE"], f"one domain key at start, not {at_start}"
        [(first, _)] = at_start
        with ThreadPoolExecutor(2) as pool:
            made = list(pool.map(create_keys, (a, b), (KEYS_PER_NODE, KEYS_PER_NODE)))
        sealed = {**made[0], **made[1]}
        versions = len(sealed)
        assert query(
            database_url, "SELECT COUNT(*) FROM key_versions WHERE wrapped_domain_key_id IS NOT NULL"
        ) == [(versions,)]

        rotated = hsmstore("domain-keys", "rotate", "--db", database_url, "--data-dir", str(a.data_dir))
        assert rotated.returncode == 0, rotated.stderr
        wait_until(lambda: [state for _, state in domain_keys(database_url)] == ["DESTROYED", "ACTIVE"], 120)
        [(old, _), (new, _)] = domain_keys(database_url)
        assert old == first

        by_a, by_b = rewrapped_by(a, old), rewrapped_by(b, old)
        assert by_a + by_b == versions, f"node a moved {by_a}, node b {by_b}, of {versions} versions"
        assert query(
            database_url,
            "SELECT wrapped_domain_key_id, COUNT(*) FROM key_versions GROUP BY wrapped_domain_key_id",
        ) == [(new, versions)]
        assert domain_key_labels(a) == {DOMAIN_KEY_LABEL_PREFIX + new}
        for index, (key_id, blob) in enumerate(sealed.items()):
            node = a if index % 2 else b
            assert opened(node, blob) == key_id.encode()
