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
import weakref
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
    unpooled_sqlite_twin,
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


class _Held:
    """One thread's own connection and how deep that thread is in ``Reader.connect()``."""

    __slots__ = ("__weakref__", "close_when_done", "connection", "depth")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.depth = 0
        self.close_when_done = False


class Reader:
    """``connect()``: a connection for reads that are each one statement, run without ``BEGIN``.

    PostgreSQL: a connection from the pool per read (autocommit; ``pool_pre_ping``
    covers a restarted server, and a round trip outweighs the checkout).

    SQLite: each thread keeps one connection of its own, made by an engine without a pool
    (store/engine.py ``unpooled_sqlite_twin``), instead of checking one out per read. The
    checkout, the ``Connection`` made around it and its return cost about as much as the
    SELECT itself, and a cold key's first use makes four such reads (docs/performance.md,
    "Scale"). Keeping the connection changes nothing a read sees: without ``BEGIN``, each
    SELECT is a read transaction of its own and sees every commit made before it starts,
    as a fresh connection would. That holds because every read here consumes or closes its
    result inside ``connect()``; an unfinished SELECT would keep its snapshot, pooled or not.

    A thread's connection goes when the thread does (it is garbage then). ``close()``
    closes every one not in use; one in use is closed when its read ends, as the pool
    leaves a checked-out connection to its holder.
    """

    def __init__(self, engine: Engine, held_by_thread: Engine | None) -> None:
        self._pooled = engine
        self._unpooled = held_by_thread
        self._local = threading.local()
        self._lock = threading.Lock()  # a thread's depth against close()
        self._held: weakref.WeakSet[_Held] = weakref.WeakSet()

    @property
    def engine(self) -> Engine:
        """The engine whose connections the reads run on (for its events)."""
        return self._unpooled or self._pooled

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        if self._unpooled is None:
            with self._pooled.connect() as connection:
                yield connection
            return
        held = self._thread_connection()
        try:
            yield held.connection
        finally:
            with self._lock:
                held.depth -= 1
                close = held.depth == 0 and held.close_when_done
            if close:
                if getattr(self._local, "held", None) is held:
                    self._local.held = None
                held.connection.close()

    def _thread_connection(self) -> _Held:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            with self._lock:
                connection = held.connection
                if not (held.close_when_done or connection.closed or connection.invalidated):
                    held.depth += 1
                    return held
            if held.depth == 0 and not connection.closed:
                connection.close()  # invalidated: SQLAlchemy saw the file go (a disconnect)
        assert self._unpooled is not None
        held = _Held(self._unpooled.connect())
        held.depth = 1
        self._local.held = held
        with self._lock:
            self._held.add(held)
        return held

    def close(self) -> None:
        """Close the threads' connections: now if idle, else when their read ends."""
        with self._lock:
            idle = []
            for held in list(self._held):
                held.close_when_done = True
                if held.depth == 0:
                    idle.append(held)
            self._held.clear()
        for held in idle:
            held.connection.close()


@dataclass(frozen=True)
class Database:
    """An engine and its two views: ``writer`` and ``reader`` (store/engine.py, "Transactions").

    ``writer.begin()`` is one write transaction (``BEGIN IMMEDIATE`` on
    SQLite); ``reader.connect()`` runs single statements without ``BEGIN``
    (:class:`Reader`). :meth:`close` closes both.
    """

    engine: Engine
    writer: Writer
    reader: Reader

    @classmethod
    def of(cls, engine: Engine) -> Database:
        dialect_name = engine.dialect.name
        single = single_statement_options(dialect_name)
        twin = unpooled_sqlite_twin(engine)
        return cls(
            engine=engine,
            writer=Writer(engine.execution_options(**write_options(dialect_name)), _lock_file_of(engine)),
            reader=Reader(
                engine.execution_options(**single), None if twin is None else twin.execution_options(**single)
            ),
        )

    def close(self) -> None:
        """Close the pooled connections and the threads' own (:meth:`Reader.close`)."""
        self.reader.close()
        self.engine.dispose()


def _lock_file_of(engine: Engine) -> Path | None:
    database = sqlite_file_of(engine.url.render_as_string(hide_password=False))
    return None if database is None else database.with_name(database.name + "-wlock")
