"""SQLite's reads run on a connection each thread keeps (store/database.py ``Reader``): one per
thread, outside the pool, seeing every commit made before each read as a fresh connection
would, and closed by ``Database.close()`` once no read uses it. Real SQLite files."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from hsmstore.store.database import Database
from hsmstore.store.engine import create_engine_for_url


def sqlite_database(tmp_path: Path) -> Database:
    database = Database.of(create_engine_for_url(f"sqlite:///{tmp_path / 'metadata.db'}"))
    with database.writer.begin() as connection:
        connection.execute(text("CREATE TABLE flags (name TEXT PRIMARY KEY, state TEXT)"))
        connection.execute(text("INSERT INTO flags VALUES ('key', 'Enabled')"))
    return database


def read_state(database: Database) -> str | None:
    with database.reader.connect() as connection:
        return connection.execute(text("SELECT state FROM flags WHERE name = 'key'")).scalar()


def connection_of_this_thread(database: Database) -> Connection:
    with database.reader.connect() as connection:
        connection.execute(text("SELECT 1")).scalar()
        return connection


def test_a_thread_reads_on_one_connection_of_its_own_outside_the_pool(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path)
    try:
        mine = connection_of_this_thread(database)
        assert connection_of_this_thread(database) is mine
        theirs: list[Connection] = []
        other = threading.Thread(target=lambda: theirs.append(connection_of_this_thread(database)))
        other.start()
        other.join()
        assert theirs[0] is not mine
        with database.reader.connect():
            assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        database.close()


def test_a_kept_connection_sees_a_commit_made_after_its_last_read(tmp_path: Path) -> None:
    """The 1 s bound on metadata (docs/deployment.md) needs every read to see the last commit:
    a disabled key must not stay usable on a thread that read it before."""
    database = sqlite_database(tmp_path)
    try:
        assert read_state(database) == "Enabled"
        writer = Database.of(create_engine_for_url(f"sqlite:///{tmp_path / 'metadata.db'}"))
        with writer.writer.begin() as connection:
            connection.execute(text("UPDATE flags SET state = 'Disabled' WHERE name = 'key'"))
        assert read_state(database) == "Disabled"
        with writer.writer.begin() as connection:
            connection.execute(text("DELETE FROM flags"))
        writer.close()
        assert read_state(database) is None
    finally:
        database.close()


def test_close_closes_idle_connections_at_once_and_a_busy_one_when_its_read_ends(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path)
    idle = connection_of_this_thread(database)
    reading, closed, resume = threading.Event(), threading.Event(), threading.Event()
    busy: list[Connection] = []

    def long_read() -> None:
        with database.reader.connect() as connection:
            busy.append(connection)
            reading.set()
            resume.wait(10)
            assert connection.execute(text("SELECT count(*) FROM flags")).scalar() == 1
        closed.set()

    reader = threading.Thread(target=long_read)
    reader.start()
    assert reading.wait(10)
    database.close()
    assert idle.closed
    assert not busy[0].closed  # its read goes on
    resume.set()
    reader.join()
    assert closed.is_set() and busy[0].closed
    assert read_state(database) == "Enabled"  # a read after close() opens a new connection
    assert connection_of_this_thread(database) is not idle
    database.close()
