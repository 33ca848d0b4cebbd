"""Fixtures for the MetadataStore contract: one test suite, every implementation.

Imported by ``test_metadata_store.py`` (not a ``conftest.py``, which another
part of the suite owns). Backends:

* ``fake``: ``tests.fakes.store.FakeMetadataStore``;
* ``sqlite``: a real file in ``tmp_path``, migrated with ``migrate.upgrade``;
* ``postgresql``: always; the server is the session fixture
  ``postgresql_url`` (``tests/conftest.py``: ``HSMSTORE_TEST_POSTGRESQL_URL``
  if set, else a throwaway cluster started on first use). Each test gets a
  fresh database that is dropped afterwards. No PostgreSQL installed means
  these tests fail, not skip.

Adding a backend means adding it here; the tests do not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from hsmstore.core.ports import MetadataStore
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.migrate import upgrade
from hsmstore.store.sql import SqlMetadataStore
from tests.fakes.store import FakeMetadataStore
from tests.postgres import fresh_database as fresh_postgresql_database

SQL_BACKENDS = ["sqlite", "postgresql"]
ALL_BACKENDS = ["fake", *SQL_BACKENDS]


@contextmanager
def fresh_database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database; remove it afterwards.

    The PostgreSQL server is asked for only here, so a run of only the fake
    and SQLite tests never starts one.
    """
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'metadata.db'}"
        return
    if backend == "postgresql":
        with fresh_postgresql_database(request.getfixturevalue("postgresql_url")) as url:
            yield url
        return
    raise ValueError(f"unknown SQL backend {backend!r}")


# Each fixture is bound to a *_fixture name so that importing it into a test
# module does not shadow the parameter names the tests use.


@pytest.fixture(name="database_url", params=SQL_BACKENDS)
def database_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database that has not been migrated yet."""
    with fresh_database(request.param, request, tmp_path) as url:
        yield url


@pytest.fixture(name="sql_engine")
def sql_engine_fixture(database_url: str) -> Iterator[Engine]:
    """An engine on a fresh database migrated to head."""
    upgrade(database_url)
    engine = create_engine_for_url(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(name="sqlite_engine")
def sqlite_engine_fixture(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite file, for the few checks that are about SQLite itself."""
    url = f"sqlite:///{tmp_path / 'sqlite-only.db'}"
    upgrade(url)
    engine = create_engine_for_url(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(name="store", params=ALL_BACKENDS)
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    """An empty MetadataStore of each implementation."""
    if request.param == "fake":
        yield FakeMetadataStore()
        return
    with fresh_database(request.param, request, tmp_path) as url:
        upgrade(url)
        engine = create_engine_for_url(url)
        try:
            yield SqlMetadataStore(engine)
        finally:
            engine.dispose()
