"""``hsmstore domain-keys rotate`` and ``status`` on a real server (issue 18, Deliver 3).

A ``wrapped`` server on SQLite and its dev token: the rotation makes a new domain key, every
version is re-wrapped under it, the old domain key is destroyed on the token (pkcs11-tool no
longer lists it), ciphertexts made before still decrypt, and ``status`` says when a deleted
version's blob became unusable everywhere.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.hsm.templates import DOMAIN_KEY_LABEL_PREFIX
from tests.integration.harness import ControlledClock, ServerProcess, wait_until
from tests.integration.test_token_objects import secret_key_objects

pytestmark = pytest.mark.integration

WRAPPED = ["--key-residency", "wrapped", "--jobs-interval-seconds", "0.2"]
CONTEXT = {"purpose": "domain-key-rotation"}
DAY = 86400


def hsmstore(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """The ``hsmstore`` CLI of this checkout, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def domain_key_rows(db_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db_path) as connection:
        return connection.execute(
            "SELECT domain_key_id, state FROM domain_keys ORDER BY created_at, domain_key_id"
        ).fetchall()


def wrapped_under(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as connection:
        rows = connection.execute(
            "SELECT wrapped_domain_key_id, COUNT(*) FROM key_versions "
            "WHERE wrapped_domain_key_id IS NOT NULL GROUP BY wrapped_domain_key_id"
        ).fetchall()
    return dict(rows)


def domain_key_labels(server: ServerProcess) -> set[str]:
    return {
        obj.get("label", "")
        for obj in secret_key_objects(server)
        if obj.get("label", "").startswith(DOMAIN_KEY_LABEL_PREFIX)
    }


def status(data_dir: Path) -> dict[str, Any]:
    shown = hsmstore("domain-keys", "status", "--data-dir", str(data_dir))
    assert shown.returncode == 0, shown.stderr
    document: dict[str, Any] = json.loads(shown.stdout)
    return document


def seal(server: ServerProcess, key_id: str, plaintext: bytes) -> bytes:
    request = pb.EncryptRequest(key_id=key_id, plaintext=plaintext, encryption_context=CONTEXT)
    return bytes(server.stub.Encrypt(request).ciphertext_blob)


def opened(server: ServerProcess, blob: bytes) -> bytes:
    request = pb.DecryptRequest(ciphertext_blob=blob, encryption_context=CONTEXT)
    return bytes(server.stub.Decrypt(request).plaintext)


def test_rotate_rewraps_every_version_and_destroys_the_old_domain_key(
    fresh_data_dir: Path, tmp_path: Path
) -> None:
    clock = ControlledClock(tmp_path / "clock")
    no_schedule = [*WRAPPED, "--domain-key-rotation-days", "365"]  # the clock moves 8 days below
    server = ServerProcess(fresh_data_dir, extra_args=no_schedule, extra_env=clock.env).start()
    try:
        [(first, state)] = domain_key_rows(server.db_path)
        assert state == "ACTIVE", "a wrapped server makes its domain key before serving"
        key_ids = [server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id for _ in range(12)]
        server.stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_ids[0]))
        sealed = {key_id: seal(server, key_id, key_id.encode()) for key_id in key_ids}
        doomed = key_ids[-1]
        server.stub.ScheduleKeyDeletion(
            pb.ScheduleKeyDeletionRequest(key_id=doomed, pending_window_in_days=7)
        )
        clock.set(8 * DAY)
        wait_until(lambda: doomed not in version_key_ids(server.db_path), timeout=30)
        assert wrapped_under(server.db_path) == {first: 12}  # 11 keys and a rotation
        assert domain_key_labels(server) == {DOMAIN_KEY_LABEL_PREFIX + first}
        pending = status(fresh_data_dir)
        [gone] = [entry for entry in pending["DeletedWrappedVersions"] if entry["KeyId"] == doomed]
        assert gone["DomainKeyId"] == first and gone["UnusableEverywhereSince"] == "pending next retirement"

        rotated = hsmstore(
            "domain-keys", "rotate", "--wait", "--data-dir", str(fresh_data_dir), env=clock.env
        )
        assert rotated.returncode == 0, rotated.stderr
        [(old, old_state), (new, new_state)] = domain_key_rows(server.db_path)
        assert (old, old_state, new_state) == (first, "DESTROYED", "ACTIVE")
        assert f"domain key {new} is ACTIVE" in rotated.stdout
        assert wrapped_under(server.db_path) == {new: 12}, "every version re-wrapped, none left behind"
        assert domain_key_labels(server) == {DOMAIN_KEY_LABEL_PREFIX + new}, "the old key is off the token"

        for key_id, blob in sealed.items():
            if key_id != doomed:
                assert opened(server, blob) == key_id.encode()
        after = seal(server, key_ids[0], b"after")
        assert opened(server, after) == b"after"

        shown = status(fresh_data_dir)
        states = {entry["DomainKeyId"]: entry for entry in shown["DomainKeys"]}
        assert states[first]["State"] == "DESTROYED" and states[first]["DestroyedAt"]
        assert states[new]["State"] == "ACTIVE" and states[new]["WrappedVersions"] == 12
        assert states[first]["DeletedVersions"] == 1
        [gone] = [entry for entry in shown["DeletedWrappedVersions"] if entry["KeyId"] == doomed]
        assert gone["UnusableEverywhereSince"] == states[first]["DestroyedAt"]
    finally:
        server.stop()


def version_key_ids(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as connection:
        return {row[0] for row in connection.execute("SELECT DISTINCT key_id FROM key_versions")}


def test_the_servers_retire_the_old_domain_key_after_a_rotation_without_wait(fresh_data_dir: Path) -> None:
    server = ServerProcess(fresh_data_dir, extra_args=WRAPPED).start()
    try:
        key_ids = [server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id for _ in range(5)]
        sealed = {key_id: seal(server, key_id, b"before") for key_id in key_ids}
        [(first, _)] = domain_key_rows(server.db_path)
        rotated = hsmstore("domain-keys", "rotate", "--data-dir", str(fresh_data_dir))
        assert rotated.returncode == 0, rotated.stderr
        assert "in the background" in rotated.stdout
        wait_until(lambda: [state for _, state in domain_key_rows(server.db_path)] == ["DESTROYED", "ACTIVE"])
        [new] = [key for key, state in domain_key_rows(server.db_path) if state == "ACTIVE"]
        assert wrapped_under(server.db_path) == {new: 5}
        assert domain_key_labels(server) == {DOMAIN_KEY_LABEL_PREFIX + new}
        assert first != new
        for blob in sealed.values():
            assert opened(server, blob) == b"before"
    finally:
        server.stop()


def test_a_scheduled_rotation_happens_when_the_active_key_is_old(
    fresh_data_dir: Path, tmp_path: Path
) -> None:
    clock = ControlledClock(tmp_path / "clock")
    server = ServerProcess(
        fresh_data_dir, extra_args=[*WRAPPED, "--domain-key-rotation-days", "7"], extra_env=clock.env
    ).start()
    try:
        key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        blob = seal(server, key_id, b"kept")
        clock.set(7 * DAY + 60)
        wait_until(lambda: [state for _, state in domain_key_rows(server.db_path)] == ["DESTROYED", "ACTIVE"])
        assert opened(server, blob) == b"kept"
        assert len(domain_key_labels(server)) == 1
    finally:
        server.stop()


def test_status_and_rotate_refuse_a_data_dir_without_a_db(tmp_path: Path) -> None:
    shown = hsmstore("domain-keys", "status", "--data-dir", str(tmp_path / "none"))
    assert shown.returncode == 2 and "no metadata DB" in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1
