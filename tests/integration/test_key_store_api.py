"""The symmetric KMS through the wire: a real server, SoftHSM2 token and SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.formats.blob import INVALID_CIPHERTEXT_MESSAGE
from tests.integration.harness import ServerProcess, reason_of

pytestmark = pytest.mark.integration


def expect_error(call: Callable[[], object], reason: str, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert reason_of(error) == reason, error.details()  # type: ignore[attr-defined]
    assert error.code() == code  # type: ignore[attr-defined]
    return error


def create_key(stub: pb_grpc.KeyStoreStub, description: str = "") -> pb.KeyMetadata:
    return stub.CreateKey(pb.CreateKeyRequest(description=description)).key_metadata


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> pb_grpc.KeyStoreStub:
    return server.stub


@pytest.fixture(scope="module")
def key(stub: pb_grpc.KeyStoreStub) -> pb.KeyMetadata:
    return create_key(stub, "integration key")


# ------------------------------------------------------------------ service


def test_reflection_lists_the_key_store_service(server: ServerProcess) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {service.name for response in responses for service in response.list_services_response.service}
    assert {"hsmstore.v1.KeyStore", "grpc.health.v1.Health"} <= names


def test_health_is_serving_once_token_and_db_answer(server: ServerProcess) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "hsmstore.v1.KeyStore"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------- keys


def test_create_key_returns_aws_key_metadata(key: pb.KeyMetadata) -> None:
    assert uuid.UUID(key.key_id)
    assert key.arn == f"arn:hsmstore:kms:local:local:key/{key.key_id}"
    assert key.aws_account_id == "local"
    assert (key.key_state, key.enabled) == ("ENABLED", True)
    assert (key.key_usage, key.key_spec, key.origin, key.key_manager) == (
        "ENCRYPT_DECRYPT",
        "SYMMETRIC_DEFAULT",
        "AWS_KMS",
        "CUSTOMER",
    )
    assert list(key.encryption_algorithms) == ["SYMMETRIC_DEFAULT"]
    assert key.description == "integration key"
    assert key.creation_date.seconds > 0
    assert not key.HasField("deletion_date")


def test_describe_key_accepts_key_id_and_arn(stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata) -> None:
    for identifier in (key.key_id, key.arn, key.key_id.upper()):
        assert stub.DescribeKey(pb.DescribeKeyRequest(key_id=identifier)).key_metadata.key_id == key.key_id


def test_describe_unknown_key_is_not_found(stub: pb_grpc.KeyStoreStub) -> None:
    expect_error(
        lambda: stub.DescribeKey(pb.DescribeKeyRequest(key_id=str(uuid.uuid4()))),
        "NotFoundException",
        grpc.StatusCode.NOT_FOUND,
    )


def test_alias_identifier_of_a_missing_alias_is_not_found(stub: pb_grpc.KeyStoreStub) -> None:
    for identifier in ("alias/missing", "arn:hsmstore:kms:local:local:alias/missing"):
        expect_error(
            lambda identifier=identifier: stub.Encrypt(pb.EncryptRequest(key_id=identifier, plaintext=b"x")),  # type: ignore[misc]
            "NotFoundException",
            grpc.StatusCode.NOT_FOUND,
        )


def test_another_tenants_key_arn_is_not_found(stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata) -> None:
    expect_error(
        lambda: stub.DescribeKey(
            pb.DescribeKeyRequest(key_id=f"arn:hsmstore:kms:local:other:key/{key.key_id}")
        ),
        "NotFoundException",
        grpc.StatusCode.NOT_FOUND,
    )


def test_malformed_arn_is_invalid_arn(stub: pb_grpc.KeyStoreStub) -> None:
    expect_error(
        lambda: stub.DescribeKey(pb.DescribeKeyRequest(key_id="arn:aws:kms:us-east-1:1:key/x")),
        "InvalidArnException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_empty_key_id_is_validation_error(stub: pb_grpc.KeyStoreStub) -> None:
    expect_error(
        lambda: stub.DescribeKey(pb.DescribeKeyRequest(key_id="")),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_create_key_with_unsupported_spec_is_unsupported_operation(stub: pb_grpc.KeyStoreStub) -> None:
    expect_error(
        lambda: stub.CreateKey(pb.CreateKeyRequest(key_spec="SM2", key_usage="SIGN_VERIFY")),
        "UnsupportedOperationException",
        grpc.StatusCode.UNIMPLEMENTED,
    )


def test_create_key_with_unknown_usage_is_validation_error(stub: pb_grpc.KeyStoreStub) -> None:
    expect_error(
        lambda: stub.CreateKey(pb.CreateKeyRequest(key_usage="SIGN_VERIFY_EVERYTHING")),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_list_keys_pages_with_limit_and_marker(stub: pb_grpc.KeyStoreStub) -> None:
    created = {create_key(stub).key_id for _ in range(3)}
    seen: list[str] = []
    marker = ""
    while True:
        page = stub.ListKeys(pb.ListKeysRequest(limit=2, marker=marker))
        assert len(page.keys) <= 2
        seen.extend(entry.key_id for entry in page.keys)
        for entry in page.keys:
            assert entry.key_arn.endswith(entry.key_id)
        if not page.truncated:
            assert page.next_marker == ""
            break
        marker = page.next_marker
    assert created <= set(seen)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)


def test_list_keys_with_forged_marker_is_invalid_marker(stub: pb_grpc.KeyStoreStub) -> None:
    expect_error(
        lambda: stub.ListKeys(pb.ListKeysRequest(marker="not a marker!")),
        "InvalidMarkerException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize("limit", [0, 1001])
def test_list_keys_limit_out_of_range_is_validation_error(stub: pb_grpc.KeyStoreStub, limit: int) -> None:
    expect_error(
        lambda: stub.ListKeys(pb.ListKeysRequest(limit=limit)),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_update_key_description_is_seen_by_describe(stub: pb_grpc.KeyStoreStub) -> None:
    key_id = create_key(stub, "before").key_id
    stub.UpdateKeyDescription(pb.UpdateKeyDescriptionRequest(key_id=key_id, description="after"))
    assert stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata.description == "after"
    expect_error(
        lambda: stub.UpdateKeyDescription(
            pb.UpdateKeyDescriptionRequest(key_id=key_id, description="d" * 8193)
        ),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_disabled_key_refuses_cryptographic_use_until_enabled(stub: pb_grpc.KeyStoreStub) -> None:
    key_id = create_key(stub).key_id
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"secret")).ciphertext_blob
    stub.DisableKey(pb.DisableKeyRequest(key_id=key_id))
    metadata = stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata
    assert (metadata.key_state, metadata.enabled) == ("DISABLED", False)
    calls: list[Callable[[], object]] = [
        lambda: stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")),
        lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)),
        lambda: stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256")),
        lambda: stub.GenerateDataKeyWithoutPlaintext(
            pb.GenerateDataKeyWithoutPlaintextRequest(key_id=key_id, number_of_bytes=16)
        ),
        lambda: stub.ReEncrypt(pb.ReEncryptRequest(ciphertext_blob=blob, destination_key_id=key_id)),
    ]
    for call in calls:
        expect_error(call, "DisabledException", grpc.StatusCode.FAILED_PRECONDITION)
    stub.DisableKey(pb.DisableKeyRequest(key_id=key_id))  # disabling twice is fine, as in AWS
    stub.EnableKey(pb.EnableKeyRequest(key_id=key_id))
    assert stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)).plaintext == b"secret"


# ------------------------------------------------------------- cryptography


def test_encrypt_then_decrypt_without_key_id(stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata) -> None:
    context = {"purpose": "test", "tenant": "acme"}
    encrypted = stub.Encrypt(
        pb.EncryptRequest(key_id=key.key_id, plaintext=b"p" * 4096, encryption_context=context)
    )
    assert encrypted.key_id == key.arn
    assert encrypted.encryption_algorithm == "SYMMETRIC_DEFAULT"
    decrypted = stub.Decrypt(
        pb.DecryptRequest(
            ciphertext_blob=encrypted.ciphertext_blob, encryption_context=dict(reversed(context.items()))
        )
    )
    assert decrypted.plaintext == b"p" * 4096
    assert decrypted.key_id == key.arn


def test_decrypt_with_matching_key_id_forms_succeeds(stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata) -> None:
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key.arn, plaintext=b"data")).ciphertext_blob
    for identifier in (key.key_id, key.arn):
        assert stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob, key_id=identifier)).plaintext == b"data"


def test_decrypt_naming_another_key_is_incorrect_key(stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata) -> None:
    other = create_key(stub)
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key.key_id, plaintext=b"data")).ciphertext_blob
    expect_error(
        lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob, key_id=other.key_id)),
        "IncorrectKeyException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_decrypt_naming_a_missing_key_is_not_found(stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata) -> None:
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key.key_id, plaintext=b"data")).ciphertext_blob
    expect_error(
        lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob, key_id=str(uuid.uuid4()))),
        "NotFoundException",
        grpc.StatusCode.NOT_FOUND,
    )


def _tampered_blobs(blob: bytes, other_key_blob: bytes) -> dict[str, bytes]:
    def flip(position: int) -> bytes:
        return blob[:position] + bytes([blob[position] ^ 0x01]) + blob[position + 1 :]

    foreign_key = uuid.uuid4().bytes
    return {
        "format version": flip(0),
        "key id byte": flip(5),
        "key version": flip(20),
        "iv byte": flip(25),
        "ciphertext byte": flip(40),
        "tag byte": flip(len(blob) - 1),
        "truncated by one": blob[:-1],
        "truncated to the header": blob[:21],
        "extended by one": blob + b"\x00",
        "unknown key": blob[:1] + foreign_key + blob[17:],
        "another key's blob with this blob's key id": other_key_blob[:1] + blob[1:17] + other_key_blob[17:],
        "random bytes": bytes(range(64)),
        "one byte": b"\x01",
    }


def test_every_ciphertext_defect_is_the_same_invalid_ciphertext(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata
) -> None:
    context = {"k": "v"}
    blob = stub.Encrypt(
        pb.EncryptRequest(key_id=key.key_id, plaintext=b"0123456789abcdef0123", encryption_context=context)
    ).ciphertext_blob
    other_key_blob = stub.Encrypt(
        pb.EncryptRequest(
            key_id=create_key(stub).key_id, plaintext=b"0123456789abcdef0123", encryption_context=context
        )
    ).ciphertext_blob
    messages = set()
    for tampered in _tampered_blobs(blob, other_key_blob).values():
        error = expect_error(
            lambda tampered=tampered: stub.Decrypt(  # type: ignore[misc]
                pb.DecryptRequest(ciphertext_blob=tampered, encryption_context=context)
            ),
            "InvalidCiphertextException",
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        messages.add(error.details())  # type: ignore[attr-defined]
    for wrong_context in ({}, {"k": "w"}, {"K": "v"}, {"k": "v", "extra": "x"}):
        error = expect_error(
            lambda wrong_context=wrong_context: stub.Decrypt(  # type: ignore[misc]
                pb.DecryptRequest(ciphertext_blob=blob, encryption_context=wrong_context)
            ),
            "InvalidCiphertextException",
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        messages.add(error.details())  # type: ignore[attr-defined]
    assert messages == {f"InvalidCiphertextException: {INVALID_CIPHERTEXT_MESSAGE}"}


def test_decrypt_with_wrong_context_is_invalid_ciphertext(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata
) -> None:
    blob = stub.Encrypt(
        pb.EncryptRequest(key_id=key.key_id, plaintext=b"x", encryption_context={"a": "1"})
    ).ciphertext_blob
    expect_error(
        lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob, encryption_context={"a": "2"})),
        "InvalidCiphertextException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize("size", [0, 4097])
def test_plaintext_size_outside_1_to_4096_is_validation_error(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata, size: int
) -> None:
    expect_error(
        lambda: stub.Encrypt(pb.EncryptRequest(key_id=key.key_id, plaintext=b"x" * size)),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize("size", [0, 6145])
def test_ciphertext_blob_size_outside_1_to_6144_is_validation_error(
    stub: pb_grpc.KeyStoreStub, size: int
) -> None:
    expect_error(
        lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=b"x" * size)),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_asymmetric_algorithm_on_symmetric_key_is_invalid_key_usage(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata
) -> None:
    expect_error(
        lambda: stub.Encrypt(
            pb.EncryptRequest(key_id=key.key_id, plaintext=b"x", encryption_algorithm="RSAES_OAEP_SHA_256")
        ),
        "InvalidKeyUsageException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_unknown_algorithm_is_validation_error(stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata) -> None:
    expect_error(
        lambda: stub.Encrypt(
            pb.EncryptRequest(key_id=key.key_id, plaintext=b"x", encryption_algorithm="ROT13")
        ),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_oversized_encryption_context_is_validation_error(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata
) -> None:
    expect_error(
        lambda: stub.Encrypt(
            pb.EncryptRequest(key_id=key.key_id, plaintext=b"x", encryption_context={"k": "v" * 9000})
        ),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_re_encrypt_moves_ciphertext_to_another_key_and_context(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata
) -> None:
    destination = create_key(stub)
    blob = stub.Encrypt(
        pb.EncryptRequest(key_id=key.key_id, plaintext=b"move me", encryption_context={"from": "a"})
    ).ciphertext_blob
    moved = stub.ReEncrypt(
        pb.ReEncryptRequest(
            ciphertext_blob=blob,
            source_encryption_context={"from": "a"},
            destination_key_id=destination.arn,
            destination_encryption_context={"to": "b"},
        )
    )
    assert (moved.source_key_id, moved.key_id) == (key.arn, destination.arn)
    assert moved.source_encryption_algorithm == moved.destination_encryption_algorithm == "SYMMETRIC_DEFAULT"
    decrypted = stub.Decrypt(
        pb.DecryptRequest(ciphertext_blob=moved.ciphertext_blob, encryption_context={"to": "b"})
    )
    assert decrypted.plaintext == b"move me"
    assert decrypted.key_id == destination.arn
    expect_error(
        lambda: stub.ReEncrypt(
            pb.ReEncryptRequest(
                ciphertext_blob=blob,
                destination_key_id=destination.key_id,
                source_key_id=destination.key_id,
                source_encryption_context={"from": "a"},
            )
        ),
        "IncorrectKeyException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    expect_error(
        lambda: stub.ReEncrypt(
            pb.ReEncryptRequest(ciphertext_blob=blob, destination_key_id=destination.key_id)
        ),
        "InvalidCiphertextException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize(("key_spec", "size"), [("AES_256", 32), ("AES_128", 16)])
def test_generate_data_key_by_key_spec(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata, key_spec: str, size: int
) -> None:
    data_key = stub.GenerateDataKey(
        pb.GenerateDataKeyRequest(key_id=key.key_id, key_spec=key_spec, encryption_context={"file": "f1"})
    )
    assert len(data_key.plaintext) == size
    assert data_key.key_id == key.arn
    decrypted = stub.Decrypt(
        pb.DecryptRequest(ciphertext_blob=data_key.ciphertext_blob, encryption_context={"file": "f1"})
    )
    assert decrypted.plaintext == data_key.plaintext


@pytest.mark.parametrize("size", [1, 1024])
def test_generate_data_key_by_number_of_bytes(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata, size: int
) -> None:
    data_key = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key.key_id, number_of_bytes=size))
    assert len(data_key.plaintext) == size
    assert (
        stub.Decrypt(pb.DecryptRequest(ciphertext_blob=data_key.ciphertext_blob)).plaintext
        == data_key.plaintext
    )


def test_generate_data_key_without_plaintext_decrypts_later(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata
) -> None:
    response = stub.GenerateDataKeyWithoutPlaintext(
        pb.GenerateDataKeyWithoutPlaintextRequest(key_id=key.key_id, key_spec="AES_256")
    )
    assert response.key_id == key.arn
    assert len(stub.Decrypt(pb.DecryptRequest(ciphertext_blob=response.ciphertext_blob)).plaintext) == 32


@pytest.mark.parametrize(
    "request_fields",
    [
        {},
        {"key_spec": "AES_256", "number_of_bytes": 32},
        {"key_spec": "AES_512"},
        {"number_of_bytes": 0},
        {"number_of_bytes": 1025},
    ],
    ids=["neither", "both", "unknown spec", "zero bytes", "too many bytes"],
)
def test_generate_data_key_needs_exactly_one_valid_size(
    stub: pb_grpc.KeyStoreStub, key: pb.KeyMetadata, request_fields: dict[str, object]
) -> None:
    expect_error(
        lambda: stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key.key_id, **request_fields)),  # type: ignore[arg-type]
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    expect_error(
        lambda: stub.GenerateDataKeyWithoutPlaintext(
            pb.GenerateDataKeyWithoutPlaintextRequest(key_id=key.key_id, **request_fields)  # type: ignore[arg-type]
        ),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_generate_random_returns_the_requested_bytes(stub: pb_grpc.KeyStoreStub) -> None:
    first = stub.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=1024)).plaintext
    second = stub.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=1024)).plaintext
    assert len(first) == len(second) == 1024
    assert first != second
    assert len(stub.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=1)).plaintext) == 1


@pytest.mark.parametrize("request_fields", [{}, {"number_of_bytes": 0}, {"number_of_bytes": 1025}])
def test_generate_random_size_outside_1_to_1024_is_validation_error(
    stub: pb_grpc.KeyStoreStub, request_fields: dict[str, int]
) -> None:
    expect_error(
        lambda: stub.GenerateRandom(pb.GenerateRandomRequest(**request_fields)),
        "ValidationException",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_generate_random_in_a_custom_key_store_the_tenant_does_not_have_is_not_found(
    stub: pb_grpc.KeyStoreStub,
) -> None:
    """Issue 17: GenerateRandom takes a CustomKeyStoreId as AWS does (the bytes come from that
    store's token; tests/integration/test_custom_key_store_outage.py draws from one)."""
    expect_error(
        lambda: stub.GenerateRandom(
            pb.GenerateRandomRequest(number_of_bytes=8, custom_key_store_id="cks-0123456789abcdef0")
        ),
        "CustomKeyStoreNotFoundException",
        grpc.StatusCode.NOT_FOUND,
    )


# ------------------------------------------------------------------ secrets


def test_no_plaintext_data_key_or_pin_reaches_logs_argv_or_db(
    server: ServerProcess, key: pb.KeyMetadata
) -> None:
    stub = server.stub
    secret = b"TOP-SECRET-PLAINTEXT-4f1c9a"
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key.key_id, plaintext=secret)).ciphertext_blob
    stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob))
    data_key = stub.GenerateDataKey(
        pb.GenerateDataKeyRequest(key_id=key.key_id, number_of_bytes=24)
    ).plaintext
    with pytest.raises(grpc.RpcError):
        stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob, encryption_context={"wrong": secret.decode()}))
    pin = server.user_pin.encode()
    assert server.process is not None
    cmdline = (Path("/proc") / str(server.process.pid) / "cmdline").read_bytes()
    logs = "".join(server.output).encode()
    db_files = b"".join(path.read_bytes() for path in server.data_dir.glob("hsmstore.db*"))
    for haystack in (cmdline, logs, db_files):
        for needle in (secret, data_key, pin):
            assert needle not in haystack
