"""The AWS Encryption SDK with hsmstore master keys: commitment, signatures, framing, caching (issue 20)."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

aws_encryption_sdk = pytest.importorskip("aws_encryption_sdk")
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError  # noqa: E402
from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy  # noqa: E402
from cryptography.exceptions import InvalidSignature, InvalidTag  # noqa: E402

from hsmstore.client import KeyStoreClient  # noqa: E402
from hsmstore.client.esdk import PROVIDER_ID, HsmstoreMasterKeyProvider  # noqa: E402
from tests.integration.harness import ServerProcess  # noqa: E402

pytestmark = pytest.mark.integration
CONTEXT = {"app": "orders", "env": "dev"}
# The ESDK raises cryptography's own errors for a frame's tag and the message's signature.
TAMPERED = (AWSEncryptionSDKClientError, InvalidTag, InvalidSignature)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[KeyStoreClient]:
    with KeyStoreClient(server.address) as opened:
        yield opened


def new_key(client: KeyStoreClient) -> str:
    made = client.create_key(description="esdk").key_metadata
    assert made is not None
    return made.arn


@pytest.fixture(scope="module")
def key_arn(client: KeyStoreClient) -> str:
    return new_key(client)


@pytest.fixture
def provider(client: KeyStoreClient, key_arn: str) -> HsmstoreMasterKeyProvider:
    return HsmstoreMasterKeyProvider(client=client, key_ids=[key_arn])


@pytest.fixture
def sdk() -> Any:
    return aws_encryption_sdk.EncryptionSDKClient()  # the default: REQUIRE_ENCRYPT_REQUIRE_DECRYPT


def test_default_message_is_committed_signed_and_carries_the_context(sdk: Any, provider: Any) -> None:
    ciphertext, header = sdk.encrypt(source=b"order 17", key_provider=provider, encryption_context=CONTEXT)
    assert header.algorithm is Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384
    assert header.algorithm.is_committing()
    assert header.algorithm.signing_algorithm_info is not None
    assert CONTEXT.items() <= header.encryption_context.items()
    plaintext, decrypted_header = sdk.decrypt(source=ciphertext, key_provider=provider)
    assert plaintext == b"order 17"
    assert CONTEXT.items() <= decrypted_header.encryption_context.items()


def test_the_encrypted_data_key_is_an_hsmstore_blob_bound_to_the_message_context(
    sdk: Any, provider: Any, client: KeyStoreClient, key_arn: str
) -> None:
    _, header = sdk.encrypt(source=b"x", key_provider=provider, encryption_context=CONTEXT)
    (data_key,) = header.encrypted_data_keys
    assert data_key.key_provider.provider_id == PROVIDER_ID
    assert data_key.key_provider.key_info.decode() == key_arn
    context = dict(header.encryption_context)
    assert (
        len(client.decrypt(ciphertext_blob=data_key.encrypted_data_key, encryption_context=context).plaintext)
        == 32
    )
    with pytest.raises(Exception, match="invalid"):
        client.decrypt(ciphertext_blob=data_key.encrypted_data_key)


def test_framed_streaming_round_trip_in_chunks(sdk: Any, provider: Any) -> None:
    plaintext = bytes(range(256)) * 400  # 100 KiB: 25 frames of 4 KiB
    sealed = io.BytesIO()
    with sdk.stream(
        mode="e", source=io.BytesIO(plaintext), key_provider=provider, frame_length=4096
    ) as encryptor:
        for chunk in iter(lambda: encryptor.read(7000), b""):
            sealed.write(chunk)
    assert encryptor.header.frame_length == 4096
    opened = io.BytesIO()
    with sdk.stream(mode="d", source=io.BytesIO(sealed.getvalue()), key_provider=provider) as decryptor:
        for chunk in iter(lambda: decryptor.read(5000), b""):
            opened.write(chunk)
    assert opened.getvalue() == plaintext


def test_a_message_without_key_commitment_is_refused_by_the_default_policy(sdk: Any, provider: Any) -> None:
    legacy = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT
    )
    ciphertext, header = legacy.encrypt(source=b"old", key_provider=provider)
    assert not header.algorithm.is_committing()
    with pytest.raises(AWSEncryptionSDKClientError):
        sdk.decrypt(source=ciphertext, key_provider=provider)


def test_only_the_listed_keys_decrypt_unless_discovery(
    sdk: Any, provider: Any, client: KeyStoreClient
) -> None:
    ciphertext, _ = sdk.encrypt(source=b"x", key_provider=provider)
    other = HsmstoreMasterKeyProvider(client=client, key_ids=[new_key(client)])
    with pytest.raises(AWSEncryptionSDKClientError):
        sdk.decrypt(source=ciphertext, key_provider=other)
    discovery = HsmstoreMasterKeyProvider(client=client, discovery=True)
    assert sdk.decrypt(source=ciphertext, key_provider=discovery)[0] == b"x"


def test_a_second_key_wraps_the_same_data_key(sdk: Any, client: KeyStoreClient, key_arn: str) -> None:
    second = new_key(client)
    both = HsmstoreMasterKeyProvider(client=client, key_ids=[key_arn, second])
    ciphertext, header = sdk.encrypt(source=b"x", key_provider=both)
    assert len(header.encrypted_data_keys) == 2
    only_second = HsmstoreMasterKeyProvider(client=client, key_ids=[second])
    assert sdk.decrypt(source=ciphertext, key_provider=only_second)[0] == b"x"


def test_a_flipped_byte_anywhere_fails(sdk: Any, provider: Any) -> None:
    ciphertext = sdk.encrypt(source=b"z" * 10_000, key_provider=provider, frame_length=1024)[0]
    for position in (5, 60, len(ciphertext) // 2, len(ciphertext) - 10):
        tampered = bytearray(ciphertext)
        tampered[position] ^= 0x01
        with pytest.raises(TAMPERED):
            sdk.decrypt(source=bytes(tampered), key_provider=provider)


class CountingClient(KeyStoreClient):
    generated = 0

    def generate_data_key(self, **fields: Any) -> Any:
        type(self).generated += 1
        return super().generate_data_key(**fields)


def test_caching_materials_manager_reuses_a_data_key(sdk: Any, server: ServerProcess, key_arn: str) -> None:
    with CountingClient(server.address) as counting:
        provider = HsmstoreMasterKeyProvider(client=counting, key_ids=[key_arn])
        cache = aws_encryption_sdk.LocalCryptoMaterialsCache(capacity=10)
        caching = aws_encryption_sdk.CachingCryptoMaterialsManager(
            master_key_provider=provider, cache=cache, max_age=60.0, max_messages_encrypted=10
        )
        messages = [sdk.encrypt(source=b"m%d" % n, materials_manager=caching)[0] for n in range(5)]
        assert CountingClient.generated == 1
        assert [sdk.decrypt(source=m, key_provider=provider)[0] for m in messages] == [
            b"m%d" % n for n in range(5)
        ]


def test_hsmstore_decrypt_reads_a_library_message_and_the_library_reads_hsmstore_encrypt(
    sdk: Any, provider: Any, server: ServerProcess, key_arn: str, tmp_path: Path
) -> None:
    made_by_library = tmp_path / "library.enc"
    made_by_library.write_bytes(
        sdk.encrypt(source=b"from the library", key_provider=provider, encryption_context=CONTEXT)[0]
    )
    command = [sys.executable, "-m", "hsmstore.cli.main"]
    endpoint = ["--endpoint", server.address]
    subprocess.run(
        [
            *command,
            "decrypt",
            "--input",
            str(made_by_library),
            "--output",
            str(tmp_path / "out"),
            *endpoint,
            "--encryption-context",
            "app=orders",
        ],
        check=True,
    )
    assert (tmp_path / "out").read_bytes() == b"from the library"
    (tmp_path / "plain").write_bytes(b"from hsmstore encrypt")
    subprocess.run(
        [
            *command,
            "encrypt",
            "--key-id",
            key_arn,
            "--input",
            str(tmp_path / "plain"),
            "--output",
            str(tmp_path / "cli.enc"),
            *endpoint,
            "--encryption-context",
            "app=orders",
        ],
        check=True,
    )
    plaintext, header = sdk.decrypt(source=(tmp_path / "cli.enc").read_bytes(), key_provider=provider)
    assert plaintext == b"from hsmstore encrypt"
    assert header.encryption_context["app"] == "orders"
