"""The metadata DB is the owner's only (0600) wherever ``--db`` points, with its -wal/-shm (issue 14).

A real server on a SQLite file outside its data directory (so the data
directory's 0700 does not hide it): a new file is made 0600, and an existing
one with a wider mode is tightened at start, in one log line. The server runs
under the usual umask 022, with which SQLite alone makes a new file 0644.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.integration.harness import ServerProcess

pytestmark = pytest.mark.integration

TIMEOUT = 10


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def start_server(data_dir: Path, db: Path) -> ServerProcess:
    with usual_umask():
        return ServerProcess(data_dir, extra_args=["--db", f"sqlite:///{db}"]).start()


def test_a_new_db_outside_the_data_dir_and_its_wal_files_are_0600(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "metadata.db"
    db.parent.mkdir()
    server = start_server(tmp_path / "data", db)
    try:
        server.stub.CreateKey(pb.CreateKeyRequest(description="a write"), timeout=TIMEOUT)
        files = {path.name: mode_of(path) for path in db.parent.iterdir()}
    finally:
        server.stop()
    assert {"metadata.db", "metadata.db-wal", "metadata.db-shm"} <= set(files), files
    assert set(files.values()) == {0o600}, {name: oct(mode) for name, mode in files.items()}


def test_an_existing_db_readable_by_others_is_tightened_at_start_and_said(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "metadata.db"
    db.parent.mkdir()
    db.touch()  # an empty SQLite database, as an earlier hsmstore left it: 0644
    db.chmod(0o644)
    server = start_server(tmp_path / "data", db)
    try:
        server.stub.ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        mode = mode_of(db)
    finally:
        server.stop()
    assert mode == 0o600, oct(mode)
    said = [line for line in server.output if "now 0600" in line]
    assert len(said) == 1, server.output
    assert f"{db} (0644)" in said[0]
