"""KeyStoreClient against a real server: every RPC callable with Python types, typed errors (issue 20)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from hsmstore.client import (
    AlreadyExistsException,
    ClientSetupError,
    DeadlineExceededError,
    HsmstoreError,
    InvalidCiphertextException,
    KeyMetadata,
    KeyStoreClient,
    NotFoundException,
    ServiceUnavailableError,
    ValidationException,
)
from hsmstore.client.codegen import rpcs
from hsmstore.client.codegen_names import snake
from tests.integration.harness import ServerProcess
from tests.integration.mtls import ACME_ADMIN, Pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[KeyStoreClient]:
    with KeyStoreClient(server.address) as opened:
        yield opened


@pytest.fixture(scope="module")
def key(client: KeyStoreClient) -> KeyMetadata:
    made = client.create_key(description="client key", tags={"team": "payments"}).key_metadata
    assert made is not None
    return made


def test_encrypt_and_decrypt_round_trip_with_context(client: KeyStoreClient, key: KeyMetadata) -> None:
    sealed = client.encrypt(key_id=key.key_id, plaintext=b"order 17", encryption_context={"app": "orders"})
    opened = client.decrypt(ciphertext_blob=sealed.ciphertext_blob, encryption_context={"app": "orders"})
    assert opened.plaintext == b"order 17"
    assert opened.key_id == key.arn


def test_decrypt_with_another_context_is_invalid_ciphertext(client: KeyStoreClient, key: KeyMetadata) -> None:
    sealed = client.encrypt(key_id=key.key_id, plaintext=b"x", encryption_context={"app": "orders"})
    with pytest.raises(InvalidCiphertextException) as raised:
        client.decrypt(ciphertext_blob=sealed.ciphertext_blob, encryption_context={"app": "other"})
    assert raised.value.code == "INVALID_ARGUMENT"


def test_unknown_key_is_not_found(client: KeyStoreClient) -> None:
    with pytest.raises(NotFoundException):
        client.describe_key(key_id="alias/no-such-alias")


def test_a_second_alias_of_the_same_name_already_exists(client: KeyStoreClient, key: KeyMetadata) -> None:
    client.create_alias(alias_name="alias/client-twice", target_key_id=key.key_id)
    with pytest.raises(AlreadyExistsException):
        client.create_alias(alias_name="alias/client-twice", target_key_id=key.key_id)


def test_a_bad_parameter_is_a_validation_error(client: KeyStoreClient, key: KeyMetadata) -> None:
    with pytest.raises(ValidationException):
        client.generate_random(number_of_bytes=100_000)


def test_data_keys_have_the_asked_size(client: KeyStoreClient, key: KeyMetadata) -> None:
    data_key = client.generate_data_key(key_id=key.key_id, key_spec="AES_256")
    assert len(data_key.plaintext) == 32
    assert client.decrypt(ciphertext_blob=data_key.ciphertext_blob).plaintext == data_key.plaintext
    without = client.generate_data_key_without_plaintext(key_id=key.key_id, number_of_bytes=16)
    assert len(client.decrypt(ciphertext_blob=without.ciphertext_blob).plaintext) == 16


def test_paginator_follows_the_marker_across_pages(client: KeyStoreClient) -> None:
    made = {client.create_key(description=f"page {n}").key_metadata.key_id for n in range(3)}  # type: ignore[union-attr]
    first_page = client.list_keys(limit=1)
    assert first_page.truncated
    listed = {entry.key_id for entry in client.paginate_list_keys()}
    assert made <= listed


def test_generic_call_takes_and_returns_aws_members(client: KeyStoreClient, key: KeyMetadata) -> None:
    client.disable_key(key_id=key.key_id)
    try:
        answer = client.call("DescribeKey", {"KeyId": key.key_id})
    finally:
        client.enable_key(key_id=key.key_id)
    assert answer["KeyMetadata"]["Enabled"] is False
    assert answer["KeyMetadata"]["KeyId"] == key.key_id
    assert isinstance(answer["KeyMetadata"]["CreationDate"], datetime)


def test_every_rpc_is_callable_and_fails_only_with_typed_errors(
    client: KeyStoreClient, key: KeyMetadata
) -> None:
    """Each method with plausible arguments answers or raises an HsmstoreError (never TypeError, grpc's)."""
    arguments = {
        "key_id": key.key_id,
        "plaintext": b"p",
        "ciphertext_blob": client.encrypt(key_id=key.key_id, plaintext=b"p").ciphertext_blob,
        "destination_key_id": key.key_id,
        "number_of_bytes": 16,
        "alias_name": "alias/client-every-rpc",
        "target_key_id": key.key_id,
        "tags": {"env": "dev"},
        "tag_keys": ["env"],
        "policy_name": "default",
        "grantee_principal": "arn:hsmstore:iam::local:user/alice",
        "operations": ["Decrypt"],
        "principal": "arn:hsmstore:iam::local:user/alice",
        "operation": "Decrypt",
        "custom_key_store_id": "cks-1234567890abcdef0",
        "start_time": datetime.now(UTC) - timedelta(hours=1),
    }
    answered: dict[str, str] = {}
    for rpc in rpcs():
        if rpc.name in (
            "DisableKey",
            "ScheduleKeyDeletion",
            "DeleteAlias",
            "PutKeyPolicy",
            "PutIdentityPolicy",
        ):
            continue  # below, in an order that keeps the key usable
        names = {f.name for f in rpc.method.input_type.fields if f.name in arguments}
        if "CustomKeyStore" not in rpc.name:
            names.discard("custom_key_store_id")  # CreateKey, GenerateRandom: the default store
        fields = {name: arguments[name] for name in names}
        try:
            getattr(client, snake(rpc.name))(**fields)
            answered[rpc.name] = "ok"
        except HsmstoreError as error:
            answered[rpc.name] = error.reason or error.code
    client.disable_key(key_id=key.key_id)
    client.enable_key(key_id=key.key_id)
    client.delete_alias(alias_name="alias/client-every-rpc")
    policy = client.get_key_policy(key_id=key.key_id, policy_name="default").policy
    client.put_key_policy(key_id=key.key_id, policy_name="default", policy=policy)
    client.put_identity_policy(
        principal="arn:hsmstore:iam::local:user/alice",
        policy_name="describe",
        policy='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:DescribeKey", '
        '"Resource": "*"}]}',
    )
    doomed = client.create_key().key_metadata
    assert doomed is not None
    scheduled = client.schedule_key_deletion(key_id=doomed.key_id, pending_window_in_days=7)
    assert scheduled.key_state == "PENDING_DELETION"
    assert scheduled.deletion_date is not None
    assert answered["Encrypt"] == answered["Decrypt"] == answered["GenerateRandom"] == "ok"
    assert answered["DescribeCustomKeyStores"] == "CustomKeyStoreNotFoundException"
    assert answered["ConnectCustomKeyStore"] == "CustomKeyStoreNotFoundException"
    assert answered["LookupEvents"] == "ok"
    assert set(answered) | {
        "DisableKey",
        "ScheduleKeyDeletion",
        "DeleteAlias",
        "PutKeyPolicy",
        "PutIdentityPolicy",
    } == {rpc.name for rpc in rpcs()}


def test_an_unreachable_server_fails_within_the_deadline_after_retries() -> None:
    began = time.monotonic()
    with (
        KeyStoreClient("127.0.0.1:1", timeout=1.0, max_attempts=2) as unreachable,
        pytest.raises((ServiceUnavailableError, DeadlineExceededError)),
    ):
        unreachable.list_keys()
    assert time.monotonic() - began < 5.0


def test_mutual_tls_from_files_identifies_the_caller(mtls_server: ServerProcess, pki: Pki) -> None:
    cert_file, key_file = pki.client_files(ACME_ADMIN)
    with KeyStoreClient(
        mtls_server.address, ca_file=str(pki.ca_path), cert_file=str(cert_file), key_file=str(key_file)
    ) as tls_client:
        made = tls_client.create_key(description="over mTLS").key_metadata
    assert made is not None
    assert made.aws_account_id == "acme"


def test_a_half_given_certificate_pair_is_a_setup_error(pki: Pki) -> None:
    with pytest.raises(ClientSetupError, match="go together"):
        KeyStoreClient("127.0.0.1:1", ca_file=str(pki.ca_path), cert_file=str(pki.ca_path))
