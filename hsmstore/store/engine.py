"""The engine under the SQL store: SQLite or PostgreSQL, and how each connection is set up.

Transactions, and why there are two kinds:

* Every read is one SELECT, run without an explicit transaction (autocommit on
  PostgreSQL, no ``BEGIN`` on SQLite): a single statement is atomic on its own,
  and skipping ``BEGIN``/``COMMIT`` saves two round trips on the hot path
  (``get_key`` and ``get_version`` on every Encrypt/Decrypt).
* Every write is one transaction. On SQLite it starts with ``BEGIN IMMEDIATE``,
  which takes the write lock up front and so waits (``busy_timeout``) instead
  of failing with "database is locked" when two writers meet halfway through.

To get that control on SQLite, :func:`create_engine_for_url` turns off the
``sqlite3`` module's own implicit transactions and emits ``BEGIN`` itself,
choosing the kind from the connection's :data:`SQLITE_BEGIN` execution option.
:func:`write_options` and :func:`single_statement_options` name the two kinds;
``store/database.py`` makes one engine of each.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, Connection, ExceptionContext, make_url
from sqlalchemy.pool import NullPool

from hsmstore import errors

#: Execution option read by the SQLite ``begin`` hook: ``"DEFERRED"`` (the
#: default), ``"IMMEDIATE"`` (take the write lock at once) or ``None`` (no
#: transaction: for single statements).
SQLITE_BEGIN: Final = "hsmstore_sqlite_begin"

_SQLITE_BUSY_TIMEOUT_MS: Final = 5000
#: How long a write waits for SQLite's write lock before it fails (``busy_timeout``).
SQLITE_BUSY_TIMEOUT_SECONDS: Final = _SQLITE_BUSY_TIMEOUT_MS / 1000
_SQLITE_PRAGMAS: Final = (
    f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys = ON",
    # FULL, not NORMAL: under WAL, NORMAL may lose the last commits on power loss,
    # and a lost key row would make every ciphertext under that key undecryptable.
    "PRAGMA synchronous = FULL",
)

_log = logging.getLogger(__name__)


def create_engine_for_url(
    url: str, *, pool_size: int = 10, max_overflow: int = 10, pool_timeout: float = 30.0
) -> Engine:
    """An engine for a SQLite file or a PostgreSQL database, set up for many threads.

    ``pool_size + max_overflow`` bounds the connections one process opens;
    size it to the gRPC thread pool. Accepts ``sqlite:///path``,
    ``postgresql://`` (rewritten to the psycopg 3 driver), ``postgres://`` and
    ``postgresql+psycopg://``. Raises ``ValueError`` for anything else,
    including in-memory SQLite, where each pooled connection would see its own
    empty database.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _create_sqlite_engine(parsed, pool_size, max_overflow, pool_timeout)
    elif backend in ("postgresql", "postgres"):
        engine = _create_postgresql_engine(parsed, pool_size, max_overflow, pool_timeout)
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}: use sqlite or postgresql")
    event.listen(engine, "handle_error", _unreachable_is_unavailable)
    return engine


# sqlite3 says these when the file cannot be used right now; other OperationalErrors are defects.
_SQLITE_UNREACHABLE: Final = ("unable to open database file", "disk i/o error", "database is locked")


def _unreachable_is_unavailable(context: ExceptionContext) -> None:
    """A DB that cannot be reached fails the call as retryable, not as an internal defect.

    Issue 14: a PostgreSQL outage answered INTERNAL. A lost connection
    (SQLAlchemy's disconnect detection), a connect that fails, or a SQLite file
    that cannot be opened or stays locked becomes
    ``DependencyUnavailableException`` (docs/api.md, "Additions": UNAVAILABLE
    with the reason KMSInternalException). Raised from SQLAlchemy's
    ``handle_error`` hook, so every statement and every connect is covered once.
    """
    if not context.is_disconnect:
        if not isinstance(context.sqlalchemy_exception, exc.OperationalError | exc.InterfaceError):
            return
        if context.dialect is not None and context.dialect.name == "sqlite":
            message = str(context.original_exception).lower()
            if not any(known in message for known in _SQLITE_UNREACHABLE):
                return
        elif context.connection is not None:
            # PostgreSQL on a live connection: a deadlock, a serialization failure or a
            # timeout is not the server being away; only a failed connect is.
            return
    raise errors.DependencyUnavailableException(
        "The metadata database cannot be reached; retry the call"
    ) from context.original_exception


