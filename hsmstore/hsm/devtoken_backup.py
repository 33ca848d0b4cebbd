"""Copy the dev SoftHSM2 token out of a data directory while it is in use, and put a copy back.

``hsmstore backup`` / ``restore`` (issue 16, "Backups": "nothing for SQLite or
the token, though losing either loses every key"). The dev token is a
directory of files (hsm/devtoken.py)::

    <data_dir>/softhsm/tokens/<uuid>/token.object, token.lock, generation
    <data_dir>/softhsm/tokens/<uuid>/<object uuid>.object, <object uuid>.lock
    <data_dir>/softhsm/user.pin                 the user PIN, mode 0600
    <data_dir>/softhsm/softhsm2.conf            names the token directory by its absolute path

How SoftHSM2 2.6 writes them (``src/lib/object_store/File.cpp``,
``ObjectFile.cpp``): a file is rewritten in place (truncate, then write) under
an ``fcntl`` write lock on the whole file, and readers take a read lock; an
object's attributes are set in a transaction that holds a write lock on its
``.lock`` file. So a copy that takes a read lock on ``<object>.lock`` and then
on ``<object>.object`` never sees a torn or half-set object: it waits (for the
few milliseconds a write takes) until the writer is done. The one state it
can still see is an object whose file was created but whose attributes are
not written yet (the 8-byte generation number alone); such an object belongs
to a key whose creation had not finished, so no ACTIVE key version names it,
and it is left out (:data:`EMPTY_OBJECT_BYTES`).

``softhsm2.conf`` is not copied: its ``directories.tokendir`` is an absolute
path, so :func:`install_dev_token` writes a new one for the data directory the
token is restored into. The PIN file is copied with mode 0600 and never read
here, let alone printed.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from hsmstore.hsm.devtoken import render_conf

SOFTHSM_DIRECTORY = "softhsm"
TOKENS_DIRECTORY = "tokens"
PIN_FILE = "user.pin"
CONF_FILE = "softhsm2.conf"
OBJECT_SUFFIX = ".object"
LOCK_SUFFIX = ".lock"
TOKEN_OBJECT = "token.object"  # noqa: S105 - a file name, not a secret
# An object file holding only its generation number (an unsigned long, 8 bytes): created,
# attributes not yet written. No finished key version can be such an object (module docstring).
EMPTY_OBJECT_BYTES = 8
_CHUNK = 1024 * 1024


class DevTokenBackupError(RuntimeError):
    """The dev token cannot be copied or installed; the message names the file and the fix."""


def dev_token_present(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a dev token (a token directory and its PIN file)."""
    softhsm = data_dir / SOFTHSM_DIRECTORY
    return (softhsm / PIN_FILE).is_file() and any((softhsm / TOKENS_DIRECTORY).glob(f"*/{TOKEN_OBJECT}"))


def copy_dev_token(data_dir: Path, destination: Path) -> list[Path]:
    """Copy the token directory and the PIN file of ``data_dir`` to ``destination`` (made here).

    Safe while servers use the token (module docstring). Returns the copied
    files, relative to ``destination``. Raises :class:`DevTokenBackupError`
    if the data directory holds no dev token.
    """
    softhsm = data_dir / SOFTHSM_DIRECTORY
    if not dev_token_present(data_dir):
        raise DevTokenBackupError(
            f"no dev token under {softhsm} (expected {TOKENS_DIRECTORY}/<uuid>/{TOKEN_OBJECT} and "
            f"{PIN_FILE}); a token on --pkcs11-module is backed up by its HSM's own means "
            "(docs/operations.md)"
        )
    copied: list[Path] = []
    _make_private_directory(destination)
    _copy_private(softhsm / PIN_FILE, destination / PIN_FILE)
    copied.append(Path(PIN_FILE))
    tokens = softhsm / TOKENS_DIRECTORY
    for token_dir in sorted(p for p in tokens.iterdir() if p.is_dir()):
        target_dir = destination / TOKENS_DIRECTORY / token_dir.name
        _make_private_directory(target_dir)
        for source in sorted(p for p in token_dir.iterdir() if p.is_file()):
            if _copy_token_file(source, target_dir / source.name):
                copied.append(target_dir.relative_to(destination) / source.name)
    return copied


def install_dev_token(staged: Path, data_dir: Path, set_aside_suffix: str) -> list[Path]:
    """Make the token staged at ``staged`` (a :func:`copy_dev_token` copy) the dev token of ``data_dir``.

    An existing token directory and PIN file are renamed to
    ``<name><set_aside_suffix>``, never deleted: they may hold the only copy
    of keys made after the backup. A new ``softhsm2.conf`` names this data
    directory's token directory. Directories 0700, files 0600, as
    ``ensure_dev_token`` makes them. Returns what was set aside.
    """
    softhsm = data_dir.resolve() / SOFTHSM_DIRECTORY
    _make_private_directory(softhsm)
    tokens = softhsm / TOKENS_DIRECTORY
    set_aside: list[Path] = []
    for old in (tokens, softhsm / PIN_FILE):
        if old.exists():
            aside = old.with_name(old.name + set_aside_suffix)
            os.replace(old, aside)
            set_aside.append(aside)
    os.replace(staged / TOKENS_DIRECTORY, tokens)
    os.replace(staged / PIN_FILE, softhsm / PIN_FILE)
    for path in [tokens, *tokens.rglob("*")]:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.chmod(softhsm / PIN_FILE, 0o600)
    conf = softhsm / CONF_FILE
    temporary = softhsm / (CONF_FILE + ".restoring")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(render_conf(tokens))
    os.replace(temporary, conf)
    return set_aside


def _copy_token_file(source: Path, target: Path) -> bool:
    """Copy one file of a token directory under SoftHSM2's own locks; False if left out."""
    try:
        with ExitStack() as locks:
            companion = source.with_suffix(LOCK_SUFFIX)
            if source.suffix == OBJECT_SUFFIX and companion.is_file():
                locks.enter_context(_read_locked(companion))  # waits out an attribute transaction
            fd = locks.enter_context(_read_locked(source))
            size = os.fstat(fd).st_size
            if source.suffix == OBJECT_SUFFIX and source.name != TOKEN_OBJECT and size <= EMPTY_OBJECT_BYTES:
                return False  # being created: no finished key version is this object
            _copy_descriptor(fd, target)
    except FileNotFoundError:
        return False  # destroyed meanwhile (the reaper, a rollback): not needed by any ACTIVE version
    return True


@contextmanager
def _read_locked(path: Path) -> Iterator[int]:
    """``path`` open for reading under a whole-file ``fcntl`` read lock (SoftHSM2's lock kind).

    ``fcntl`` record locks, not ``flock``: SoftHSM2 uses ``fcntl(F_SETLKW)``,
    and the two kinds do not see each other on Linux. Closing the descriptor
    releases the lock.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


def _copy_descriptor(fd: int, target: Path) -> None:
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while chunk := os.read(fd, _CHUNK):
            os.write(out, chunk)
        os.fsync(out)
    finally:
        os.close(out)


def _copy_private(source: Path, target: Path) -> None:
    fd = os.open(source, os.O_RDONLY)
    try:
        _copy_descriptor(fd, target)
    finally:
        os.close(fd)


def _make_private_directory(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
