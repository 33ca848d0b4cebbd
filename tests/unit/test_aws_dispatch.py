"""The AWS JSON conversion layer and its call envelope, with fakes (hsmstore/aws_json/).

The table (operations.py) against the use cases' own signatures; one request
through ``AwsCalls`` to a status and a JSON document; AWS's error statuses;
what reaches the audit record (never a blob).
"""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from hsmstore.aws_json.dispatch import AwsCalls
from hsmstore.aws_json.errors import UnrecognizedClientException, http_status_of
from hsmstore.aws_json.operations import OPERATIONS
from hsmstore.aws_json.shapes import pascal_out
from hsmstore.core.key_stores.management import CustomKeyStores
from hsmstore.core.model import Caller, KeyState
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import (
    AccessDeniedException,
    DependencyTimeoutException,
    DependencyUnavailableException,
    InvalidCiphertextException,
    KMSInternalException,
    NotFoundException,
    ThrottlingException,
)
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

ADMIN = Caller("local", "arn:hsmstore:iam::local:role/admin", kind="role", name="admin")


class FixedClock:
    def now(self) -> datetime:
        return datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class RecordingSink:
    def __init__(self) -> None:
        self.records: list[Mapping[str, Any]] = []

    def record(self, record: Mapping[str, Any]) -> None:
        self.records.append(record)


def make_calls() -> tuple[AwsCalls, RecordingSink, UseCases]:
    use_cases = build_use_cases(TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), FixedClock())
    sink = RecordingSink()
    return AwsCalls(use_cases, sink, audit_fail_open=False), sink, use_cases


def ask(calls: AwsCalls, operation: str, body: Any, caller: Caller = ADMIN) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = calls.answer(f"TrentService.{operation}", raw, lambda: caller, "ipv4:127.0.0.1:1")
    return answer.status, json.loads(answer.body)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.name)
def test_every_row_names_a_use_case_that_takes_its_arguments(operation: Any) -> None:
    family_type = {"custom_key_stores": CustomKeyStores}.get(operation.family)
    if family_type is None:
        family_type = type(getattr(make_calls()[2], operation.family))
    parameters = inspect.signature(getattr(family_type, operation.method)).parameters
    arguments = {member.arg for member in operation.inputs} | set(operation.fixed)
    assert arguments <= set(parameters), f"{operation.name}: {arguments - set(parameters)}"
    required = {
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in ("self", "caller")
    }
    assert required <= arguments, f"{operation.name} leaves {required - arguments} unset"


def test_create_key_and_a_round_trip_answer_aws_shapes() -> None:
    calls, _, _ = make_calls()
    status, created = ask(
        calls, "CreateKey", {"Description": "d", "Tags": [{"TagKey": "a", "TagValue": "b"}]}
    )
    assert status == 200
    metadata = created["KeyMetadata"]
    assert metadata["KeyState"] == "Enabled"
    assert isinstance(metadata["CreationDate"], float)
    assert "DeletionDate" not in metadata
    status, encrypted = ask(
        calls,
        "Encrypt",
        {"KeyId": metadata["KeyId"], "Plaintext": b64(b"hi"), "EncryptionContext": {"a": "b"}},
    )
    assert status == 200
    status, decrypted = ask(
        calls, "Decrypt", {"CiphertextBlob": encrypted["CiphertextBlob"], "EncryptionContext": {"a": "b"}}
    )
    assert (status, base64.b64decode(decrypted["Plaintext"])) == (200, b"hi")


def test_the_audit_record_has_camel_case_parameters_and_never_a_blob() -> None:
    calls, sink, _ = make_calls()
    _, created = ask(calls, "CreateKey", {})
    key_id = created["KeyMetadata"]["KeyId"]
    ask(calls, "Encrypt", {"KeyId": key_id, "Plaintext": b64(b"secret"), "EncryptionContext": {"c": "d"}})
    [record] = [r for r in sink.records if r["eventName"] == "Encrypt"]
    assert record["requestParameters"] == {"keyId": key_id, "encryptionContext": {"c": "d"}}
    assert b64(b"secret") not in json.dumps(record)


def test_a_member_of_the_wrong_json_type_is_a_serialization_exception() -> None:
    calls, _, _ = make_calls()
    assert ask(calls, "DescribeKey", {"KeyId": 7})[1]["__type"] == "SerializationException"
    assert ask(calls, "Encrypt", {"KeyId": "k", "Plaintext": "not base64!"})[1]["__type"] == (
        "SerializationException"
    )
    assert ask(calls, "DescribeKey", b"[1, 2]")[1]["__type"] == "SerializationException"
    assert ask(calls, "DescribeKey", b"{oops")[0] == 400


