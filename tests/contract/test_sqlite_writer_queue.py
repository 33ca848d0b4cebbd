"""SQLite's writers queue for the write lock (store/database.py ``Writer``, issue 18): threads of a
process one after another, processes on an ``flock`` of ``<db>-wlock``, and a wait past SQLite's
busy timeout is ``DependencyTimeoutException``, never a hang. Real SQLite files."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from hsmstore import errors
from hsmstore.store import database as database_module
from hsmstore.store.database import Database
from hsmstore.store.engine import create_engine_for_url


def sqlite_database(tmp_path: Path) -> Database:
    return Database.of(create_engine_for_url(f"sqlite:///{tmp_path / 'metadata.db'}"))


def test_threads_of_one_process_write_one_after_another(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path)
    with database.writer.begin() as connection:
        connection.execute(text("CREATE TABLE counter (n INTEGER)"))
        connection.execute(text("INSERT INTO counter VALUES (0)"))
    inside = 0
    overlaps: list[int] = []

    def increment() -> None:
        nonlocal inside
        for _ in range(20):
            with database.writer.begin() as connection:
                inside += 1
                overlaps.append(inside)
                value = connection.execute(text("SELECT n FROM counter")).scalar_one()
                time.sleep(0.0005)
                connection.execute(text("UPDATE counter SET n = :n"), {"n": value + 1})
                inside -= 1

    threads = [threading.Thread(target=increment) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with database.reader.connect() as connection:
        assert connection.execute(text("SELECT n FROM counter")).scalar_one() == 160
    assert max(overlaps) == 1
    database.engine.dispose()


def test_a_writer_held_by_another_process_times_out_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_SECONDS", 0.3)
    database = sqlite_database(tmp_path)
    assert database.writer.lock_file == tmp_path / "metadata.db-wlock"
    holder = os.open(tmp_path / "metadata.db-wlock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file description: as another process
        began = time.monotonic()
        with (
            pytest.raises(errors.DependencyTimeoutException, match="busy timeout"),
            database.writer.begin() as connection,
        ):
            connection.execute(text("CREATE TABLE never (n INTEGER)"))
        assert 0.3 <= time.monotonic() - began < 5
    finally:
        os.close(holder)
    with database.writer.begin() as connection:  # released: the next write goes through
        connection.execute(text("CREATE TABLE later (n INTEGER)"))
    database.engine.dispose()


def test_postgresql_writers_are_not_queued() -> None:
    engine = create_engine_for_url("postgresql://hsmstore@127.0.0.1:1/none")
    assert Database.of(engine).writer.lock_file is None
    engine.dispose()
