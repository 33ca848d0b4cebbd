"""kill -9 at each step of CreateKey and of a rotation in the ``wrapped`` residency (issue 18):
after a restart no key is left without usable material, no version material is left on the
token (it only ever holds domain keys and the audit seal key), and the key works or is gone.

The steps of a rotation, and of a CreateKey with tags (core/keys/residency.py): the PENDING row
is committed (``*.after_db_insert``); the token wraps new material under the domain key and
destroys the session object (``*.after_wrap``); the blob is stored on the row, then the key or
rotation finishes (``*.after_token_create``). A CreateKey without tags or an alias wraps first
(``create_key.after_wrap``: nothing is written yet) and then commits the whole key at once
(``create_key.after_db_insert``: the key is whole, only the answer is lost).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.keys.material import parse_token_label
from tests.integration.harness import TEST_HOOKS, ServerProcess
from tests.integration.test_token_objects import secret_key_objects

pytestmark = pytest.mark.integration

WRAPPED = ["--key-residency", "wrapped"]
IMMEDIATE_RECOVERY = {"HSMSTORE_RECOVERY_GRACE_SECONDS": "0"}
STEPS = ["after_db_insert", "after_wrap", "after_token_create"]
ONE_WRITE_STEPS = ["after_wrap", "after_db_insert"]
TAGS = [pb.Tag(tag_key="team", tag_value="crash")]
CONTEXT = {"purpose": "crash"}


def version_rows(db_path: Path) -> list[tuple[str, int, str, str, bool]]:
    """(key id, version, state, residency, has a blob) of every version row."""
    with sqlite3.connect(db_path) as connection:
        rows = connection.execute(
            "SELECT key_id, version, state, residency, wrapped_material IS NOT NULL FROM key_versions "
            "ORDER BY key_id, version"
        ).fetchall()
    return [
        (key_id, version, state, residency, bool(blob)) for key_id, version, state, residency, blob in rows
    ]


def key_rows(db_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db_path) as connection:
        return connection.execute("SELECT key_id, key_state FROM keys ORDER BY key_id").fetchall()


def version_objects(server: ServerProcess) -> list[str]:
    """Labels of token objects holding key version material (``hsmstore/<key>/v<n>``)."""
    return [
        obj.get("label", "") for obj in secret_key_objects(server) if parse_token_label(obj.get("label", ""))
    ]


def seal(server: ServerProcess, key_id: str, plaintext: bytes) -> bytes:
    request = pb.EncryptRequest(key_id=key_id, plaintext=plaintext, encryption_context=CONTEXT)
    return bytes(server.stub.Encrypt(request).ciphertext_blob)


def opens(server: ServerProcess, blob: bytes) -> bytes:
    return bytes(
        server.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob, encryption_context=CONTEXT)).plaintext
    )


def crash_at(
    data_dir: Path, failpoint: str, call: str, key_id: str = "", tags: list[pb.Tag] | None = None
) -> None:
    crashing = ServerProcess(
        data_dir,
        extra_args=WRAPPED,
        extra_env={**IMMEDIATE_RECOVERY, **TEST_HOOKS, "HSMSTORE_FAILPOINT": failpoint},
    ).start()

    def interrupted() -> object:
        if call == "create":
            return crashing.stub.CreateKey(pb.CreateKeyRequest(description="interrupted", tags=tags or []))
        return crashing.stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))

    with pytest.raises(grpc.RpcError) as raised:
        interrupted()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert crashing.wait() == -9, "the failpoint did not kill the server"


def start_survivor(data_dir: Path) -> tuple[str, bytes]:
    first = ServerProcess(data_dir, extra_args=WRAPPED, extra_env=IMMEDIATE_RECOVERY).start()
    try:
        key_id = first.stub.CreateKey(
            pb.CreateKeyRequest(description="made before the crash")
        ).key_metadata.key_id
        assert version_rows(first.db_path) == [(key_id, 1, "ACTIVE", "WRAPPED", True)]
        assert version_objects(first) == [], "a wrapped version left an object on the token"
        return key_id, seal(first, key_id, b"before")
    finally:
        first.stop()


@pytest.mark.parametrize("step", ONE_WRITE_STEPS)
def test_create_key_killed_around_its_one_write_leaves_nothing_or_a_whole_key(
    fresh_data_dir: Path, step: str
) -> None:
    survivor, blob = start_survivor(fresh_data_dir)
    crash_at(fresh_data_dir, f"create_key.{step}", "create")
    rows = key_rows(fresh_data_dir / "hsmstore.db")
    assert "CREATING" not in {state for _, state in rows}

    restarted = ServerProcess(fresh_data_dir, extra_args=WRAPPED, extra_env=IMMEDIATE_RECOVERY).start()
    try:
        listed = sorted(k.key_id for k in restarted.stub.ListKeys(pb.ListKeysRequest()).keys)
        if step == "after_wrap":
            assert rows == [(survivor, "ENABLED")], "nothing may be written before the token step"
            assert listed == [survivor]
        else:
            assert len(rows) == 2 and {state for _, state in rows} == {"ENABLED"}
            assert listed == sorted(key_id for key_id, _ in rows)
        for key_id in listed:
            assert opens(restarted, seal(restarted, key_id, b"after")) == b"after"
        assert {row[2:] for row in version_rows(restarted.db_path)} == {("ACTIVE", "WRAPPED", True)}
        assert version_objects(restarted) == []
        assert opens(restarted, blob) == b"before"
    finally:
        restarted.stop()


@pytest.mark.parametrize("step", STEPS)
def test_create_key_with_tags_killed_midway_leaves_no_keyless_row_and_nothing_on_the_token(
    fresh_data_dir: Path, step: str
) -> None:
    survivor, blob = start_survivor(fresh_data_dir)
    crash_at(fresh_data_dir, f"create_key.{step}", "create", tags=TAGS)
    assert "CREATING" in {state for _, state in key_rows(fresh_data_dir / "hsmstore.db")}

    restarted = ServerProcess(fresh_data_dir, extra_args=WRAPPED, extra_env=IMMEDIATE_RECOVERY).start()
    try:
        assert [k.key_id for k in restarted.stub.ListKeys(pb.ListKeysRequest()).keys] == [survivor]
        assert key_rows(restarted.db_path) == [(survivor, "ENABLED")]
        assert version_rows(restarted.db_path) == [(survivor, 1, "ACTIVE", "WRAPPED", True)]
        assert version_objects(restarted) == []
        assert opens(restarted, blob) == b"before"
        assert opens(restarted, seal(restarted, survivor, b"after")) == b"after"
        made = restarted.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        assert opens(restarted, seal(restarted, made, b"new")) == b"new"
    finally:
        restarted.stop()


@pytest.mark.parametrize("step", STEPS)
def test_rotation_killed_midway_leaves_the_key_working(fresh_data_dir: Path, step: str) -> None:
    survivor, blob = start_survivor(fresh_data_dir)
    crash_at(fresh_data_dir, f"rotate.{step}", "rotate", survivor)
    assert len(version_rows(fresh_data_dir / "hsmstore.db")) == 2, "the crash left no trace to recover"

    restarted = ServerProcess(fresh_data_dir, extra_args=WRAPPED, extra_env=IMMEDIATE_RECOVERY).start()
    try:
        assert version_rows(restarted.db_path) == [(survivor, 1, "ACTIVE", "WRAPPED", True)]
        assert (
            list(restarted.stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=survivor)).rotations) == []
        )
        assert opens(restarted, blob) == b"before"
        restarted.stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=survivor))
        rotated = seal(restarted, survivor, b"after")
        assert opens(restarted, rotated) == b"after" and opens(restarted, blob) == b"before"
        assert [row[1:] for row in version_rows(restarted.db_path)] == [
            (1, "ACTIVE", "WRAPPED", True),
            (2, "ACTIVE", "WRAPPED", True),
        ]
        assert version_objects(restarted) == []
    finally:
        restarted.stop()
