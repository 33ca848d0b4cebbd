"""Fixtures for the MetadataStore contract: one test suite, every implementation.

Imported by ``test_metadata_store.py`` (not a ``conftest.py``, which another
part of the suite owns). Backends:

* ``fake``: ``tests.fakes.store.FakeMetadataStore``;
* ``sqlite``: a real file in ``tmp_path``, migrated with ``migrate.upgrade``;
* ``postgresql``: only when ``HSMSTORE_TEST_POSTGRESQL_URL`` names a server
  and a database to connect to as a user that may create databases (e.g.
  ``postgresql://postgres@127.0.0.1:5432/postgres``); each test gets a fresh
  database that is dropped afterwards.

Adding a backend means adding it here; the tests do not change.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from hsmstore.core.ports import MetadataStore
from hsmstore.store.migrate import upgrade
from hsmstore.store.sql import SqlMetadataStore, create_engine_for_url
from tests.fakes.store import FakeMetadataStore

POSTGRESQL_ADMIN_URL = os.environ.get("HSMSTORE_TEST_POSTGRESQL_URL", "")

SQL_BACKENDS = ["sqlite", *(["postgresql"] if POSTGRESQL_ADMIN_URL else [])]
ALL_BACKENDS = ["fake", *SQL_BACKENDS]


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database; remove it afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'metadata.db'}"
        return
    if backend == "postgresql":
        name = f"hsmstore_test_{uuid.uuid4().hex}"
        admin_url = make_url(POSTGRESQL_ADMIN_URL).set(drivername="postgresql+psycopg")
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                yield admin_url.set(database=name).render_as_string(hide_password=False)
            finally:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()
        return
    raise ValueError(f"unknown SQL backend {backend!r}")


# Each fixture is bound to a *_fixture name so that importing it into a test
# module does not shadow the parameter names the tests use.


@pytest.fixture(name="database_url", params=SQL_BACKENDS)
def database_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database that has not been migrated yet."""
    with fresh_database(request.param, tmp_path) as url:
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


@pytest.fixture(name="store", params=ALL_BACKENDS)
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    """An empty MetadataStore of each implementation."""
    if request.param == "fake":
        yield FakeMetadataStore()
        return
    with fresh_database(request.param, tmp_path) as url:
        upgrade(url)
        engine = create_engine_for_url(url)
        try:
            yield SqlMetadataStore(engine)
        finally:
            engine.dispose()
