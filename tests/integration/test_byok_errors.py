"""Issue 22's second acceptance line: every import error over the wire, from a real server whose
clock the test moves (HSMSTORE_TEST_CLOCK_FILE), so an import token's 24 hours pass at once.

docs/api.md, "Imported key material", "Rules and errors" is the table these follow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.integration.byok import (
    AES_KEY_WRAP_SHA_1,
    SOFTHSM2_LACKS,
    create_external_key,
    import_material,
    parameters,
    reason,
    timestamp,
    wrap,
)
from tests.integration.harness import ControlledClock, ServerProcess

pytestmark = pytest.mark.integration

DAY = 86400


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> ControlledClock:
    return ControlledClock(tmp_path_factory.mktemp("byok-clock") / "offset")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, clock: ControlledClock) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("byok-errors"), extra_env=clock.env) as running:
        yield running


@pytest.fixture(autouse=True)
def clock_at_zero(clock: ControlledClock) -> Iterator[None]:
    clock.set(0)
    yield
    clock.set(0)


def import_request(
    key_id: str, token: bytes, wrapped: bytes, model: str = "KEY_MATERIAL_DOES_NOT_EXPIRE"
) -> pb.ImportKeyMaterialRequest:
    return pb.ImportKeyMaterialRequest(
        key_id=key_id, import_token=token, encrypted_key_material=wrapped, expiration_model=model
    )


def test_an_import_token_older_than_24_hours_is_expired(
    server: ServerProcess, clock: ControlledClock
) -> None:
    key_id = create_external_key(server.stub)
    params = parameters(server.stub, key_id)
    valid_to = params.parameters_valid_to.ToDatetime(tzinfo=UTC)
    assert timedelta(hours=23, minutes=59) < valid_to - datetime.now(UTC) <= timedelta(hours=24, minutes=1)
    clock.set(DAY + 60)
    request = import_request(key_id, params.import_token, wrap(params.public_key, os.urandom(32)))
    assert reason(lambda: server.stub.ImportKeyMaterial(request)) == "ExpiredImportTokenException"


def test_another_keys_import_token_is_invalid(server: ServerProcess) -> None:
    key_a, key_b = create_external_key(server.stub), create_external_key(server.stub)
    params_a = parameters(server.stub, key_a)
    request = import_request(key_b, params_a.import_token, wrap(params_a.public_key, os.urandom(32)))
    assert reason(lambda: server.stub.ImportKeyMaterial(request)) == "InvalidImportTokenException"
    assert (
        server.stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_b)).key_metadata.key_state
        == "PENDING_IMPORT"
    )


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_tampered_import_token_is_invalid(server: ServerProcess, where: str) -> None:
    key_id = create_external_key(server.stub)
    params = parameters(server.stub, key_id)
    token = bytearray(params.import_token)
    token[{"first": 0, "middle": len(token) // 2, "last": -1}[where]] ^= 0x01
    request = import_request(key_id, bytes(token), wrap(params.public_key, os.urandom(32)))
    assert reason(lambda: server.stub.ImportKeyMaterial(request)) == "InvalidImportTokenException"


def test_a_token_that_is_not_one_at_all_is_invalid(server: ServerProcess) -> None:
    key_id = create_external_key(server.stub)
    params = parameters(server.stub, key_id)
    for token in (b"", b"x", os.urandom(len(params.import_token))):
        request = import_request(key_id, token, wrap(params.public_key, os.urandom(32)))
        assert reason(lambda request=request: server.stub.ImportKeyMaterial(request)) in (
            "InvalidImportTokenException",
            "ValidationException",  # an empty required member
        ), token


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", AES_KEY_WRAP_SHA_1])
def test_material_that_does_not_unwrap_is_invalid_ciphertext(server: ServerProcess, algorithm: str) -> None:
    key_id = create_external_key(server.stub)
    params = parameters(server.stub, key_id, algorithm)
    good = wrap(params.public_key, os.urandom(32), algorithm)
    for wrapped in (os.urandom(len(good)), good[:-1] + bytes([good[-1] ^ 1])):
        request = import_request(key_id, params.import_token, wrapped)
        assert reason(lambda request=request: server.stub.ImportKeyMaterial(request)) == (
            "InvalidCiphertextException"
        )
    assert (
        server.stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata.key_state
        == "PENDING_IMPORT"
    )


def test_other_material_after_delete_imported_key_material_is_incorrect_key_material(
    server: ServerProcess,
) -> None:
    key_id = create_external_key(server.stub)
    first = os.urandom(32)
    import_material(server.stub, key_id, first)
    server.stub.DeleteImportedKeyMaterial(pb.DeleteImportedKeyMaterialRequest(key_id=key_id))
    assert (
        reason(lambda: import_material(server.stub, key_id, os.urandom(32)))
        == "IncorrectKeyMaterialException"
    )
    import_material(server.stub, key_id, first)  # the same material is welcome back
    assert server.stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata.key_state == "ENABLED"


@pytest.mark.parametrize("length", [16, 24, 31, 33, 64])
def test_material_that_is_not_32_bytes_is_a_validation_error(server: ServerProcess, length: int) -> None:
    key_id = create_external_key(server.stub)
    assert reason(lambda: import_material(server.stub, key_id, os.urandom(length))) == "ValidationException"


def test_valid_to_in_the_past_is_a_validation_error(server: ServerProcess) -> None:
    key_id = create_external_key(server.stub)
    past = datetime.now(UTC) - timedelta(minutes=5)
    assert reason(lambda: import_material(server.stub, key_id, os.urandom(32), valid_to=past)) == (
        "ValidationException"
    )


def test_valid_to_with_material_that_does_not_expire_is_a_validation_error(server: ServerProcess) -> None:
    key_id = create_external_key(server.stub)
    params = parameters(server.stub, key_id)
    request = import_request(key_id, params.import_token, wrap(params.public_key, os.urandom(32)))
    request.valid_to.CopyFrom(timestamp(datetime.now(UTC) + timedelta(days=1)))
    assert reason(lambda: server.stub.ImportKeyMaterial(request)) == "ValidationException"


def test_encrypt_with_a_key_pending_import_is_invalid_state(server: ServerProcess) -> None:
    key_id = create_external_key(server.stub)
    encrypt = pb.EncryptRequest(key_id=key_id, plaintext=b"no material yet")
    assert reason(lambda: server.stub.Encrypt(encrypt)) == "KMSInvalidStateException"
    generate = pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256")
    assert reason(lambda: server.stub.GenerateDataKey(generate)) == "KMSInvalidStateException"


def test_encrypt_after_delete_imported_key_material_is_invalid_state(server: ServerProcess) -> None:
    key_id = create_external_key(server.stub)
    import_material(server.stub, key_id, os.urandom(32))
    blob = server.stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")).ciphertext_blob
    server.stub.DeleteImportedKeyMaterial(pb.DeleteImportedKeyMaterialRequest(key_id=key_id))
    assert reason(lambda: server.stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x"))) == (
        "KMSInvalidStateException"
    )
    assert reason(lambda: server.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob))) == (
        "KMSInvalidStateException"
    )


def test_rotation_of_an_imported_key_is_unsupported(server: ServerProcess) -> None:
    key_id = create_external_key(server.stub)
    import_material(server.stub, key_id, os.urandom(32))
    assert reason(lambda: server.stub.EnableKeyRotation(pb.EnableKeyRotationRequest(key_id=key_id))) == (
        "UnsupportedOperationException"
    )
    assert reason(lambda: server.stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))) == (
        "UnsupportedOperationException"
    )


@pytest.mark.parametrize("algorithm", ["RSAES_PKCS1_V1_5", *SOFTHSM2_LACKS])
def test_pkcs1_v1_5_and_what_softhsm2_lacks_are_unsupported(server: ServerProcess, algorithm: str) -> None:
    key_id = create_external_key(server.stub)
    assert reason(lambda: parameters(server.stub, key_id, algorithm)) == "UnsupportedOperationException"


def test_import_calls_on_a_key_that_is_not_external_are_unsupported(server: ServerProcess) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    assert reason(lambda: parameters(server.stub, key_id)) == "UnsupportedOperationException"
    delete = pb.DeleteImportedKeyMaterialRequest(key_id=key_id)
    assert reason(lambda: server.stub.DeleteImportedKeyMaterial(delete)) == "UnsupportedOperationException"


@pytest.mark.parametrize(("algorithm", "spec"), [("RSAES_OAEP_SHA_1", "RSA_1024"), ("NOPE", "RSA_2048")])
def test_an_unknown_wrapping_spec_or_algorithm_is_a_validation_error(
    server: ServerProcess, algorithm: str, spec: str
) -> None:
    key_id = create_external_key(server.stub)
    assert reason(lambda: parameters(server.stub, key_id, algorithm, spec)) == "ValidationException"


def test_an_unknown_key_is_not_found(server: ServerProcess, tmp_path: Path) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert reason(lambda: parameters(server.stub, missing)) == "NotFoundException"
