"""The one database the SQL store's parts share, opened the two ways they use it.

``SqlMetadataStore`` makes one :class:`Database` and hands it to each part
(keys, rotation, deletion, token objects, aliases, tags, audit trail,
authorization), so what they share is a constructor argument, not an
attribute a mixin hopes is there.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select
from sqlalchemy.engine import Connection, Dialect

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


class PreparedRead:
    """A SELECT that a SQLite thread connection runs on its ``sqlite3`` handle, compiled once.

    Why: a cold key's first use makes four reads (its key, version, key policy and grants), and
    SQLAlchemy's execution path around each cost about twice the SELECT itself: per read, the
    compiled-cache lookup, an execution context, the ``Result`` and its row (docs/performance.md,
    "Scale", 2026-12-08). Here the statement is compiled once per dialect and each read is
    ``cursor.execute`` with the positional parameters, then SQLAlchemy's own bind and result
    processors (``TypeEngine.bind_processor`` / ``result_processor``), so a value reads back as it
    does through ``Connection.execute``: a ``UtcDateTime`` as an aware ``datetime``, a ``Boolean``
    as a ``bool``. The engine's ``before_cursor_execute`` listeners still see each statement.

    Only statements whose parameters are all plain binds (no ``IN`` lists expanded at run time,
    no literals rendered at run time) qualify: a read needs nothing but the SQL text and the
    values in order, the caller's and those the statement carries (the ``OFFSET 0`` SQLite's
    compiler adds after a ``LIMIT``). PostgreSQL runs these through SQLAlchemy
    (:meth:`Reader.first`): the round trip to the server outweighs the Python around it.
    """

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._compiled: dict[str, _CompiledRead] = {}

    def compiled_for(self, dialect: Dialect) -> _CompiledRead:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _CompiledRead.of(self.statement, dialect)
        return compiled


Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class _Bind:
    name: str
    process: Processor | None
    fixed: bool  # a value the statement carries (``OFFSET 0`` after a ``LIMIT``), not a parameter
    value: Any


@dataclass(frozen=True)
class _CompiledRead:
    sql: str
    binds: tuple[_Bind, ...]  # in the SQL's order
    columns: tuple[tuple[str, Processor | None], ...]  # in the select list's order

    @classmethod
    def of(cls, statement: Select[Any], dialect: Dialect) -> _CompiledRead:
        compiled = statement.compile(dialect=dialect)
        if compiled.positiontup is None or compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("a PreparedRead takes positional plain binds only (store/database.py)")
        binds = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            binds.append(_Bind(name, process, not bind.required, bind.effective_value))
        columns: list[tuple[str, Processor | None]] = []
        for column in statement.selected_columns:
            if column.key is None:
                raise ValueError("a PreparedRead selects named columns only (store/database.py)")
            columns.append((column.key, column.type.dialect_impl(dialect).result_processor(dialect, None)))
        return cls(str(compiled), tuple(binds), tuple(columns))

    def _value(self, bind: _Bind, parameters: Mapping[str, Any]) -> Any:
        value = bind.value if bind.fixed and bind.name not in parameters else parameters[bind.name]
        return value if bind.process is None else bind.process(value)

    def run(
        self, connection: Connection, parameters: Mapping[str, Any], one: bool
    ) -> list[Mapping[Any, Any]]:
        values = tuple(self._value(bind, parameters) for bind in self.binds)
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None  # a live thread connection (Reader._thread_connection)
        cursor = dbapi_connection.cursor()
        try:
            if connection.dispatch.before_cursor_execute:
                connection.dispatch.before_cursor_execute(connection, cursor, self.sql, values, None, False)
            cursor.execute(self.sql, values)
            # Then closed, read or not: an unfinished SELECT would keep its read snapshot (Reader).
            rows: Sequence[Any]
            if one:
                first = cursor.fetchone()
                rows = [] if first is None else [first]
            else:
                rows = cursor.fetchall()
        finally:
            cursor.close()
        return [self._mapped(row) for row in rows]

    def _mapped(self, row: tuple[Any, ...]) -> dict[str, Any]:
        return {
            name: value if process is None else process(value)
            for (name, process), value in zip(self.columns, row, strict=True)
        }


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

    def first(self, read: PreparedRead, parameters: Mapping[str, Any]) -> Mapping[Any, Any] | None:
        """The first row of ``read``, by column name; None for none."""
        rows = self._run(read, parameters, one=True)
        return rows[0] if rows else None

    def all(self, read: PreparedRead, parameters: Mapping[str, Any]) -> list[Mapping[Any, Any]]:
        """Every row of ``read``, by column name."""
        return self._run(read, parameters, one=False)

    def _run(self, read: PreparedRead, parameters: Mapping[str, Any], one: bool) -> list[Mapping[Any, Any]]:
        with self.connect() as connection:
            if self._unpooled is not None:
                try:
                    return read.compiled_for(connection.dialect).run(connection, parameters, one)
                except sqlite3.Error:
                    # Read again the way every other statement runs: a file that went, a lock or a
                    # defect then raises what the store raises for it (engine.py, handle_error), and
                    # the thread's connection is dropped if SQLAlchemy sees a disconnect. A SELECT
                    # may run twice.
                    pass
            result = connection.execute(read.statement, parameters)
            if one:
                row = result.first()
                return [] if row is None else [row._mapping]
            return [row._mapping for row in result]

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
