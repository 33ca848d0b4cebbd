"""A metadata DB that cannot be reached fails calls as retryable, and is used again once it is back.

Issue 14: a PostgreSQL outage answered INTERNAL. The store turns a lost or
refused connection into ``DependencyUnavailableException`` (docs/api.md,
"Additions": UNAVAILABLE with the reason KMSInternalException), and the pool's
pre-ping finds the server again after a restart, with no restart of hsmstore.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import exc, text

from hsmstore.errors import DependencyUnavailableException
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.migrate import upgrade
from hsmstore.store.sql import SqlMetadataStore
from tests.postgres import PostgresCluster, own_cluster


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own: the test stops and restarts it."""
    with own_cluster("hsmstore-pg-outage-") as own:
        yield own


def test_a_stopped_postgresql_is_unavailable_and_a_restarted_one_serves_again(
    cluster: PostgresCluster,
) -> None:
    upgrade(cluster.url)
    engine = create_engine_for_url(cluster.url)
    store = SqlMetadataStore(engine)
    try:
        store.ping()
        port = cluster.port
        cluster.stop()
        with pytest.raises(DependencyUnavailableException):
            store.ping()
        with pytest.raises(DependencyUnavailableException):
            store.list_keys("acme", 10, None)
        cluster.start(port)
        store.ping()
        assert list(store.list_keys("acme", 10, None)) == []
    finally:
        engine.dispose()


def test_a_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    """sqlite3's "unable to open database file": the directory went away under the server."""
    directory = tmp_path / "db"
    directory.mkdir()
    url = f"sqlite:///{directory / 'meta.db'}"
    upgrade(url)
    engine = create_engine_for_url(url)
    try:
        engine.dispose()  # no pooled connection to an open file survives
        (directory / "meta.db").unlink()
        directory.rmdir()
        with pytest.raises(DependencyUnavailableException):
            SqlMetadataStore(engine).ping()
    finally:
        engine.dispose()


def test_a_defect_in_a_statement_stays_internal(tmp_path: Path) -> None:
    """Only unreachability is retryable: an unknown table is a bug, not an outage."""
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    engine = create_engine_for_url(url)
    try:
        with pytest.raises(exc.OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT * FROM no_such_table"))
    finally:
        engine.dispose()


def test_a_statement_timeout_on_a_live_postgresql_connection_is_not_an_outage(
    cluster: PostgresCluster,
) -> None:
    """psycopg raises QueryCanceled (like deadlocks) as an OperationalError: not "cannot be reached"."""
    engine = create_engine_for_url(cluster.url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SET statement_timeout = 10"))
            with pytest.raises(exc.OperationalError):
                connection.execute(text("SELECT pg_sleep(1)"))
    finally:
        engine.dispose()