# Start-up waits for an unreachable DB with capped exponential backoff (issue 16, Deliver 3).
DB_WAIT_FIRST_DELAY_SECONDS: Final = 0.25
DB_WAIT_MAX_DELAY_SECONDS: Final = 2.0
DB_CONNECT_TIMEOUT_SECONDS: Final = 5  # one connect attempt during the wait (libpq connect_timeout)
# A connect failure that waiting cannot fix: wrong credentials, a DB or role that does not exist.
_PERMANENT_CONNECT_FAILURES: Final = (
    "password authentication failed",
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
)


class DatabaseUnreachable(Exception):
    """The DB did not answer within the start-up wait; ``reason`` is the driver's first line."""

    def __init__(self, reason: str, waited_seconds: float, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.waited_seconds = waited_seconds
        self.permanent = permanent


def wait_for_database(url: str, wait_seconds: float, on_first_failure: Callable[[str], None]) -> None:
    """Return once ``SELECT 1`` succeeds on ``url``; retry an unreachable server for ``wait_seconds``.

    Issue 16: "PostgreSQL unreachable at start: retry with backoff up to a
    configurable limit, saying so once, then fail". ``on_first_failure`` is
    called once, with the reason, before the first retry (the caller logs
    it). SQLite is never waited for: a file that cannot be opened now will not
    open later by itself. Wrong credentials or a missing database fail at once.
    Raises :class:`DatabaseUnreachable`. The reason never holds the password
    (the driver's message names host, port, user and database only).
    """
    engine = create_engine_for_url(_with_connect_timeout(url, wait_seconds), pool_size=1, max_overflow=0)
    started = time.monotonic()
    delay = DB_WAIT_FIRST_DELAY_SECONDS
    said = False
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except (errors.DependencyUnavailableException, exc.OperationalError, exc.InterfaceError) as error:
                cause = error.__cause__ if isinstance(error, errors.DependencyUnavailableException) else error
                reason = _first_line(cause if cause is not None else error)
                waited = time.monotonic() - started
                permanent = engine.dialect.name == "sqlite" or any(
                    marker in reason.lower() for marker in _PERMANENT_CONNECT_FAILURES
                )
                if permanent or waited >= wait_seconds:
                    raise DatabaseUnreachable(reason, waited, permanent) from None
                if not said:
                    on_first_failure(reason)
                    said = True
            engine.dispose()  # no half-open pooled connection survives into the next attempt
            time.sleep(min(delay, max(0.0, wait_seconds - (time.monotonic() - started))))
            delay = min(delay * 2, DB_WAIT_MAX_DELAY_SECONDS)
    finally:
        engine.dispose()


def _with_connect_timeout(url: str, wait_seconds: float) -> str:
    """A PostgreSQL URL whose connect gives up in time: a silent host would hold one attempt
    for the system's TCP timeout (minutes). An explicit ``connect_timeout`` is kept."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres") or "connect_timeout" in parsed.query:
        return url
    seconds = max(1, min(DB_CONNECT_TIMEOUT_SECONDS, math.ceil(wait_seconds)))
    return parsed.update_query_dict({"connect_timeout": str(seconds)}).render_as_string(hide_password=False)


def _first_line(error: BaseException) -> str:
    """The driver's message without SQLAlchemy's framing (the statement, the background link)."""
    original = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0] if lines else type(original).__name__


def sqlite_file_of(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for any other kind of database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _create_sqlite_engine(url: URL, pool_size: int, max_overflow: int, pool_timeout: float) -> Engine:
    if url.drivername.partition("+")[2] not in ("", "pysqlite"):
        raise ValueError(f"unsupported SQLite driver {url.drivername!r}: use sqlite:///path")
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        raise ValueError("in-memory SQLite is one database per connection: give a file path")
    if not url.query.get("uri"):
        _keep_sqlite_files_private(Path(database))
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        # Pooled connections move between gRPC worker threads; each is used by
        # one thread at a time, which is what sqlite3 actually requires.
        connect_args={"check_same_thread": False},
    )
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def unpooled_sqlite_twin(engine: Engine) -> Engine | None:
    """An engine on ``engine``'s SQLite file, set up as it is, whose connections bypass any pool.

    For connections a thread keeps for itself (store/database.py, ``Reader``): they are
    not taken from ``engine``'s pool, so however many threads keep one, the pool's bound
    still holds for everything else. None for any other database.
    """
    if engine.dialect.name != "sqlite":
        return None
    twin = create_engine(engine.url, poolclass=NullPool, connect_args={"check_same_thread": False})
    event.listen(twin, "connect", _configure_sqlite_connection)
    event.listen(twin, "begin", _begin_sqlite_transaction)
    event.listen(twin, "handle_error", _unreachable_is_unavailable)
    return twin


_SQLITE_FILE_SUFFIXES: Final = ("", "-wal", "-shm", "-journal")


def _keep_sqlite_files_private(database: Path) -> None:
    """The DB file and its -wal/-shm/-journal are the owner's only (0600), wherever ``--db`` points.

    Issue 14: the metadata DB holds key metadata and the audit trail, not for
    other local users. A new file is created 0600 here, before SQLite opens
    it (SQLite would make it 0644 under the usual umask). SQLite gives a
    -wal, -shm or -journal file the permissions of its database file (its unix
    VFS, ``findCreateFileMode``), so they follow. Existing files with wider
    modes are tightened, and that is said in one log line.
    """
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        return  # e.g. no such directory: SQLite reports it when it opens the file
    tightened: list[str] = []
    for suffix in _SQLITE_FILE_SUFFIXES:
        path = database.with_name(database.name + suffix)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                path.chmod(0o600)
                tightened.append(f"{path} ({mode:04o})")
        except FileNotFoundError:
            continue
        except OSError as error:
            _log.warning("cannot make %s private (chmod 600): %s", path, error.strerror)
    if tightened:
        _log.warning("SQLite files were readable by other users; now 0600: %s", ", ".join(tightened))


def _configure_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    """Take transaction control away from sqlite3 and set the pragmas."""
    # isolation_level = None: sqlite3 never emits BEGIN itself, we do (below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        _switch_to_wal(cursor)
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``journal_mode = WAL``, retried: SQLite skips the busy handler here.

    WAL lets readers run while one writer writes. It is a property of the file,
    so only the very first connections to a fresh file actually switch it; if
    two processes try at once, one gets "database is locked" straight away
    (SQLite does not wait, to avoid a lock deadlock), so wait and retry here.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        # E.g. a network file system without shared memory: still correct, but
        # readers and the writer will block each other.
        _log.warning("SQLite refused WAL mode (journal_mode is %s)", mode)


def _begin_sqlite_transaction(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
    if mode is None:
        return
    if mode not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
        raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _create_postgresql_engine(url: URL, pool_size: int, max_overflow: int, pool_timeout: float) -> Engine:
    # Parsed by hand: asking SQLAlchemy would load the dialect, and "postgres" has none.
    driver = url.drivername.partition("+")[2]
    if driver not in ("", "psycopg"):
        raise ValueError(f"unsupported PostgreSQL driver {driver!r}: use postgresql:// (psycopg 3)")
    url = url.set(drivername="postgresql+psycopg")
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        # A server restart or an idle-timeout on a proxy kills pooled
        # connections silently; test each one on checkout rather than fail a call.
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def write_options(dialect_name: str) -> dict[str, Any]:
    """Execution options for a transaction that will write (see module docstring)."""
    if dialect_name == "sqlite":
        return {SQLITE_BEGIN: "IMMEDIATE"}
    return {}


def single_statement_options(dialect_name: str) -> dict[str, Any]:
    """Execution options for a read that is one statement and needs no BEGIN."""
    if dialect_name == "sqlite":
        return {SQLITE_BEGIN: None}
    if dialect_name == "postgresql":
        return {"isolation_level": "AUTOCOMMIT"}
    return {}
