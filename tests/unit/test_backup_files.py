"""The file-level rules of ``hsmstore backup`` / ``restore``, on temporary files (no token, no server).

The drill with a real server and token is tests/integration/test_backup_restore.py.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hsmstore.cli.backup_manifest import BackupInvalid, pack, unpack, verify_backup, write_manifest
from hsmstore.cli.data_dir_locks import lock_holders
from hsmstore.hsm.devtoken_backup import copy_dev_token
from hsmstore.store.backup import copy_spool, install_sqlite, snapshot_sqlite


def make_backup(root: Path) -> str:
    (root / "softhsm").mkdir(parents=True)
    (root / "hsmstore.db").write_bytes(b"db")
    (root / "softhsm" / "user.pin").write_bytes(b"pin\n")
    return write_manifest(
        root, created="2026-01-01T00:00:00Z", hsmstore_version="0", schema_revision="0007", token_label="t"
    )[1]


def test_a_backup_verifies_against_its_manifest_and_the_printed_digest(tmp_path: Path) -> None:
    digest = make_backup(tmp_path)
    manifest = verify_backup(tmp_path, digest)
    assert [f.path for f in manifest.files] == ["hsmstore.db", "softhsm/user.pin"]
    assert manifest.schema_revision == "0007"


def test_an_archive_member_outside_the_backup_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo("../outside")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(BackupInvalid, match="not a path inside the backup"):
        unpack(archive, tmp_path / "staging")
    assert not (tmp_path / "outside").exists()


def test_an_archive_link_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("hsmstore.db")
        member.type = tarfile.SYMTYPE
        member.linkname = "/etc/passwd"
        tar.addfile(member)
    with pytest.raises(BackupInvalid, match="not a regular file"):
        unpack(archive, tmp_path / "staging")


def test_an_archive_round_trip_keeps_every_file_and_mode_0600(tmp_path: Path) -> None:
    digest = make_backup(tmp_path / "backup")
    pack(tmp_path / "backup", tmp_path / "backup.tgz", "gz")
    assert (tmp_path / "backup.tgz").stat().st_mode & 0o777 == 0o600
    unpack(tmp_path / "backup.tgz", tmp_path / "staging")
    verify_backup(tmp_path / "staging", digest)
    assert (tmp_path / "staging" / "softhsm" / "user.pin").stat().st_mode & 0o777 == 0o600


def test_the_spool_copy_leaves_out_a_line_still_being_written(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "host-1-a.jsonl").write_bytes(b'{"a":1}\n{"b":2}\n{"unfinis')
    (spool / "quarantine").mkdir()
    (spool / "quarantine" / "host-1-a.jsonl.0").write_bytes(b"torn")
    copied = copy_spool(spool, tmp_path / "copy")
    assert sorted(map(str, copied)) == ["host-1-a.jsonl", "quarantine/host-1-a.jsonl.0"]
    assert (tmp_path / "copy" / "host-1-a.jsonl").read_bytes() == b'{"a":1}\n{"b":2}\n'


def test_the_db_copy_is_one_self_contained_file_with_its_schema_revision(tmp_path: Path) -> None:
    source = tmp_path / "live.db"
    live = sqlite3.connect(source)
    live.execute("PRAGMA journal_mode = WAL")
    live.execute("CREATE TABLE alembic_version (version_num TEXT)")
    live.execute("INSERT INTO alembic_version VALUES ('0007')")
    live.commit()  # left in the -wal: the live connection stays open, as a server's would
    try:
        assert snapshot_sqlite(source, tmp_path / "copy.db") == "0007"
    finally:
        live.close()
    assert not (tmp_path / "copy.db-wal").exists()
    assert (tmp_path / "copy.db").stat().st_mode & 0o777 == 0o600


def test_installing_a_db_sets_the_old_one_and_its_wal_aside(tmp_path: Path) -> None:
    target = tmp_path / "hsmstore.db"
    target.write_bytes(b"old")
    (tmp_path / "hsmstore.db-wal").write_bytes(b"old wal")
    (tmp_path / "new.db").write_bytes(b"new")
    aside = install_sqlite(tmp_path / "new.db", target, ".replaced-x")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in aside) == ["hsmstore.db.replaced-x", "hsmstore.db.replaced-x-wal"]
    assert not (tmp_path / "hsmstore.db-wal").exists()


def test_the_token_copy_leaves_out_an_object_whose_attributes_are_not_written_yet(tmp_path: Path) -> None:
    token = tmp_path / "data" / "softhsm" / "tokens" / "uuid"
    token.mkdir(parents=True)
    (tmp_path / "data" / "softhsm" / "user.pin").write_text("1234\n")
    (token / "token.object").write_bytes(b"t" * 64)
    (token / "done.object").write_bytes(b"g" * 8 + b"attributes")
    (token / "done.lock").write_bytes(b"")
    (token / "new.object").write_bytes(b"g" * 8)  # its generation number only
    copied = copy_dev_token(tmp_path / "data", tmp_path / "copy")
    assert sorted(p.name for p in copied) == ["done.lock", "done.object", "token.object", "user.pin"]
    assert (tmp_path / "copy" / "user.pin").stat().st_mode & 0o777 == 0o600


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_spool_locked_by_another_process_names_that_process(tmp_path: Path) -> None:
    spool = tmp_path / "a.jsonl"
    spool.write_bytes(b"")
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(spool)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "locked\n"
        assert lock_holders([spool], [spool]) == {writer.pid: [spool]}
    finally:
        writer.communicate("", timeout=10)
    assert lock_holders([spool], [spool]) == {}
