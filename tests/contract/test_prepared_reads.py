"""The hot reads as ``PreparedRead`` (store/database.py): on SQLite each runs on the thread's own
``sqlite3`` handle with SQLAlchemy's processors, and answers what ``Connection.execute`` answers;
on PostgreSQL it is ``Connection.execute``. Real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    update,
)

from hsmstore.store.database import Database, PreparedRead, _CompiledRead
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.schema import UtcDateTime, ordered_string
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sqlite_engine_fixture,
)

metadata = MetaData()
things = Table(
    "prepared_read_things",
    metadata,
    Column("name", ordered_string(40), primary_key=True),
    Column("created", UtcDateTime(), nullable=False),
    Column("ended", UtcDateTime(), nullable=True),
    Column("enabled", Boolean(), nullable=False),
    Column("blob", LargeBinary(), nullable=True),
    Column("count", Integer(), nullable=False),
    Column("note", String(40), nullable=True),
)
BY_NAME = PreparedRead(select(things).where(things.c.name == bindparam("name")))
FIRST_N = PreparedRead(
    select(things.c.name, things.c.count).order_by(things.c.name).limit(bindparam("limit"))
)
CREATED = datetime(2026, 12, 8, 1, 2, 3, 456789, tzinfo=UTC)


@pytest.fixture(name="database")
def database_fixture(database_url: str) -> Iterator[Database]:
    database = Database.of(create_engine_for_url(database_url))
    metadata.create_all(database.engine)
    with database.writer.begin() as connection:
        for row in (
            {"name": "a", "created": CREATED, "enabled": True, "blob": b"\x00\xff", "count": 1},
            {"name": "b", "created": CREATED, "ended": CREATED, "enabled": False, "count": 2},
            {"name": "c", "created": CREATED, "enabled": True, "blob": b"", "count": 3},
        ):
            connection.execute(things.insert().values(**row))
    try:
        yield database
    finally:
        database.close()


def through_sqlalchemy(database: Database, read: PreparedRead, **parameters: Any) -> list[dict[str, Any]]:
    with database.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(read.statement, parameters)]


def test_a_prepared_read_answers_what_sqlalchemy_answers(database: Database) -> None:
    for name in ("a", "b", "c"):
        row = database.reader.first(BY_NAME, {"name": name})
        assert row is not None
        assert dict(row) == through_sqlalchemy(database, BY_NAME, name=name)[0]
    assert database.reader.first(BY_NAME, {"name": "a"}) == {
        "name": "a",
        "created": CREATED,
        "ended": None,
        "enabled": True,
        "blob": b"\x00\xff",
        "count": 1,
        "note": None,
    }
    assert [dict(row) for row in database.reader.all(FIRST_N, {"limit": 2})] == [
        {"name": "a", "count": 1},
        {"name": "b", "count": 2},
    ]
    assert database.reader.first(BY_NAME, {"name": "missing"}) is None
    assert database.reader.all(FIRST_N, {"limit": 0}) == []


def test_a_prepared_read_sees_a_commit_made_after_the_threads_last_read(database: Database) -> None:
    """A read leaves no snapshot open: a disabled key must not stay enabled on a thread that read it."""
    assert database.reader.first(BY_NAME, {"name": "a"}) is not None
    assert [row["name"] for row in database.reader.all(FIRST_N, {"limit": 1})] == ["a"]
    other = Database.of(create_engine_for_url(database.engine.url.render_as_string(hide_password=False)))
    try:
        with other.writer.begin() as connection:
            connection.execute(update(things).where(things.c.name == "a").values(enabled=False, count=7))
    finally:
        other.close()
    row = database.reader.first(BY_NAME, {"name": "a"})
    assert row is not None and row["enabled"] is False and row["count"] == 7
    assert [row["count"] for row in database.reader.all(FIRST_N, {"limit": 1})] == [7]


def test_a_read_the_sqlite_driver_fails_is_read_again_through_sqlalchemy(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback is what keeps SQLAlchemy's error handling (engine.py ``handle_error``) for these
    reads: the driver's error is not raised from the direct path, the read is made again."""
    database = Database.of(sqlite_engine)
    metadata.create_all(database.engine)
    with database.writer.begin() as connection:
        connection.execute(
            things.insert().values(name="a", created=CREATED, enabled=True, count=1),
        )
    failed: list[str] = []

    def fail(self: _CompiledRead, *_args: Any) -> list[Mapping[Any, Any]]:
        failed.append(self.sql)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(_CompiledRead, "run", fail)
    try:
        row = database.reader.first(BY_NAME, {"name": "a"})
        assert row is not None and row["created"] == CREATED and row["enabled"] is True
        assert len(failed) == 1
    finally:
        database.close()


def test_a_read_whose_parameters_are_not_plain_binds_is_refused(sqlite_engine: Engine) -> None:
    expanding = PreparedRead(select(things).where(things.c.name.in_(bindparam("names", expanding=True))))
    with pytest.raises(ValueError, match="plain binds only"):
        expanding.compiled_for(sqlite_engine.dialect)
