"""The manifest of an ``hsmstore backup``, its checksums, and the archive forms of a backup.

Issue 16, Deliver 6: "with a manifest and checksums". A backup is a directory
(or a ``.tar``/``.tar.gz``/``.tgz`` archive of one)::

    manifest.json                 this module's manifest (below)
    hsmstore.db                   the SQLite metadata DB (store/backup.py)
    softhsm/user.pin              the dev token's user PIN, 0600 (hsm/devtoken_backup.py)
    softhsm/tokens/<uuid>/...     the dev token's directory
    audit-spool/...               the audit spool's whole lines

``manifest.json``::

    {"format": "hsmstore-backup", "version": 1, "created": "2026-01-02T03:04:05Z",
     "hsmstore_version": "0.1.0", "schema_revision": "0007", "token_label": "hsmstore-dev",
     "files": [{"path": "hsmstore.db", "size": 172032, "sha256": "<hex>"}, ...]}

A restore checks every file against it before anything is installed: a file
missing, changed (size or SHA-256), added, or outside the backup (an absolute
path, ``..``, a link or a device in an archive) refuses the whole backup.
The checksums find damage and edits to the files; someone who can rewrite the
files can rewrite the manifest too, so ``hsmstore backup`` prints the
manifest's own SHA-256, which ``restore --manifest-sha256`` checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

MANIFEST_NAME = "manifest.json"
FORMAT = "hsmstore-backup"
FORMAT_VERSION = 1
ARCHIVE_SUFFIXES = {".tar": "", ".tar.gz": "gz", ".tgz": "gz"}
_CHUNK = 1024 * 1024


class BackupInvalid(ValueError):
    """The backup does not match its manifest (or has none); the message names the file."""


@dataclass(frozen=True)
class BackupFile:
    path: str  # relative, "/"-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    created: str
    hsmstore_version: str
    schema_revision: str | None
    token_label: str
    files: tuple[BackupFile, ...]

    def to_json(self) -> bytes:
        document: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created": self.created,
            "hsmstore_version": self.hsmstore_version,
            "schema_revision": self.schema_revision,
            "token_label": self.token_label,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(document, indent=2, sort_keys=False).encode("utf-8") + b"\n"


def write_manifest(
    root: Path,
    *,
    created: str,
    hsmstore_version: str,
    schema_revision: str | None,
    token_label: str,
) -> tuple[Manifest, str]:
    """Checksum every file under ``root`` into ``root/manifest.json``; the manifest and its SHA-256."""
    files = tuple(
        BackupFile(relative, path.stat().st_size, file_sha256(path))
        for relative, path in sorted(_regular_files(root).items())
    )
    manifest = Manifest(created, hsmstore_version, schema_revision, token_label, files)
    data = manifest.to_json()
    fd = os.open(root / MANIFEST_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return manifest, hashlib.sha256(data).hexdigest()


def verify_backup(root: Path, expected_manifest_sha256: str | None = None) -> Manifest:
    """The manifest of the backup at ``root``, once every file matches it; else :class:`BackupInvalid`."""
    manifest_path = root / MANIFEST_NAME
    try:
        data = manifest_path.read_bytes()
    except FileNotFoundError:
        raise BackupInvalid(f"{MANIFEST_NAME} is missing: this is not an hsmstore backup") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_manifest_sha256 is not None and digest != expected_manifest_sha256.lower():
        raise BackupInvalid(
            f"{MANIFEST_NAME} has SHA-256 {digest}, not the {expected_manifest_sha256} given "
            "(--manifest-sha256): the manifest was changed or this is another backup"
        )
    manifest = parse_manifest(data)
    present = _regular_files(root)
    present.pop(MANIFEST_NAME, None)
    for entry in manifest.files:
        path = present.pop(entry.path, None)
        if path is None:
            raise BackupInvalid(f"{entry.path} is listed in {MANIFEST_NAME} but missing from the backup")
        size = path.stat().st_size
        if size != entry.size:
            raise BackupInvalid(
                f"{entry.path} is {size} bytes, the manifest says {entry.size}: the backup was changed"
            )
        if file_sha256(path) != entry.sha256:
            raise BackupInvalid(
                f"{entry.path} does not match its SHA-256 in {MANIFEST_NAME}: the backup was changed"
            )
    if present:
        raise BackupInvalid(
            f"{sorted(present)[0]} is in the backup but not in {MANIFEST_NAME}: the backup was changed"
        )
    return manifest


def parse_manifest(data: bytes) -> Manifest:
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise BackupInvalid(f"{MANIFEST_NAME} is not an hsmstore backup manifest")
        if document.get("version") != FORMAT_VERSION:
            raise BackupInvalid(
                f"{MANIFEST_NAME} is format version {document.get('version')!r}; this hsmstore reads "
                f"version {FORMAT_VERSION} (restore it with the hsmstore that made it)"
            )
        files = tuple(
            BackupFile(_safe_relative(str(item["path"])), int(item["size"]), str(item["sha256"]).lower())
            for item in document["files"]
        )
        revision = document.get("schema_revision")
        return Manifest(
            str(document["created"]),
            str(document.get("hsmstore_version", "")),
            None if revision is None else str(revision),
            str(document.get("token_label", "")),
            files,
        )
    except (ValueError, KeyError, TypeError) as error:
        if isinstance(error, BackupInvalid):
            raise
        raise BackupInvalid(f"{MANIFEST_NAME} cannot be read ({error}): the backup was changed") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def archive_compression(path: Path) -> str | None:
    """``""`` or ``"gz"`` for an archive name (``.tar``, ``.tar.gz``, ``.tgz``); None for a directory."""
    name = path.name.lower()
    for suffix, compression in ARCHIVE_SUFFIXES.items():
        if name.endswith(suffix):
            return compression
    return None


def pack(root: Path, archive: Path, compression: str) -> None:
    """Write the backup at ``root`` as a tar archive (0600), the manifest first."""
    names = sorted(_regular_files(root), key=lambda name: (name != MANIFEST_NAME, name))
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw:
        mode = "w:gz" if compression == "gz" else "w"
        with tarfile.open(fileobj=raw, mode=mode) as tar:  # type: ignore[call-overload]
            for name in names:
                tar.add(root / name, arcname=name, recursive=False)
        raw.flush()
        os.fsync(raw.fileno())


def unpack(source: Path, root: Path) -> None:
    """Copy the backup at ``source`` (a directory or an archive) into the new directory ``root``.

    Only regular files are taken, each to a path checked to stay inside
    ``root``; a link, device or unsafe name refuses the backup. Nothing is
    trusted yet: :func:`verify_backup` checks the copy.
    """
    if source.is_dir():
        for relative, path in _regular_files(source).items():
            _write(root, relative, _chunks_of(path))
        return
    if archive_compression(source) is None or not source.is_file():
        raise BackupInvalid(f"{source} is neither a backup directory nor a .tar/.tar.gz/.tgz archive")
    try:
        with tarfile.open(source, mode="r:*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BackupInvalid(
                        f"{member.name} in {source} is not a regular file: the backup was changed"
                    )
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise BackupInvalid(f"{member.name} in {source} cannot be read")
                with extracted:
                    _write(root, _safe_relative(member.name), _chunks_of_stream(extracted))
    except (tarfile.TarError, EOFError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise BackupInvalid(f"{source} does not exist") from None
        raise BackupInvalid(f"{source} cannot be read as a tar archive ({error})") from None


def _regular_files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` by its relative "/"-path; a link or other file refuses."""
    found: dict[str, Path] = {}
    for directory, subdirectories, names in os.walk(root):
        for name in [*names, *subdirectories]:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise BackupInvalid(f"{relative} is not a regular file: the backup was changed")
            if path.is_file():
                found[relative] = path
    return found


def _safe_relative(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(part in ("..", "") for part in path.parts):
        raise BackupInvalid(f"{name!r} is not a path inside the backup: the backup was changed")
    return path.as_posix().removeprefix("./")


def _chunks_of(path: Path) -> Iterable[bytes]:
    with path.open("rb") as handle:
        yield from _chunks_of_stream(handle)


def _chunks_of_stream(stream: IO[bytes]) -> Iterable[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _write(root: Path, relative: str, chunks: Iterable[bytes]) -> None:
    target = root / relative
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