def test_an_unknown_member_is_ignored_and_a_null_is_absent() -> None:
    calls, _, _ = make_calls()
    status, _ = ask(calls, "ListKeys", {"NoSuchMember": 1, "Limit": None})
    assert status == 200


def test_a_refused_member_is_refused_by_name_unless_it_asks_for_nothing() -> None:
    calls, _, _ = make_calls()
    status, document = ask(calls, "CreateKey", {"MultiRegion": True})
    assert (status, document["__type"]) == (400, "UnsupportedOperationException")
    assert "MultiRegion" in document["message"]
    assert ask(calls, "CreateKey", {"MultiRegion": False})[0] == 200
    status, document = ask(calls, "ListKeyRotations", {"KeyId": "k", "IncludeKeyMaterial": "SOME"})
    assert document["__type"] == "ValidationException"


def test_key_spec_and_its_deprecated_name_must_agree() -> None:
    calls, _, _ = make_calls()
    both = {"KeySpec": "SYMMETRIC_DEFAULT", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT"}
    assert ask(calls, "CreateKey", both)[0] == 200
    _, document = ask(calls, "CreateKey", {**both, "CustomerMasterKeySpec": "RSA_2048"})
    assert document["__type"] == "ValidationException"
    assert ask(calls, "CreateKey", {"CustomerMasterKeySpec": "SYMMETRIC_DEFAULT"})[0] == 200


def test_an_unknown_operation_or_prefix_is_unknown_operation_and_not_audited() -> None:
    calls, sink, _ = make_calls()
    for target in ("TrentService.MakeCoffee", "DynamoDB_20120810.Encrypt", ""):
        answer = calls.answer(target, b"{}", lambda: ADMIN, "ipv4:127.0.0.1:1")
        assert (answer.status, answer.document["__type"]) == (400, "UnknownOperationException")
    assert sink.records == []


def test_an_identity_failure_is_answered_with_its_own_reason_and_audited() -> None:
    calls, sink, _ = make_calls()

    def stranger() -> Caller:
        raise UnrecognizedClientException("The security token included in the request is invalid.")

    answer = calls.answer("TrentService.ListKeys", b"{}", stranger, "ipv4:127.0.0.1:1")
    assert (answer.status, answer.document["__type"]) == (400, "UnrecognizedClientException")
    [record] = sink.records
    assert record["errorCode"] == "UnrecognizedClientException"


def test_a_server_without_custom_key_stores_answers_unsupported_operation() -> None:
    calls, _, _ = make_calls()
    status, document = ask(calls, "DescribeCustomKeyStores", {})
    assert (status, document["__type"]) == (400, "UnsupportedOperationException")


def test_a_missing_key_is_not_found_with_status_400() -> None:
    calls, _, _ = make_calls()
    status, document = ask(calls, "DescribeKey", {"KeyId": "alias/none"})
    assert (status, document["__type"]) == (400, "NotFoundException")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFoundException("x"), 400),
        (InvalidCiphertextException("x"), 400),
        (AccessDeniedException("x"), 400),
        (ThrottlingException("x"), 400),
        (KMSInternalException("x"), 500),
        (DependencyTimeoutException("x"), 500),
        (DependencyUnavailableException("x"), 503),
    ],
)
def test_each_error_has_the_http_status_aws_uses(error: Any, status: int) -> None:
    assert http_status_of(error) == status


def test_key_states_are_spelt_as_aws_spells_them() -> None:
    assert pascal_out(KeyState.PENDING_DELETION) == "PendingDeletion"
    assert pascal_out(KeyState.DESTROYING) == "PendingDeletion"  # still PendingDeletion to callers
    assert pascal_out(KeyState.ENABLED) == "Enabled"


def test_the_answer_carries_the_request_id_of_its_audit_record() -> None:
    calls, sink, _ = make_calls()
    answer = calls.answer("TrentService.ListKeys", b"{}", lambda: ADMIN, "ipv4:127.0.0.1:1")
    refused = calls.answer("TrentService.DescribeKey", b"{}", lambda: ADMIN, "ipv4:127.0.0.1:1")
    assert [answer.request_id, refused.request_id] == [r["requestID"] for r in sink.records]
    assert answer.request_id != refused.request_id
