"""``hsmstore backup`` and ``hsmstore restore``: the embedded set-up (SQLite + the dev token).

hsmstore backup  --output DIR|FILE.tar[.gz] [--data-dir D] [--db sqlite:///PATH] [--config F]
hsmstore restore --input DIR|FILE.tar[.gz]  [--data-dir D] [--db sqlite:///PATH] [--force]
                 [--manifest-sha256 HEX]

Issue 16, Deliver 6: "``hsmstore backup`` / ``restore`` for the embedded set-up
(SQLite online backup + the token directory, consistent, with a manifest and
checksums)". docs/operations.md, "Backup and restore", is the operator's page.

Consistency, while servers keep serving: the DB is copied first (one SQLite
read transaction: the DB as of one commit), then the token directory, then
the audit spool. Every key version the DB copy names ACTIVE had its token
object made before that commit (CreateKey and rotation write the row, then
the object, then activate), so the object is in the token copied after it.
Objects made after the DB copy are extra in the token copy: no row names
them, the junk sweep never destroys an object its DB does not know and
warns about it once (core/keys/junk_sweep.py). An object destroyed between
the two copies belonged to a key whose deletion was already due in the DB
copy, and the reaper tolerates a missing object. The order token-then-DB
would be wrong: a key made between the two copies would be ACTIVE in the DB
copy with no object in the token copy, and its ciphertexts would never
decrypt.

Exit codes: 0 done; 1 refused or failed (one line on stderr: what, where and
the fix); 2 a usage or settings error. Nothing secret is printed: the PIN
file is copied (0600) and never read.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from hsmstore import bootstrap
from hsmstore.cli.backup_manifest import (
    BackupFile,
    BackupInvalid,
    archive_compression,
    pack,
    unpack,
    verify_backup,
    write_manifest,
)
from hsmstore.cli.data_dir_locks import lock_holders
from hsmstore.cli.settings_flags import settings_from_flags
from hsmstore.config import ConfigError, Settings
from hsmstore.hsm.devtoken import DEFAULT_TOKEN_LABEL
from hsmstore.hsm.devtoken_backup import (
    PIN_FILE,
    SOFTHSM_DIRECTORY,
    TOKEN_OBJECT,
    TOKENS_DIRECTORY,
    DevTokenBackupError,
    copy_dev_token,
    dev_token_present,
    install_dev_token,
)
from hsmstore.store.backup import (
    StoreBackupError,
    copy_spool,
    install_spool,
    install_sqlite,
    known_schema_revision,
    snapshot_sqlite,
    sqlite_file_for_backup,
    sqlite_files,
)

DONE_EXIT = 0
REFUSED_EXIT = 1
USAGE_ERROR_EXIT = 2

DB_NAME = "hsmstore.db"
SPOOL_NAME = "audit-spool"
DEV_TOKEN_LOCK = ".lock"  # noqa: S105 - a file name; hsm/devtoken.py: ensure_dev_token takes this flock at every start
OPERATIONS_DOC = 'docs/operations.md, "Backup and restore"'


class Refused(RuntimeError):
    """One line: what is refused, where, and the fix."""


def add_backup_parsers(subparsers: Any) -> None:
    """Add ``backup`` and ``restore`` to the top-level ``hsmstore`` sub-parsers."""
    backup = subparsers.add_parser(
        "backup", help="copy the SQLite DB, the dev token and the audit spool, while serving"
    )
    _add_settings_flags(backup)
    backup.add_argument(
        "--output",
        required=True,
        help="a new directory, or a FILE.tar / FILE.tar.gz / FILE.tgz (never written over)",
    )
    restore = subparsers.add_parser("restore", help="check a backup and install it into a data directory")
    _add_settings_flags(restore)
    restore.add_argument("--input", required=True, help="a backup directory or archive")
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace a data directory that already holds a DB or token (they are renamed aside, "
        "not deleted); a data directory in use by a running process is refused all the same",
    )
    restore.add_argument(
        "--manifest-sha256",
        dest="manifest_sha256",
        help="the manifest SHA-256 that `hsmstore backup` printed: refuse any other manifest",
    )


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--data-dir", dest="data_dir", help="data directory (default ./.hsmstore)")
    parser.add_argument("--db", help="sqlite:///PATH (default: SQLite in the data dir)")


def run_backup(args: argparse.Namespace) -> int:
    return _run("backup", _backup, args)


def run_restore(args: argparse.Namespace) -> int:
    return _run("restore", _restore, args)


def _run(command: str, action: Callable[[argparse.Namespace], str], args: argparse.Namespace) -> int:
    try:
        message = action(args)
    except ConfigError as error:
        print(f"hsmstore: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT
    except (Refused, BackupInvalid, StoreBackupError, DevTokenBackupError) as error:
        print(f"hsmstore {command}: {error}", file=sys.stderr)
        return REFUSED_EXIT
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"hsmstore {command}: {error.strerror or error}{where}", file=sys.stderr)
        return REFUSED_EXIT
    print(message, flush=True)
    return DONE_EXIT


# ------------------------------------------------------------------ backup


def _backup(args: argparse.Namespace) -> str:
    settings = settings_from_flags(args)
    db_file = sqlite_file_for_backup(settings.db_url)
    _require_dev_token(settings)
    data_dir = settings.data_path.resolve()
    output = Path(args.output).resolve()
    compression = archive_compression(output)
    if output.exists() and (compression is not None or not output.is_dir() or any(output.iterdir())):
        raise Refused(f"{output} already exists: give a new --output (a backup is never written over)")
    output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        # The order is the consistency argument of the module docstring: DB, then token, then spool.
        revision = snapshot_sqlite(db_file, staging / DB_NAME)
        copy_dev_token(data_dir, staging / SOFTHSM_DIRECTORY)
        copy_spool(bootstrap.audit_spool_directory(settings), staging / SPOOL_NAME)
        manifest, digest = write_manifest(
            staging,
            created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            hsmstore_version=_hsmstore_version(),
            schema_revision=revision,
            token_label=DEFAULT_TOKEN_LABEL,
        )
        if compression is not None:
            pack(staging, output, compression)
        else:
            if output.exists():
                output.rmdir()  # empty (checked above)
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (
        f"backup of {data_dir} written to {output}: {len(manifest.files)} files, schema "
        f"{revision or 'none'}, made {manifest.created}; manifest sha256 {digest}"
    )


# ----------------------------------------------------------------- restore


def _restore(args: argparse.Namespace) -> str:
    settings = settings_from_flags(args)
    db_file = sqlite_file_for_backup(settings.db_url).resolve()
    _require_dev_token(settings)
    data_dir = settings.data_path.resolve()
    source = Path(args.input).resolve()
    if not source.exists():
        raise Refused(f"{source} does not exist (--input)")
    _refuse_if_in_use(data_dir, db_file)
    existing = [str(p) for p in (db_file,) if p.exists()]
    if dev_token_present(data_dir):
        existing.append(str(data_dir / SOFTHSM_DIRECTORY))
    if existing and not args.force:
        raise Refused(
            f"{' and '.join(existing)} already exist: restore into a new --data-dir, or pass --force to "
            "replace them (they are renamed aside, not deleted)"
        )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = data_dir / f".restore-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        unpack(source, staging)
        manifest = verify_backup(staging, args.manifest_sha256)
        _require_complete(manifest.files, source)
        revision = manifest.schema_revision
        if revision is not None and not known_schema_revision(revision):
            raise Refused(
                f"{source} holds schema revision {revision}, which this hsmstore "
                f"({_hsmstore_version()}) does not know: restore it with the hsmstore that made it "
                f"({manifest.hsmstore_version or 'a newer version'})"
            )
        suffix = ".replaced-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        with _dev_token_lock(data_dir):  # a server starting meanwhile waits in ensure_dev_token
            _refuse_if_in_use(data_dir, db_file)
            set_aside = install_sqlite(staging / DB_NAME, db_file, suffix)
            set_aside += install_dev_token(staging / SOFTHSM_DIRECTORY, data_dir, suffix)
            spool_aside = install_spool(staging / SPOOL_NAME, data_dir / SPOOL_NAME, suffix)
            if spool_aside is not None:
                set_aside.append(spool_aside)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    aside = f"; the replaced files were renamed with the suffix {suffix}" if set_aside else ""
    return (
        f"restored {source} (made {manifest.created}, schema {revision or 'none'}) into {data_dir}: "
        f"keys and changes made after {manifest.created} are not in it ({OPERATIONS_DOC}){aside}"
    )


def _require_complete(files: Sequence[BackupFile], source: Path) -> None:
    """A DB, a PIN file and a token, checked before anything is installed (never half a restore)."""
    paths = {entry.path for entry in files}
    token = f"{SOFTHSM_DIRECTORY}/{TOKENS_DIRECTORY}/"
    needed = {
        DB_NAME: DB_NAME in paths,
        f"{SOFTHSM_DIRECTORY}/{PIN_FILE}": f"{SOFTHSM_DIRECTORY}/{PIN_FILE}" in paths,
        f"{token}<uuid>/{TOKEN_OBJECT}": any(
            p.startswith(token) and p.endswith(f"/{TOKEN_OBJECT}") for p in paths
        ),
    }
    missing = [name for name, present in needed.items() if not present]
    if missing:
        raise Refused(f"{source} has no {missing[0]}: it is not a whole hsmstore backup")


def _refuse_if_in_use(data_dir: Path, db_file: Path) -> None:
    files = sqlite_files(db_file)
    spools: list[Path] = []
    if data_dir.is_dir():
        files += [p for p in data_dir.rglob("*") if p.is_file()]
        spools = sorted((data_dir / SPOOL_NAME).glob("*.jsonl"))
    holders = lock_holders(files, spools)
    if holders:
        pids = ", ".join(str(pid) for pid in sorted(holders) if pid) or "unknown"
        held = sorted({str(path) for paths in holders.values() for path in paths})
        raise Refused(
            f"{data_dir} is in use by process {pids} (it holds a lock on {held[0]}"
            f"{f' and {len(held) - 1} more' if len(held) > 1 else ''}): stop the server (and any "
            "`hsmstore audit` on it) before restoring; --force does not override this"
        )


@contextmanager
def _dev_token_lock(data_dir: Path) -> Iterator[None]:
    """The lock ``ensure_dev_token`` takes at every start (hsm/devtoken.py)."""
    softhsm = data_dir / SOFTHSM_DIRECTORY
    softhsm.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(softhsm / DEV_TOKEN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------ shared


def _require_dev_token(settings: Settings) -> None:
    if not settings.uses_dev_token:
        raise Refused(
            "pkcs11_module is set, and backup/restore handle only the dev SoftHSM2 token under the "
            "data dir: back up that HSM with its own means (CloudHSM: cluster backups) and the DB "
            f"with its own tools ({OPERATIONS_DOC})"
        )


def _hsmstore_version() -> str:
    try:
        return metadata.version("hsmstore")
    except metadata.PackageNotFoundError:
        return "unknown"
