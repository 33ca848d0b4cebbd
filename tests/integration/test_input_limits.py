"""Field limits through real servers (issue 14, items 6, 7 and 9): typed errors, short messages.

Each case was answered INTERNAL (or accepted) before: an encryption context of
too many pairs (65,536 overflowed the pair count, a ``struct.error``), a policy
nested 999 levels (``RecursionError``)
or holding a 5,000-digit number (``ValueError``), ``alias/prod\\n`` beside
``alias/prod``; and, on PostgreSQL only, a NUL in a description and a
257-character alias name, which PostgreSQL refused to store. SQLite and
PostgreSQL must answer alike, so every case runs against both (so does a
forged marker whose value holds a NUL, which PostgreSQL refused as a query
parameter).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.client.errors import error_reason
from tests.integration.harness import ServerProcess
from tests.postgres import fresh_database

pytestmark = pytest.mark.integration

MAX_MESSAGE_CHARS = 512  # a refusal names the field and the limit, not the input


def refusal(call: Callable[[], object]) -> tuple[str | None, grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    error = refused.value
    return error_reason(error), error.code(), error.details() or ""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pb_grpc.KeyStoreStub]:
    data_dir: Path = tmp_path_factory.mktemp(f"limits-{request.param}")
    if request.param == "sqlite":
        server = ServerProcess(data_dir).start()
        try:
            yield server.stub
        finally:
            server.stop()
        return
    with fresh_database(request.getfixturevalue("postgresql_url")) as url:
        server = ServerProcess(data_dir, extra_args=["--db", url]).start()
        try:
            yield server.stub
        finally:
            server.stop()


@pytest.fixture(scope="module")
def key_id(stub: pb_grpc.KeyStoreStub) -> str:
    return str(stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id)


def test_nul_in_a_description_is_a_validation_exception(stub: pb_grpc.KeyStoreStub, key_id: str) -> None:
    reason, code, _ = refusal(lambda: stub.CreateKey(pb.CreateKeyRequest(description="pay\x00roll")))
    assert (reason, code) == ("ValidationException", grpc.StatusCode.INVALID_ARGUMENT)
    reason, _, _ = refusal(
        lambda: stub.UpdateKeyDescription(pb.UpdateKeyDescriptionRequest(key_id=key_id, description="a\x00"))
    )
    assert reason == "ValidationException"


def test_257_character_alias_name_is_invalid_alias_name(stub: pb_grpc.KeyStoreStub, key_id: str) -> None:
    name = "alias/" + "a" * 250 + "\n"
    assert len(name) == 257
    reason, code, _ = refusal(
        lambda: stub.CreateAlias(pb.CreateAliasRequest(alias_name=name, target_key_id=key_id))
    )
    assert (reason, code) == ("InvalidAliasNameException", grpc.StatusCode.INVALID_ARGUMENT)


def test_alias_with_a_trailing_newline_is_not_a_second_alias(stub: pb_grpc.KeyStoreStub, key_id: str) -> None:
    stub.CreateAlias(pb.CreateAliasRequest(alias_name="alias/prod", target_key_id=key_id))
    reason, _, _ = refusal(
        lambda: stub.CreateAlias(pb.CreateAliasRequest(alias_name="alias/prod\n", target_key_id=key_id))
    )
    assert reason == "InvalidAliasNameException"
    reason, _, _ = refusal(lambda: stub.DescribeKey(pb.DescribeKeyRequest(key_id="alias/prod\n")))
    assert reason == "NotFoundException"
    aliases = stub.ListAliases(pb.ListAliasesRequest(key_id=key_id)).aliases
    assert [alias.alias_name for alias in aliases] == ["alias/prod"]


def test_encryption_context_of_too_many_pairs_is_refused_from_the_count(
    stub: pb_grpc.KeyStoreStub, key_id: str
) -> None:
    """65,536 pairs (the struct.error) no longer fit in a request the server reads, so the
    pair count is shown refused with as many as fit; tests/unit covers 65,536 in the core."""
    context = {f"k{n}": "" for n in range(20_000)}
    reason, code, message = refusal(
        lambda: stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"p", encryption_context=context))
    )
    assert (reason, code) == ("ValidationException", grpc.StatusCode.INVALID_ARGUMENT)
    assert "EncryptionContext" in message and "8192 bytes" in message and "pairs" in message


@pytest.mark.parametrize(
    "policy",
    [
        '{"Statement": ' + "[" * 999 + "]" * 999 + "}",
        '{"Version": ' + "1" * 5000 + ', "Statement": []}',
    ],
    ids=["nested-999-levels", "number-of-5000-digits"],
)
def test_policy_past_jsons_own_limits_is_malformed(
    stub: pb_grpc.KeyStoreStub, key_id: str, policy: str
) -> None:
    reason, code, message = refusal(
        lambda: stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key_id, policy=policy))
    )
    assert (reason, code) == ("MalformedPolicyDocumentException", grpc.StatusCode.INVALID_ARGUMENT)
    assert len(message) <= MAX_MESSAGE_CHARS


def test_a_long_input_is_echoed_only_as_a_short_prefix(stub: pb_grpc.KeyStoreStub, key_id: str) -> None:
    action = "kms:" + "Q" * 30_000
    policy = '{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "ACTION", "Resource": "*"}]}'
    policy = policy.replace("ACTION", action)
    reason, _, message = refusal(
        lambda: stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key_id, policy=policy))
    )
    assert reason == "MalformedPolicyDocumentException"
    assert len(message) <= MAX_MESSAGE_CHARS and "Q" * 33 not in message


def test_a_marker_that_decodes_to_a_nul_is_invalid_marker(stub: pb_grpc.KeyStoreStub, key_id: str) -> None:
    forged = base64.urlsafe_b64encode(b"a1:alias/\x00").decode().rstrip("=")
    reason, code, _ = refusal(lambda: stub.ListAliases(pb.ListAliasesRequest(marker=forged)))
    assert (reason, code) == ("InvalidMarkerException", grpc.StatusCode.INVALID_ARGUMENT)
