"""What the token holds, checked with OpenSC's pkcs11-tool, not with our own code."""

from __future__ import annotations

import re

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.integration.harness import ServerProcess, reason_of

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
