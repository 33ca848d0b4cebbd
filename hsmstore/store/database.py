"""The one database the SQL store's parts share, opened the two ways they use it.

``SqlMetadataStore`` makes one :class:`Database` and hands it to each part
(keys, rotation, deletion, token objects, aliases, tags, audit trail,
authorization), so what they share is a constructor argument, not an
attribute a mixin hopes is there.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from hsmstore import errors
from hsmstore.store.engine import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    single_statement_options,
    sqlite_file_of,
    write_options,
)

#: A waiter for another process's write polls this often at most (SQLite's busy handler sleeps
#: 1, 2, 5, 10 ... 100 ms between tries).
_POLL_SECONDS_MAX = 0.0005


@dataclass(frozen=True)
class Writer:
    """``begin()``: one write transaction; on SQLite, one writer at a time, queued without sleeps.

    SQLite has one write lock per file. A writer that finds it taken sleeps in SQLite's busy
    handler (1, 2, 5, 10 ... 100 ms between polls), so with the gRPC pool's threads and the worker
    processes all writing, the lock was mostly free with nobody taking it: issue 18's scale bench
    saw CreateKey and a cold key's first lease wait in ``BEGIN IMMEDIATE`` far longer than they
    wrote. Writers now queue first: the threads of a process on a lock that wakes the next at
    once, the processes on an ``flock`` of ``<db>-wlock`` polled every 0.5 ms at most. Whoever
    holds both finds SQLite's lock free unless something outside hsmstore writes, and SQLite's
    busy handler still covers that. The wait keeps SQLite's bound (``busy_timeout``), so a stuck
    writer is an error, never a hang; a file system without ``flock`` skips the second queue.
    PostgreSQL's writers run side by side, ungated.
    """

    engine: Engine
    lock_file: Path | None  # None: no queue (PostgreSQL)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        if self.lock_file is None:
            with self.engine.begin() as connection:
                yield connection
            return
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
        if not self._lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_SECONDS):
            raise _write_lock_timeout()
        try:
            with _process_queue(self.lock_file, deadline), self.engine.begin() as connection:
                yield connection
        finally:
            self._lock.release()


@contextmanager
def _process_queue(lock_file: Path, deadline: float) -> Iterator[None]:
    try:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield  # e.g. a read-only directory: SQLite's busy handler alone
        return
    try:
        pause = 0.00005
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _write_lock_timeout() from None
                time.sleep(pause)
                pause = min(pause * 2, _POLL_SECONDS_MAX)
            except OSError:
                break  # no flock here
        yield
    finally:
        os.close(descriptor)  # releases the flock


def _write_lock_timeout() -> errors.DependencyTimeoutException:
    return errors.DependencyTimeoutException(
        "The metadata DB's write lock was held longer than its busy timeout; retry the call"
    )


@dataclass(frozen=True)
class Database:
    """An engine and its two views: ``writer`` and ``reader`` (store/engine.py, "Transactions").

    ``writer.begin()`` is one write transaction (``BEGIN IMMEDIATE`` on
    SQLite); ``reader.connect()`` runs single statements without ``BEGIN``.
    Both views share the engine's pool, so closing the engine closes them.
    """

    engine: Engine
    writer: Writer
    reader: Engine

    @classmethod
    def of(cls, engine: Engine) -> Database:
        dialect_name = engine.dialect.name
        return cls(
            engine=engine,
            writer=Writer(engine.execution_options(**write_options(dialect_name)), _lock_file_of(engine)),
            reader=engine.execution_options(**single_statement_options(dialect_name)),
        )


def _lock_file_of(engine: Engine) -> Path | None:
    database = sqlite_file_of(engine.url.render_as_string(hide_password=False))
    return None if database is None else database.with_name(database.name + "-wlock")
