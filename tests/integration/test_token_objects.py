"""What the token holds, checked with OpenSC's pkcs11-tool, not with our own code."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import (
    DEV_TOKEN_LABEL,
    ControlledClock,
    ServerProcess,
    reason_of,
    wait_until,
)

pytestmark = pytest.mark.integration

OBJECT_HEADER = "Secret Key Object"


def secret_key_objects(server: ServerProcess) -> list[dict[str, str]]:
    listing = server.pkcs11_tool("--list-objects", "--type", "secrkey")
    assert listing.returncode == 0, listing.stderr
    objects: list[dict[str, str]] = []
    for line in listing.stdout.splitlines():
        if line.startswith(OBJECT_HEADER):
            objects.append({"header": line})
        elif objects and ":" in line:
            name, _, value = line.strip().partition(":")
            objects[-1][name.strip()] = value.strip()
    return objects


def test_every_key_on_the_token_is_sensitive_and_never_extractable(server: ServerProcess) -> None:
    key_ids = [server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id for _ in range(3)]
    objects = secret_key_objects(server)
    labels = {obj.get("label", "") for obj in objects}
    for key_id in key_ids:
        assert f"hsmstore/{key_id}/v1" in labels
    assert objects, "the token lists no secret keys"
    for obj in objects:
        assert obj["header"].startswith("Secret Key Object; AES length 32"), obj
        access = [flag.strip() for flag in obj["Access"].split(",")]
        assert {"sensitive", "always sensitive", "never extractable"} <= set(access), obj
        assert "extractable" not in access, obj
        usage = {flag.strip() for flag in obj["Usage"].split(",")}
        assert usage == {"encrypt", "decrypt"}, obj


def test_reading_a_key_value_off_the_token_fails(server: ServerProcess) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    obj = next(o for o in secret_key_objects(server) if o.get("label") == f"hsmstore/{key_id}/v1")
    object_id = re.sub(r"\s", "", obj["ID"])
    read = server.pkcs11_tool("--read-object", "--type", "secrkey", "--id", object_id, "-o", "/dev/null")
    assert read.returncode != 0
    assert "CKR_ATTRIBUTE_SENSITIVE" in read.stdout + read.stderr


def test_a_key_whose_token_object_is_gone_is_unavailable(server: ServerProcess) -> None:
    stub = server.stub
    key_id = stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")).ciphertext_blob
    obj = next(o for o in secret_key_objects(server) if o.get("label") == f"hsmstore/{key_id}/v1")
    deleted = server.pkcs11_tool("--delete-object", "--type", "secrkey", "--id", re.sub(r"\s", "", obj["ID"]))
    assert deleted.returncode == 0, deleted.stderr
    for call in (
        lambda: stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")),
        lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert reason_of(raised.value) == "KeyUnavailableException"
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]


def test_a_new_key_version_cannot_be_changed_on_the_token(server: ServerProcess) -> None:
    """Issue 14, item 8: CKA_MODIFIABLE False, so no usage can be switched on with the user PIN."""
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    obj = next(o for o in secret_key_objects(server) if o.get("label") == f"hsmstore/{key_id}/v1")
    object_id = re.sub(r"\s", "", obj["ID"])
    changed = server.pkcs11_tool("--type", "secrkey", "--id", object_id, "--set-id", "01")
    assert changed.returncode != 0
    assert "C_SetAttributeValue failed" in changed.stderr and "0x1b" in changed.stderr  # ACTION_PROHIBITED
    assert server.stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")).ciphertext_blob


def make_object(server: ServerProcess, token_id_hex: str, label: str) -> None:
    """An AES key version object put on the token behind the server's back (pkcs11-tool)."""
    made = server.pkcs11_tool(
        "--keygen", "--key-type", "AES:32", "--sensitive", "--label", label, "--id", token_id_hex
    )
    assert made.returncode == 0, made.stderr


def key_labels(server: ServerProcess) -> set[str]:
    """Labels of the key version objects (the audit seal key is another secret key)."""
    labels = {o.get("label", "") for o in secret_key_objects(server)}
    return {label for label in labels if re.fullmatch(r"hsmstore/[^/]+/v\d+", label)}


def tombstones(db_path: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db_path) as connection:
        rows = connection.execute("SELECT hex(token_id), key_id, version FROM abandoned_token_objects")
        return [(token_id.lower(), key_id, version) for token_id, key_id, version in rows]


def test_an_object_left_by_a_killed_create_key_is_destroyed_by_the_sweep_after_the_grace(
    fresh_data_dir: Path,
) -> None:
    """Issue 14, item 9: CreateKey killed after its row, recovery rolls the row back and records
    the token id; the object the killed process was still writing lands afterwards. The sweep
    destroys it once seen for the grace period (60 s on the server's test clock), and the
    tombstone goes with it; the key made before the crash is untouched."""
    clock = ControlledClock(fresh_data_dir.parent / "clock")
    first = ServerProcess(fresh_data_dir).start()
    survivor = first.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    blob = first.stub.Encrypt(pb.EncryptRequest(key_id=survivor, plaintext=b"kept")).ciphertext_blob
    first.stop()
    crashing = ServerProcess(
        fresh_data_dir, extra_env={**clock.env, "HSMSTORE_FAILPOINT": "create_key.after_db_insert"}
    ).start()
    with pytest.raises(grpc.RpcError):
        crashing.stub.CreateKey(pb.CreateKeyRequest())
    assert crashing.wait() == -9, "the failpoint did not kill the server"
    with sqlite3.connect(crashing.db_path) as connection:
        [(key_id, token_id)] = connection.execute(
            "SELECT key_id, hex(token_id) FROM key_versions WHERE key_id != ?", (survivor,)
        ).fetchall()
    token_id = token_id.lower()

    offset = 120.0  # the interrupted CreateKey is past the recovery grace at the restart
    clock.set(offset)
    server = ServerProcess(
        fresh_data_dir,
        extra_args=["--jobs-interval-seconds", "0.5"],
        extra_env={**clock.env, "HSMSTORE_RECOVERY_GRACE_SECONDS": "60"},
    ).start()
    try:
        assert tombstones(server.db_path) == [(token_id, key_id, 1)]
        junk_label = f"hsmstore/{key_id}/v1"
        make_object(server, token_id, junk_label)

        def time_passes_and_the_object_is_gone() -> bool:
            nonlocal offset
            offset += 30
            clock.set(offset)
            return junk_label not in key_labels(server)

        wait_until(time_passes_and_the_object_is_gone, 60)
        wait_until(lambda: tombstones(server.db_path) == [], 20)
        assert any(f"destroyed junk token object {token_id}" in line for line in server.output)
        assert key_labels(server) == {f"hsmstore/{survivor}/v1"}
        assert server.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)).plaintext == b"kept"
    finally:
        server.stop()


