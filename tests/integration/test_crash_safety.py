"""CreateKey killed at each step between the DB and the token leaves nothing half-made."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.integration.harness import TEST_HOOKS, ServerProcess
from tests.integration.test_token_objects import secret_key_objects

pytestmark = pytest.mark.integration

FAILPOINTS = ["create_key.after_db_insert", "create_key.after_token_create"]
IMMEDIATE_RECOVERY = {"HSMSTORE_RECOVERY_GRACE_SECONDS": "0"}


def key_rows(db_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db_path) as connection:
        return connection.execute("SELECT key_id, key_state FROM keys ORDER BY key_id").fetchall()


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_create_key_killed_midway_leaves_no_orphan_and_no_keyless_row(
    fresh_data_dir: Path, failpoint: str
) -> None:
    first = ServerProcess(fresh_data_dir, extra_env=IMMEDIATE_RECOVERY).start()
    survivor = first.stub.CreateKey(pb.CreateKeyRequest(description="made before the crash")).key_metadata
    first.stop()

    crashing = ServerProcess(
        fresh_data_dir, extra_env={**IMMEDIATE_RECOVERY, **TEST_HOOKS, "HSMSTORE_FAILPOINT": failpoint}
    ).start()
    with pytest.raises(grpc.RpcError) as raised:
        crashing.stub.CreateKey(pb.CreateKeyRequest(description="interrupted"))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert crashing.wait() == -9, "the failpoint did not kill the server"
    assert ("CREATING",) in {(state,) for _, state in key_rows(first.db_path)}, (
        "the crash left no trace to recover"
    )

    restarted = ServerProcess(fresh_data_dir, extra_env=IMMEDIATE_RECOVERY).start()
    try:
        listed = [entry.key_id for entry in restarted.stub.ListKeys(pb.ListKeysRequest()).keys]
        assert listed == [survivor.key_id]
        assert key_rows(restarted.db_path) == [(survivor.key_id, "ENABLED")]
        labels = [obj.get("label") for obj in secret_key_objects(restarted)]
        assert labels == [f"hsmstore/{survivor.key_id}/v1"]
        blob = restarted.stub.Encrypt(pb.EncryptRequest(key_id=survivor.key_id, plaintext=b"still here"))
        decrypted = restarted.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob.ciphertext_blob))
        assert decrypted.plaintext == b"still here"
    finally:
        restarted.stop()
