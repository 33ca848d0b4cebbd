"""The SQL metadata store: :class:`SqlMetadataStore` over SQLite or PostgreSQL.

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
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, and_, create_engine, event, exc, func, or_, select, text
from sqlalchemy.engine import URL, Connection, ExceptionContext, RowMapping, make_url

from hsmstore import errors
from hsmstore.core.model import (
    AliasRecord,
    DestructionRecord,
    KeyManager,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
    PendingCreation,
    RotationType,
    VersionState,
)
from hsmstore.core.ports import AbandonedTokenObject, KnownTokenIds
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.authz_sql import SqlAuthorizationStore
from hsmstore.store.locks import lock_existing_key
from hsmstore.store.schema import (
    abandoned_token_objects,
    aliases,
    grants,
    key_destructions,
    key_policies,
    key_versions,
    keys,
    tags,
)

#: Execution option read by the SQLite ``begin`` hook: ``"DEFERRED"`` (the
#: default), ``"IMMEDIATE"`` (take the write lock at once) or ``None`` (no
#: transaction: for single statements).
SQLITE_BEGIN: Final = "hsmstore_sqlite_begin"

_SQLITE_BUSY_TIMEOUT_MS: Final = 5000
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


# The columns a KeyVersion is built from, labelled so that they can share a
# SELECT with the keys columns (both tables have key_id, creation_date...).
_VERSION_COLUMNS: Final = (
    key_versions.c.key_id.label("v_key_id"),
    key_versions.c.version.label("v_version"),
    key_versions.c.token_id.label("v_token_id"),
    key_versions.c.state.label("v_state"),
    key_versions.c.creation_date.label("v_creation_date"),
    key_versions.c.rotation_type.label("v_rotation_type"),
)


class SqlMetadataStore(SqlAuditLog, SqlAuthorizationStore):
    """The ``MetadataStore``, ``AuditLog`` and ``AuthorizationStore`` ports on SQLAlchemy Core;
    one transaction per call.

    Safe to share between threads: it holds only the engine, whose pool hands
    each call its own connection.

    ``audit=``: every write that completes a management change takes the call's
    audit record and appends it to the chain in the same transaction as the
    change, and only if the change happened (a lost compare-and-set writes no
    record), so the trail never shows a change that did not commit, nor misses
    one that did.
    """

    def __init__(self, engine: Engine) -> None:
        dialect_name = engine.dialect.name
        self._engine = engine
        self._writer = engine.execution_options(**write_options(dialect_name))
        self._reader = engine.execution_options(**single_statement_options(dialect_name))

    # -- creation -------------------------------------------------------

    def insert_creating_key(self, key: KeyRecord, version: KeyVersion, policy: str | None = None) -> None:
        """Insert the key (CREATING), its first version (PENDING) and its key policy together.

        Raises ``AlreadyExistsException`` if the key id or the token id is
        taken, ``ValueError`` if the records are not a CREATING key and its
        PENDING version.
        """
        _check_new_key(key, version)
        try:
            with self._writer.begin() as connection:
                connection.execute(keys.insert().values(_key_values(key)))
                connection.execute(key_versions.insert().values(_version_values(version)))
                if policy is not None:
                    connection.execute(
                        key_policies.insert().values(
                            key_id=key.key_id,
                            policy_name="default",
                            document=policy,
                            last_updated=key.creation_date,
                        )
                    )
        except exc.IntegrityError:
            raise errors.AlreadyExistsException(
                f"key {key.key_id} or its token object id already exists"
            ) from None

    def finish_creating_key(self, key_id: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        """CREATING -> ENABLED and the key's PENDING versions -> ACTIVE, in one transaction.

        False for a key that is no longer CREATING (recovery claimed it);
        raises ``NotFoundException`` if the key is gone (recovery deleted it).
        """
        with self._writer.begin() as connection:
            flipped = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == KeyState.CREATING.value)
                .values(key_state=KeyState.ENABLED.value)
            ).rowcount
            if flipped:
                connection.execute(
                    key_versions.update()
                    .where(
                        key_versions.c.key_id == key_id,
                        key_versions.c.state == VersionState.PENDING.value,
                    )
                    .values(state=VersionState.ACTIVE.value)
                )
                self._audit_change(connection, audit)
                return True
            exists = connection.execute(select(keys.c.key_id).where(keys.c.key_id == key_id)).first()
        if exists is None:
            raise errors.NotFoundException(f"key {key_id} does not exist")
        return False

    def claim_failed_creation(self, key_id: str) -> bool:
        with self._writer.begin() as connection:
            connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == KeyState.CREATING.value)
                .values(key_state=KeyState.FAILED.value)
            )
            state = connection.execute(select(keys.c.key_state).where(keys.c.key_id == key_id)).scalar()
        return state in (KeyState.FAILED.value, None)

    def list_pending_creations(self, created_before: datetime) -> Sequence[PendingCreation]:
        """CREATING keys older than ``created_before``, oldest first, with their versions.

        One SELECT (keys LEFT JOIN versions), so a key and its versions come
        from the same snapshot even without a transaction.
        """
        _require_aware(created_before, "created_before")
        query = (
            select(*keys.c, *_VERSION_COLUMNS)
            .select_from(keys.outerjoin(key_versions, key_versions.c.key_id == keys.c.key_id))
            .where(
                or_(
                    and_(keys.c.key_state == KeyState.CREATING.value, keys.c.creation_date < created_before),
                    keys.c.key_state == KeyState.FAILED.value,
                )
            )
            .order_by(keys.c.creation_date, keys.c.key_id, key_versions.c.version)
        )
        pending: dict[str, PendingCreation] = {}
        with self._reader.connect() as connection:
            for row in connection.execute(query):
                values = row._mapping
                creation = pending.get(values["key_id"])
                if creation is None:
                    creation = PendingCreation(key=_key_from_row(values))
                    pending[creation.key.key_id] = creation
                if values["v_key_id"] is not None:
                    creation.versions.append(_version_from_row(values, prefix="v_"))
        return list(pending.values())

    def delete_key(self, key_id: str, *, abandoned_at: datetime | None = None) -> None:
        """Delete the key, its versions, aliases, tags, policy and grants; a missing key is not an error.

        The foreign keys cascade too, but the explicit deletes do not depend on
        SQLite's per-connection ``foreign_keys`` pragma being on. With
        ``abandoned_at``, the version rows this transaction deleted (DELETE ...
        RETURNING: a concurrent delete of the same key returns none) become tombstones.
        """
        if abandoned_at is not None:
            _require_aware(abandoned_at, "abandoned_at")
        with self._writer.begin() as connection:
            connection.execute(aliases.delete().where(aliases.c.target_key_id == key_id))
            connection.execute(tags.delete().where(tags.c.key_id == key_id))
            connection.execute(grants.delete().where(grants.c.key_id == key_id))
            connection.execute(key_policies.delete().where(key_policies.c.key_id == key_id))
            deleted = connection.execute(
                key_versions.delete()
                .where(key_versions.c.key_id == key_id)
                .returning(key_versions.c.token_id, key_versions.c.version)
            ).all()
            _record_abandoned(connection, key_id, deleted, abandoned_at)
            connection.execute(keys.delete().where(keys.c.key_id == key_id))

    # -- keys -----------------------------------------------------------

    def get_key(self, key_id: str) -> KeyRecord | None:
        """A primary-key lookup: the hot path of every cryptographic call."""
        with self._reader.connect() as connection:
            row = connection.execute(select(keys).where(keys.c.key_id == key_id)).first()
        return None if row is None else _key_from_row(row._mapping)

    def get_version(self, key_id: str, version: int) -> KeyVersion | None:
        """A primary-key lookup: the hot path of Decrypt."""
        query = select(key_versions).where(key_versions.c.key_id == key_id, key_versions.c.version == version)
        with self._reader.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else _version_from_row(row._mapping)

    def list_versions(self, key_id: str) -> Sequence[KeyVersion]:
        query = select(key_versions).where(key_versions.c.key_id == key_id).order_by(key_versions.c.version)
        with self._reader.connect() as connection:
            return [_version_from_row(row._mapping) for row in connection.execute(query)]

    def list_keys(self, tenant: str, limit: int, after_key_id: str | None) -> Sequence[KeyRecord]:
        """One page of a tenant's keys by key_id (keyset paging), CREATING ones left out."""
        _require_positive_limit(limit)
        query = select(keys).where(
            keys.c.tenant == tenant, keys.c.key_state.not_in([KeyState.CREATING.value, KeyState.FAILED.value])
        )
        if after_key_id is not None:
            query = query.where(keys.c.key_id > after_key_id)
        query = query.order_by(keys.c.key_id).limit(limit)
        with self._reader.connect() as connection:
            return [_key_from_row(row._mapping) for row in connection.execute(query)]

    def update_key_state(
        self, key_id: str, expected: KeyState, new_state: KeyState, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """Compare-and-set in one UPDATE, so two racing callers cannot both win."""
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == expected.value)
                .values(key_state=new_state.value)
            ).rowcount
            if changed == 1:
                self._audit_change(connection, audit)
        return changed == 1

    def update_description(
        self, key_id: str, description: str, *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Raises ``NotFoundException`` if the key does not exist, so no write is lost silently."""
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update().where(keys.c.key_id == key_id).values(description=description)
            ).rowcount
            if changed:
                self._audit_change(connection, audit)
        if changed == 0:
            raise errors.NotFoundException(f"key {key_id} does not exist")

    # -- scheduled deletion ---------------------------------------------

    def schedule_deletion(
        self,
        key_id: str,
        expected: KeyState,
        deletion_date: datetime,
        pending_window_days: int,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        _require_aware(deletion_date, "deletion_date")
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == expected.value)
                .values(
                    key_state=KeyState.PENDING_DELETION.value,
                    deletion_date=deletion_date,
                    pending_window_days=pending_window_days,
                )
            ).rowcount
            if changed == 1:
                self._audit_change(connection, audit)
        return changed == 1

    def cancel_deletion(self, key_id: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id, keys.c.key_state == KeyState.PENDING_DELETION.value)
                .values(key_state=KeyState.DISABLED.value, deletion_date=None, pending_window_days=None)
            ).rowcount
            if changed == 1:
                self._audit_change(connection, audit)
        return changed == 1

    def list_keys_to_destroy(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        _require_aware(now, "now")
        _require_positive_limit(limit)
        due = and_(keys.c.key_state == KeyState.PENDING_DELETION.value, keys.c.deletion_date <= now)
        query = (
            select(keys)
            .where(or_(due, keys.c.key_state == KeyState.DESTROYING.value))
            .order_by(keys.c.deletion_date, keys.c.key_id)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [_key_from_row(row._mapping) for row in connection.execute(query)]

    def begin_destruction(self, key_id: str) -> bool:
        """See the port. The records are written in the same transaction as the
        state change, so a crash leaves either both or neither."""
        with self._writer.begin() as connection:
            row = connection.execute(select(keys).where(keys.c.key_id == key_id)).first()
            if row is None:
                return False
            key = _key_from_row(row._mapping)
            if key.state is KeyState.PENDING_DELETION:
                connection.execute(
                    keys.update()
                    .where(keys.c.key_id == key_id, keys.c.key_state == KeyState.PENDING_DELETION.value)
                    .values(key_state=KeyState.DESTROYING.value)
                )
            elif key.state is not KeyState.DESTROYING:
                return False
            recorded = set(
                connection.execute(
                    select(key_destructions.c.version).where(key_destructions.c.key_id == key_id)
                ).scalars()
            )
            versions = connection.execute(select(key_versions).where(key_versions.c.key_id == key_id))
            for version_row in versions:
                version = _version_from_row(version_row._mapping)
                if version.version in recorded:
                    continue
                connection.execute(
                    key_destructions.insert().values(
                        key_id=key_id,
                        tenant=key.tenant,
                        version=version.version,
                        token_id=version.token_id,
                        deletion_date=key.deletion_date or version.creation_date,
                        destroyed_at=None,
                    )
                )
        return True

    def mark_version_destroyed(self, key_id: str, version: int, destroyed_at: datetime) -> None:
        _require_aware(destroyed_at, "destroyed_at")
        with self._writer.begin() as connection:
            connection.execute(
                key_destructions.update()
                .where(
                    key_destructions.c.key_id == key_id,
                    key_destructions.c.version == version,
                    key_destructions.c.destroyed_at.is_(None),
                )
                .values(destroyed_at=destroyed_at)
            )

    def list_destructions(self, key_id: str | None = None) -> Sequence[DestructionRecord]:
        query = select(key_destructions).order_by(key_destructions.c.key_id, key_destructions.c.version)
        if key_id is not None:
            query = query.where(key_destructions.c.key_id == key_id)
        with self._reader.connect() as connection:
            return [_destruction_from_row(row._mapping) for row in connection.execute(query)]

    # -- rotation -----------------------------------------------------------

    def set_rotation(
        self,
        key_id: str,
        period_days: int | None,
        next_rotation_date: datetime | None,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        if next_rotation_date is not None:
            _require_aware(next_rotation_date, "next_rotation_date")
        with self._writer.begin() as connection:
            changed = connection.execute(
                keys.update()
                .where(keys.c.key_id == key_id)
                .values(rotation_period_days=period_days, next_rotation_date=next_rotation_date)
            ).rowcount
            if changed:
                self._audit_change(connection, audit)
        if changed == 0:
            raise errors.NotFoundException(f"key {key_id} does not exist")

    def insert_pending_version(self, version: KeyVersion, max_on_demand_rotations: int) -> bool:
        """See the port. The on-demand count is read in the transaction that
        inserts; every rotation of a key contends for the same version number,
        so two rotations can never both pass the check."""
        if version.state is not VersionState.PENDING:
            raise ValueError("a new version must be PENDING")
        _require_aware(version.creation_date, "creation_date")
        try:
            with self._writer.begin() as connection:
                if version.rotation_type is RotationType.ON_DEMAND:
                    count = connection.execute(
                        select(func.count())
                        .select_from(key_versions)
                        .where(
                            key_versions.c.key_id == version.key_id,
                            key_versions.c.rotation_type == RotationType.ON_DEMAND.value,
                        )
                    ).scalar_one()
                    if count >= max_on_demand_rotations:
                        raise errors.LimitExceededException(
                            f"The key has reached the limit of {max_on_demand_rotations} on-demand rotations"
                        )
                connection.execute(key_versions.insert().values(_version_values(version)))
        except exc.IntegrityError:
            return False
        return True

    def finish_rotation(
        self,
        key_id: str,
        version: int,
        token_id: bytes,
        next_rotation_date: datetime | None,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """Both updates or neither: the version must still be PENDING (recovery may have
        removed it) and the key must still be at ``version - 1``."""
        values: dict[str, Any] = {"current_version": version}
        if next_rotation_date is not None:
            _require_aware(next_rotation_date, "next_rotation_date")
            values["next_rotation_date"] = next_rotation_date
        try:
            with self._writer.begin() as connection:
                activated = connection.execute(
                    key_versions.update()
                    .where(
                        key_versions.c.key_id == key_id,
                        key_versions.c.version == version,
                        key_versions.c.token_id == token_id,
                        key_versions.c.state == VersionState.PENDING.value,
                    )
                    .values(state=VersionState.ACTIVE.value)
                ).rowcount
                if not activated:
                    return False
                moved = connection.execute(
                    keys.update()
                    .where(keys.c.key_id == key_id, keys.c.current_version == version - 1)
                    .values(**values)
                ).rowcount
                if not moved:
                    raise _RollBack
                self._audit_change(connection, audit)
        except _RollBack:
            return False
        return True

    def abandon_version(self, key_id: str, version: int, token_id: bytes) -> bool:
        where = (
            key_versions.c.key_id == key_id,
            key_versions.c.version == version,
            key_versions.c.token_id == token_id,
        )
        with self._writer.begin() as connection:
            connection.execute(
                key_versions.update()
                .where(*where, key_versions.c.state == VersionState.PENDING.value)
                .values(state=VersionState.ABANDONED.value)
            )
            state = connection.execute(select(key_versions.c.state).where(*where)).scalar()
        return state in (VersionState.ABANDONED.value, None)

    def delete_version(
        self, key_id: str, version: int, token_id: bytes, *, abandoned_at: datetime | None = None
    ) -> None:
        if abandoned_at is not None:
            _require_aware(abandoned_at, "abandoned_at")
        with self._writer.begin() as connection:
            deleted = connection.execute(
                key_versions.delete()
                .where(
                    key_versions.c.key_id == key_id,
                    key_versions.c.version == version,
                    key_versions.c.token_id == token_id,
                    key_versions.c.state != VersionState.ACTIVE.value,
                )
                .returning(key_versions.c.token_id, key_versions.c.version)
            ).all()
            _record_abandoned(connection, key_id, deleted, abandoned_at)

    def list_pending_versions(self, created_before: datetime) -> Sequence[KeyVersion]:
        _require_aware(created_before, "created_before")
        query = (
            select(key_versions)
            .select_from(key_versions.join(keys, keys.c.key_id == key_versions.c.key_id))
            .where(
                or_(
                    and_(
                        key_versions.c.state == VersionState.PENDING.value,
                        key_versions.c.creation_date < created_before,
                    ),
                    key_versions.c.state == VersionState.ABANDONED.value,
                ),
                keys.c.key_state.not_in([KeyState.CREATING.value, KeyState.FAILED.value]),
            )
            .order_by(key_versions.c.creation_date)
        )
        with self._reader.connect() as connection:
            return [_version_from_row(row._mapping) for row in connection.execute(query)]

    def list_due_rotations(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        _require_aware(now, "now")
        _require_positive_limit(limit)
        query = (
            select(keys)
            .where(
                keys.c.key_state == KeyState.ENABLED.value,
                keys.c.rotation_period_days.is_not(None),
                keys.c.next_rotation_date <= now,
            )
            .order_by(keys.c.next_rotation_date, keys.c.key_id)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [_key_from_row(row._mapping) for row in connection.execute(query)]

    # -- tags -----------------------------------------------------------------

    def put_tags(
        self,
        key_id: str,
        tags_to_put: Mapping[str, str],
        max_tags: int,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        with self._writer.begin() as connection:
            lock_existing_key(connection, key_id)
            existing = set(
                connection.execute(select(tags.c.tag_key).where(tags.c.key_id == key_id)).scalars()
            )
            if len(existing | set(tags_to_put)) > max_tags:
                raise errors.LimitExceededException(f"A key can have at most {max_tags} tags")
            for tag_key, tag_value in tags_to_put.items():
                if tag_key in existing:
                    connection.execute(
                        tags.update()
                        .where(tags.c.key_id == key_id, tags.c.tag_key == tag_key)
                        .values(tag_value=tag_value)
                    )
                else:
                    connection.execute(
                        tags.insert().values(key_id=key_id, tag_key=tag_key, tag_value=tag_value)
                    )
            self._audit_change(connection, audit)

    def remove_tags(
        self, key_id: str, tag_keys: Sequence[str], *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Removing absent tags is not an error (UntagResource), and is still recorded."""
        with self._writer.begin() as connection:
            connection.execute(
                tags.delete().where(tags.c.key_id == key_id, tags.c.tag_key.in_(list(tag_keys)))
            )
            self._audit_change(connection, audit)

    def list_tags(self, key_id: str) -> Mapping[str, str]:
        query = (
            select(tags.c.tag_key, tags.c.tag_value).where(tags.c.key_id == key_id).order_by(tags.c.tag_key)
        )
        with self._reader.connect() as connection:
            return {row.tag_key: row.tag_value for row in connection.execute(query)}

    # -- aliases --------------------------------------------------------

    def create_alias(self, alias: AliasRecord, *, audit: Mapping[str, Any] | None = None) -> None:
        """Raises ``NotFoundException`` if the target key does not exist,
        ``AlreadyExistsException`` if the tenant already has an alias of that name.
        """
        _require_aware(alias.creation_date, "creation_date")
        _require_aware(alias.last_updated_date, "last_updated_date")
        try:
            with self._writer.begin() as connection:
                lock_existing_key(connection, alias.target_key_id)
                connection.execute(aliases.insert().values(_alias_values(alias)))
                self._audit_change(connection, audit)
        except exc.IntegrityError:
            # The target key is locked above, so the only constraint left to
            # break is the (tenant, alias_name) primary key.
            raise errors.AlreadyExistsException(f"alias {alias.alias_name} already exists") from None

    def update_alias(
        self,
        tenant: str,
        alias_name: str,
        target_key_id: str,
        now: datetime,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """Raises ``NotFoundException`` if the new target key does not exist."""
        _require_aware(now, "now")
        with self._writer.begin() as connection:
            lock_existing_key(connection, target_key_id)
            changed = connection.execute(
                aliases.update()
                .where(aliases.c.tenant == tenant, aliases.c.alias_name == alias_name)
                .values(target_key_id=target_key_id, last_updated_date=now)
            ).rowcount
            if changed == 1:
                self._audit_change(connection, audit)
        return changed == 1

    def delete_alias(self, tenant: str, alias_name: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        with self._writer.begin() as connection:
            changed = connection.execute(
                aliases.delete().where(aliases.c.tenant == tenant, aliases.c.alias_name == alias_name)
            ).rowcount
            if changed == 1:
                self._audit_change(connection, audit)
        return changed == 1

    def get_alias(self, tenant: str, alias_name: str) -> AliasRecord | None:
        query = select(aliases).where(aliases.c.tenant == tenant, aliases.c.alias_name == alias_name)
        with self._reader.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else _alias_from_row(row._mapping)

    def list_aliases(
        self, tenant: str, limit: int, after_alias_name: str | None, key_id: str | None
    ) -> Sequence[AliasRecord]:
        """One page of a tenant's aliases by name (keyset paging), optionally of one key."""
        _require_positive_limit(limit)
        conditions = [aliases.c.tenant == tenant]
        if after_alias_name is not None:
            conditions.append(aliases.c.alias_name > after_alias_name)
        if key_id is not None:
            conditions.append(aliases.c.target_key_id == key_id)
        query = select(aliases).where(and_(*conditions)).order_by(aliases.c.alias_name).limit(limit)
        with self._reader.connect() as connection:
            return [_alias_from_row(row._mapping) for row in connection.execute(query)]

    # -- abandoned token objects (the junk sweep) ---------------------------

    def known_token_ids(self, token_ids: Sequence[bytes]) -> KnownTokenIds:
        """See the port. Versions are read before tombstones, :data:`_TOKEN_ID_BATCH` ids
        per query: a rollback between the two reads leaves the id in use, never abandoned."""
        in_use: set[bytes] = set()
        abandoned: set[bytes] = set()
        given_up = or_(
            key_versions.c.state == VersionState.ABANDONED.value,
            keys.c.key_state == KeyState.FAILED.value,
        )
        unique = list(dict.fromkeys(token_ids))
        with self._reader.connect() as connection:
            for start in range(0, len(unique), _TOKEN_ID_BATCH):
                batch = unique[start : start + _TOKEN_ID_BATCH]
                rows = connection.execute(
                    select(key_versions.c.token_id, given_up.label("given_up"))
                    .select_from(key_versions.outerjoin(keys, keys.c.key_id == key_versions.c.key_id))
                    .where(key_versions.c.token_id.in_(batch))
                ).all()
                for token_id, is_given_up in rows:
                    (abandoned if is_given_up else in_use).add(bytes(token_id))
                tombstones = connection.execute(
                    select(abandoned_token_objects.c.token_id).where(
                        abandoned_token_objects.c.token_id.in_(batch)
                    )
                ).scalars()
                abandoned.update(bytes(token_id) for token_id in tombstones)
        return KnownTokenIds(frozenset(in_use), frozenset(abandoned - in_use))

    def list_abandoned_token_objects(
        self, abandoned_before: datetime, limit: int
    ) -> Sequence[AbandonedTokenObject]:
        _require_aware(abandoned_before, "abandoned_before")
        _require_positive_limit(limit)
        query = (
            select(abandoned_token_objects)
            .where(abandoned_token_objects.c.abandoned_at < abandoned_before)
            .order_by(abandoned_token_objects.c.abandoned_at, abandoned_token_objects.c.token_id)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [
                AbandonedTokenObject(bytes(row.token_id), row.key_id, row.version, row.abandoned_at)
                for row in connection.execute(query)
            ]

    def forget_abandoned_token_objects(self, token_ids: Sequence[bytes]) -> None:
        unique = list(dict.fromkeys(token_ids))
        for start in range(0, len(unique), _TOKEN_ID_BATCH):
            with self._writer.begin() as connection:
                connection.execute(
                    abandoned_token_objects.delete().where(
                        abandoned_token_objects.c.token_id.in_(unique[start : start + _TOKEN_ID_BATCH])
                    )
                )

    def prune_abandoned_token_objects(self, abandoned_before: datetime) -> int:
        _require_aware(abandoned_before, "abandoned_before")
        with self._writer.begin() as connection:
            pruned = connection.execute(
                abandoned_token_objects.delete().where(
                    abandoned_token_objects.c.abandoned_at < abandoned_before
                )
            ).rowcount
        return int(pruned)

    def _audit_change(self, connection: Connection, audit: Mapping[str, Any] | None) -> None:
        """Append the change's record, if the caller gave one, in the change's transaction."""
        if audit is not None:
            self._append_audit(connection, [audit])

    def ping(self) -> None:
        with self._reader.connect() as connection:
            connection.execute(text("SELECT 1")).one()

    def close(self) -> None:
        """Close the engine's pooled connections (the store is its engine's only user)."""
        self._engine.dispose()


# -- helpers ---------------------------------------------------------------


class _RollBack(Exception):
    """Raised inside a transaction to undo it; never escapes the store."""


_TOKEN_ID_BATCH: Final = 500  # ids per IN (...): well under every engine's parameter limit


def _record_abandoned(
    connection: Connection, key_id: str, deleted: Sequence[Any], abandoned_at: datetime | None
) -> None:
    """Tombstones for the version rows ``(token_id, version)`` just deleted, if ``abandoned_at``."""
    if abandoned_at is None or not deleted:
        return
    connection.execute(
        abandoned_token_objects.insert(),
        [
            {"token_id": token_id, "key_id": key_id, "version": version, "abandoned_at": abandoned_at}
            for token_id, version in deleted
        ],
    )


def _check_new_key(key: KeyRecord, version: KeyVersion) -> None:
    if key.state is not KeyState.CREATING:
        raise ValueError(f"a new key must be CREATING, not {key.state}")
    if version.state is not VersionState.PENDING:
        raise ValueError(f"a new key's first version must be PENDING, not {version.state}")
    if version.key_id != key.key_id:
        raise ValueError("the version belongs to another key")
    _require_aware(key.creation_date, "creation_date")
    _require_aware(version.creation_date, "version creation_date")
    if key.deletion_date is not None:
        _require_aware(key.deletion_date, "deletion_date")


def _require_aware(value: datetime, name: str) -> None:
    """Refuse naive datetimes before SQL sees them (see ``schema.UtcDateTime``)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _require_positive_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def _key_values(key: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "tenant": key.tenant,
        "description": key.description,
        "key_state": key.state.value,
        "key_usage": key.key_usage.value,
        "key_spec": key.key_spec.value,
        "origin": key.origin.value,
        "key_manager": key.key_manager.value,
        "creation_date": key.creation_date,
        "deletion_date": key.deletion_date,
        "current_version": key.current_version,
        "pending_window_days": key.pending_window_days,
        "rotation_period_days": key.rotation_period_days,
        "next_rotation_date": key.next_rotation_date,
    }


def _version_values(version: KeyVersion) -> dict[str, Any]:
    return {
        "key_id": version.key_id,
        "version": version.version,
        "token_id": version.token_id,
        "state": version.state.value,
        "creation_date": version.creation_date,
        "rotation_type": version.rotation_type.value if version.rotation_type else None,
    }


def _alias_values(alias: AliasRecord) -> dict[str, Any]:
    return {
        "tenant": alias.tenant,
        "alias_name": alias.alias_name,
        "target_key_id": alias.target_key_id,
        "creation_date": alias.creation_date,
        "last_updated_date": alias.last_updated_date,
    }


def _key_from_row(row: RowMapping) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        description=row["description"],
        state=KeyState(row["key_state"]),
        key_usage=KeyUsage(row["key_usage"]),
        key_spec=KeySpec(row["key_spec"]),
        origin=Origin(row["origin"]),
        key_manager=KeyManager(row["key_manager"]),
        creation_date=row["creation_date"],
        current_version=row["current_version"],
        deletion_date=row["deletion_date"],
        pending_window_days=row["pending_window_days"],
        rotation_period_days=row["rotation_period_days"],
        next_rotation_date=row["next_rotation_date"],
    )


def _version_from_row(row: RowMapping, prefix: str = "") -> KeyVersion:
    return KeyVersion(
        key_id=row[prefix + "key_id"],
        version=row[prefix + "version"],
        token_id=bytes(row[prefix + "token_id"]),
        state=VersionState(row[prefix + "state"]),
        creation_date=row[prefix + "creation_date"],
        rotation_type=RotationType(row[prefix + "rotation_type"]) if row[prefix + "rotation_type"] else None,
    )


def _destruction_from_row(row: RowMapping) -> DestructionRecord:
    return DestructionRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        version=row["version"],
        token_id=bytes(row["token_id"]),
        deletion_date=row["deletion_date"],
        destroyed_at=row["destroyed_at"],
    )


def _alias_from_row(row: RowMapping) -> AliasRecord:
    return AliasRecord(
        tenant=row["tenant"],
        alias_name=row["alias_name"],
        target_key_id=row["target_key_id"],
        creation_date=row["creation_date"],
        last_updated_date=row["last_updated_date"],
    )
