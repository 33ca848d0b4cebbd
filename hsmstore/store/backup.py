"""The metadata DB and the audit spool in a backup: a consistent SQLite copy while servers write.

``hsmstore backup`` / ``restore`` (issue 16, Deliver 6: "SQLite online backup +
the token directory, consistent, with a manifest and checksums").

* The DB is copied with SQLite's online backup API (``sqlite3.Connection.backup``,
  https://www.sqlite.org/backup.html) in one step (``pages=-1``): one read
  transaction copies every page, so the copy is the database as of one
  commit, however many servers are writing (WAL: readers never block
  writers, and a writer never blocks the copy). The copy is switched from WAL
  to a rollback journal, so it is one self-contained file, and must pass
  ``PRAGMA integrity_check``.
* Only SQLite: a PostgreSQL DB is backed up with PostgreSQL's own tools
  (``pg_dump``, base backups with WAL archiving: docs/operations.md).
* The audit spool (store/spool.py) is copied after the DB, whole lines only:
  a spool only grows, so each copied spool holds at least the bytes the
  copied DB says were ingested (``audit_spool_offsets``), and the restored
  server's ingester appends the rest to the chain. A line a writer was in the
  middle of is left out rather than copied torn (the ingester would
  quarantine a torn line of a dead writer, and ``audit verify`` would report
  it). Quarantined lines (``quarantine/``) are copied as they are.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError

from hsmstore.store.engine import sqlite_file_of
from hsmstore.store.migrate import alembic_config
from hsmstore.store.spool import QUARANTINE_DIRECTORY, SPOOL_SUFFIX

SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT_MS = 5000
_CHUNK = 1024 * 1024


class StoreBackupError(RuntimeError):
    """The DB or the spool cannot be copied or installed; the message names what and why."""


def sqlite_file_for_backup(db_url: str) -> Path:
    """The SQLite file of ``db_url``; refuses any other database in one line."""
    path = sqlite_file_of(db_url)
    if path is None:
        raise StoreBackupError(
            "the metadata DB (--db) is not SQLite: back up PostgreSQL with pg_dump or a base backup "
            "with WAL archiving, and the HSM with its own backups (docs/operations.md, "
            '"Backup and restore")'
        )
    return path


def snapshot_sqlite(source: Path, destination: Path) -> str | None:
    """Copy the SQLite DB at ``source`` to ``destination`` (a new 0600 file); its schema revision.

    Consistent while servers write (module docstring). Raises
    :class:`StoreBackupError` when there is no DB or the copy is damaged.
    """
    if not source.is_file():
        raise StoreBackupError(f"no metadata DB at {source} (give --data-dir or --db sqlite:///PATH)")
    os.close(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        origin = sqlite3.connect(source, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            copy = sqlite3.connect(destination)
            try:
                origin.backup(copy, pages=-1)
                copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
                revision = _revision(copy)
            finally:
                copy.close()
        finally:
            origin.close()
    except sqlite3.Error as error:
        raise StoreBackupError(f"cannot copy the metadata DB {source}: {error}") from None
    if problems != ["ok"]:
        raise StoreBackupError(f"the copy of {source} fails SQLite's integrity check: {problems[0]}")
    return revision


def sqlite_schema_revision(path: Path) -> str | None:
    """The Alembic revision recorded in a SQLite file (None before the first migration)."""
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise StoreBackupError(f"cannot open {path}: {error}") from None
    try:
        return _revision(connection)
    finally:
        connection.close()


def known_schema_revision(revision: str) -> bool:
    """Whether this hsmstore's migrations know ``revision`` (else the DB is from a newer one)."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def install_sqlite(copy: Path, target: Path, set_aside_suffix: str) -> list[Path]:
    """Make ``copy`` the DB at ``target``; an existing DB is renamed aside, never deleted.

    The old DB file and its ``-wal``/``-shm``/``-journal`` are renamed to
    ``<name><set_aside_suffix>`` (the ``-wal`` keeps its suffix after that,
    so SQLite still pairs them) before the new file is moved in: a ``-wal``
    left beside a replaced DB file would be replayed into it by the next
    opener. The new file arrives by a rename in ``target``'s directory, so a
    crash leaves the old file or the new one, never half of one. The caller
    has made sure no process has the DB open. Returns what was set aside.
    """
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".restoring")
    _copy_file(copy, staged)
    set_aside: list[Path] = []
    for suffix in ("", *SQLITE_SIDE_SUFFIXES):
        old = target.with_name(target.name + suffix)
        if old.exists():
            aside = target.with_name(target.name + set_aside_suffix + suffix)
            os.replace(old, aside)
            set_aside.append(aside)
    os.replace(staged, target)
    os.chmod(target, 0o600)
    return set_aside


def install_spool(staged: Path, spool_directory: Path, set_aside_suffix: str) -> Path | None:
    """Make ``staged`` the audit spool directory; an existing one is renamed aside (returned).

    The restored DB's spool offsets match the restored spool files; the
    records the old spools hold are kept aside, not replayed into a chain
    they do not belong to.
    """
    aside: Path | None = None
    if spool_directory.exists():
        aside = spool_directory.with_name(spool_directory.name + set_aside_suffix)
        os.replace(spool_directory, aside)
    if staged.is_dir():
        os.replace(staged, spool_directory)
    else:
        spool_directory.mkdir(mode=0o700)
    os.chmod(spool_directory, 0o700)
    return aside


def sqlite_files(target: Path) -> list[Path]:
    """The DB file and whichever of its side files exist (for the in-use check)."""
    candidates = [target, *(target.with_name(target.name + suffix) for suffix in SQLITE_SIDE_SUFFIXES)]
    return [path for path in candidates if path.exists()]


def copy_spool(spool_directory: Path, destination: Path) -> list[Path]:
    """Copy every spool's whole lines and the quarantined lines; the copied files, relative."""
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    copied: list[Path] = []
    if not spool_directory.is_dir():
        return copied
    for spool in sorted(spool_directory.glob(f"*{SPOOL_SUFFIX}")):
        try:
            _copy_whole_lines(spool, destination / spool.name)
        except FileNotFoundError:
            continue  # fully ingested and removed meanwhile: its records are in the chain
        copied.append(Path(spool.name))
    quarantine = spool_directory / QUARANTINE_DIRECTORY
    if quarantine.is_dir():
        (destination / QUARANTINE_DIRECTORY).mkdir(mode=0o700, exist_ok=True)
        for kept in sorted(p for p in quarantine.iterdir() if p.is_file()):
            relative = Path(QUARANTINE_DIRECTORY) / kept.name
            _copy_file(kept, destination / relative)
            copied.append(relative)
    return copied


def _copy_whole_lines(spool: Path, target: Path) -> None:
    """Copy ``spool`` up to and including its last line end."""
    fd = os.open(spool, os.O_RDONLY)
    try:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            whole = 0
            written = 0
            while chunk := os.read(fd, _CHUNK):
                os.write(out, chunk)
                end = chunk.rfind(b"\n")
                if end >= 0:
                    whole = written + end + 1
                written += len(chunk)
            os.ftruncate(out, whole)
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _copy_file(source: Path, target: Path) -> None:
    fd = os.open(source, os.O_RDONLY)
    try:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while chunk := os.read(fd, _CHUNK):
                os.write(out, chunk)
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _revision(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None  # no alembic_version table: never migrated
    return None if row is None else str(row[0])