def test_a_server_on_a_fresh_db_leaves_a_token_of_live_keys_alone_and_says_so(
    fresh_data_dir: Path, tmp_path: Path
) -> None:
    """A wrong --db (a typo makes a fresh empty SQLite DB) against the production token, no
    grace at all: not one key is destroyed, one warning names the cause, and the keys work
    with the right DB again."""
    production = ServerProcess(fresh_data_dir).start()
    key_ids = [production.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id for _ in range(3)]
    production.stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_ids[0]))
    blobs = [
        production.stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"data")).ciphertext_blob
        for key_id in key_ids
    ]
    labels = key_labels(production)
    assert len(labels) == 4
    production.stop()

    wrong_db = ServerProcess(
        fresh_data_dir,
        extra_args=["--db", f"sqlite:///{tmp_path / 'typo.db'}", "--jobs-interval-seconds", "0.5"],
        extra_env={"HSMSTORE_RECOVERY_GRACE_SECONDS": "0"},
    ).start()
    try:

        def swept() -> bool:
            return any("does not know" in line or "destroyed junk" in line for line in wrong_db.output)

        wait_until(swept, 30)
        assert key_labels(wrong_db) == labels, "the sweep destroyed keys this DB does not know"
        [warning] = [line for line in wrong_db.output if "this metadata DB does not know" in line]
        assert "4 hsmstore key objects" in warning and "is --db the DB for this token?" in warning
    finally:
        wrong_db.stop()
    assert not any("destroyed junk" in line for line in wrong_db.output)

    again = ServerProcess(fresh_data_dir).start()
    try:
        for blob in blobs:
            assert again.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)).plaintext == b"data"
    finally:
        again.stop()


# Replaces a version's object by one made the way versions were before objects were locked
# (CKA_MODIFIABLE True), then switches CKA_DERIVE on with the user PIN: issue 14's attack.
WIDEN_SCRIPT = """
import sys
import pkcs11
from pkcs11 import Attribute, KeyType
from hsmstore.hsm import templates

module, token_label, pin_file, label = sys.argv[1:]
session = pkcs11.lib(module).get_token(token_label=token_label).open(
    rw=True, user_pin=open(pin_file).read().strip()
)
[old] = list(session.get_objects({Attribute.LABEL: label}))
token_id = bytes(old[Attribute.ID])
old.destroy()
key = session.generate_key(
    KeyType.AES, 256, store=True, capabilities=0,
    template=templates.key_version_template(token_id, label, lock_object=False),
)
key[Attribute.DERIVE] = True
session.close()
"""


def test_a_version_widened_on_the_token_is_refused_after_a_restart_and_audited(fresh_data_dir: Path) -> None:
    from hsmstore.hsm.devtoken import find_softhsm_module

    first = ServerProcess(fresh_data_dir).start()
    widened, intact = (first.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id for _ in range(2))
    blob = first.stub.Encrypt(pb.EncryptRequest(key_id=intact, plaintext=b"kept")).ciphertext_blob
    first.stop()
    widen = subprocess.run(
        [
            sys.executable,
            "-c",
            WIDEN_SCRIPT,
            find_softhsm_module(),
            DEV_TOKEN_LABEL,
            str(fresh_data_dir / "softhsm" / "user.pin"),
            f"hsmstore/{widened}/v1",
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(first.softhsm_conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert widen.returncode == 0, widen.stderr

    restarted = ServerProcess(fresh_data_dir).start()
    try:
        stub = restarted.stub
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as raised:
                stub.Encrypt(pb.EncryptRequest(key_id=widened, plaintext=b"x"))
            assert reason_of(raised.value) == "KeyUnavailableException"
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)).plaintext == b"kept"
        refusals = [line for line in restarted.output if "refusing the key version object" in line]
        assert len(refusals) == 1 and "DERIVE=True" in refusals[0]

        def refused_encrypts() -> int:
            page = pb_grpc.AuditStub(restarted.channel).LookupEvents(
                pb.LookupEventsRequest(
                    lookup_attributes=[
                        pb.LookupAttribute(attribute_key="EventName", attribute_value="Encrypt")
                    ],
                    max_results=50,
                )
            )
            events = [json.loads(event.cloud_trail_event) for event in page.events]
            return sum(1 for e in events if e.get("errorCode") == "KeyUnavailableException")

        wait_until(lambda: refused_encrypts() == 2, 30)
    finally:
        restarted.stop()
