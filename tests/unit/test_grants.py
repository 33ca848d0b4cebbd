"""Grants after AWS CreateGrant: constraints, operations, ids and tokens."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from hsmstore.core.access.grants import (
    GRANT_OPERATIONS,
    GrantConstraints,
    GrantRecord,
    grant_id_from_token,
    grant_token_for,
    new_grant_id,
    validate_grant_id,
    validate_grant_request,
)
from hsmstore.errors import InvalidGrantIdException, InvalidGrantTokenException, ValidationException

GRANT_ID = "0c237476b39f8bc44e45212e08498fbe3151305030726c0590dd8d3e9f3d6a60"


def grant(operations: tuple[str, ...], constraints: GrantConstraints | None = None) -> GrantRecord:
    return GrantRecord(
        grant_id=GRANT_ID,
        key_id="0f6a4c8e-3b1d-4e0a-9c2f-5d7e8a9b0c1d",
        key_tenant="acme",
        name="",
        grantee_principal="arn:hsmstore:iam::acme:service/billing",
        retiring_principal="arn:hsmstore:iam::acme:role/ops",
        issuing_principal="arn:hsmstore:iam::acme:role/admin",
        operations=operations,
        constraints=constraints,
        creation_date=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_grant_operations_are_the_aws_create_grant_operations() -> None:
    assert {
        "Decrypt",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "ReEncryptFrom",
        "ReEncryptTo",
        "Sign",
        "Verify",
        "GetPublicKey",
        "CreateGrant",
        "RetireGrant",
        "DescribeKey",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateMac",
        "VerifyMac",
        "DeriveSharedSecret",
    } == GRANT_OPERATIONS


EQUALS = GrantConstraints(encryption_context_equals={"Dept": "finance", "app": "ledger"})
SUBSET = GrantConstraints(encryption_context_subset={"Dept": "finance"})


@pytest.mark.parametrize(
    ("constraints", "context", "allowed"),
    [
        (EQUALS, {"Dept": "finance", "app": "ledger"}, True),
        (EQUALS, {"app": "ledger", "Dept": "finance"}, True),  # order does not matter
        (EQUALS, {"Dept": "finance"}, False),  # a pair missing
        (EQUALS, {"Dept": "finance", "app": "ledger", "x": "y"}, False),  # a pair too many
        (EQUALS, None, False),
        (EQUALS, {"DEPT": "finance", "APP": "ledger"}, True),  # keys are not case sensitive
        (EQUALS, {"Dept": "Finance", "app": "ledger"}, False),  # values are
        (SUBSET, {"Dept": "finance"}, True),
        (SUBSET, {"Dept": "finance", "extra": "pair"}, True),
        (SUBSET, {"dept": "finance"}, True),
        (SUBSET, {"Dept": "FINANCE"}, False),
        (SUBSET, {"extra": "pair"}, False),
        (SUBSET, None, False),
        (SUBSET, {"Dept": "finance", "DEPT": "hr"}, False),  # keys differing only by case: ambiguous
        (GrantConstraints(encryption_context_equals={}), None, True),
        (GrantConstraints(encryption_context_equals={}), {"a": "b"}, False),
        (GrantConstraints(), {"anything": "goes"}, True),
    ],
)
def test_constraint_allows_the_contexts_aws_allows(
    constraints: GrantConstraints, context: Mapping[str, str] | None, allowed: bool
) -> None:
    assert constraints.allows(context) is allowed


@pytest.mark.parametrize(
    ("parent", "child", "admitted"),
    [
        (GrantConstraints(), None, True),
        (EQUALS, EQUALS, True),
        (EQUALS, GrantConstraints(encryption_context_equals={"DEPT": "finance", "APP": "ledger"}), True),
        (EQUALS, GrantConstraints(encryption_context_equals={"Dept": "finance"}), False),
        (EQUALS, SUBSET, False),
        (EQUALS, None, False),
        (SUBSET, SUBSET, True),
        (SUBSET, GrantConstraints(encryption_context_subset={"Dept": "finance", "x": "y"}), True),
        (SUBSET, GrantConstraints(encryption_context_equals={"Dept": "finance", "x": "y"}), True),
        (SUBSET, GrantConstraints(encryption_context_subset={"x": "y"}), False),
        (SUBSET, GrantConstraints(encryption_context_subset={"Dept": "hr"}), False),
        (SUBSET, GrantConstraints(), False),
        (SUBSET, None, False),
    ],
)
def test_grant_made_through_a_grant_must_be_equally_strict_or_stricter(
    parent: GrantConstraints, child: GrantConstraints | None, admitted: bool
) -> None:
    assert parent.admits(child) is admitted


@pytest.mark.parametrize("constraints", [GrantConstraints(), EQUALS, SUBSET])
def test_constraints_round_trip_through_stable_json(constraints: GrantConstraints) -> None:
    text = constraints.to_json()
    assert GrantConstraints.from_json(text) == constraints
    assert GrantConstraints.from_json(text).to_json() == text


def test_constraints_json_is_sorted_and_compact() -> None:
    assert EQUALS.to_json() == '{"EncryptionContextEquals":{"Dept":"finance","app":"ledger"}}'
    assert GrantConstraints(encryption_context_subset={"b": "2", "a": "1"}).to_json() == (
        '{"EncryptionContextSubset":{"a":"1","b":"2"}}'
    )


@pytest.mark.parametrize(
    "text",
    ["[]", '{"Other": {}}', '{"EncryptionContextEquals": ["a"]}', '{"EncryptionContextSubset": {"a": 1}}'],
)
def test_constraints_from_json_refuses_text_it_did_not_write(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        GrantConstraints.from_json(text)


@pytest.mark.parametrize(
    ("operations", "constraints", "operation", "context", "permitted"),
    [
        (("Encrypt",), None, "Encrypt", None, True),
        (("Encrypt",), None, "Decrypt", None, False),
        (("Encrypt", "Decrypt"), SUBSET, "Decrypt", {"Dept": "finance"}, True),
        (("Encrypt", "Decrypt"), SUBSET, "Decrypt", {"Dept": "hr"}, False),
        (("ReEncryptFrom",), EQUALS, "ReEncryptFrom", {"Dept": "finance", "app": "ledger"}, True),
        (("GenerateDataKeyPair",), EQUALS, "GenerateDataKeyPair", None, False),
        (("DescribeKey", "Encrypt"), SUBSET, "DescribeKey", None, True),  # constraint does not apply
        (("RetireGrant", "Encrypt"), SUBSET, "RetireGrant", None, True),
        (("CreateGrant", "Encrypt"), SUBSET, "CreateGrant", None, True),  # checked by admits()
        (("Sign",), SUBSET, "Sign", None, False),  # never valid: fails closed
    ],
)
def test_grant_permits_its_operations_within_its_constraints(
    operations: tuple[str, ...],
    constraints: GrantConstraints | None,
    operation: str,
    context: Mapping[str, str] | None,
    permitted: bool,
) -> None:
    assert grant(operations, constraints).permits(operation, context) is permitted


@pytest.mark.parametrize(
    ("operations", "principal", "retirable"),
    [
        (("Encrypt",), "arn:hsmstore:iam::acme:role/ops", True),  # the retiring principal
        (("Encrypt",), "arn:hsmstore:iam::acme:service/billing", False),  # grantee without RetireGrant
        (("Encrypt", "RetireGrant"), "arn:hsmstore:iam::acme:service/billing", True),
        (("Encrypt", "RetireGrant"), "arn:hsmstore:iam::acme:user/mallory", False),
    ],
)
def test_grant_is_retirable_by_retiring_principal_or_grantee_with_retire_grant(
    operations: tuple[str, ...], principal: str, retirable: bool
) -> None:
    assert grant(operations).retirable_by(principal) is retirable


@pytest.mark.parametrize(
    ("operations", "constraints"),
    [
        (("Encrypt",), None),
        (tuple(sorted(GRANT_OPERATIONS)), None),
        (("Encrypt", "Decrypt", "DescribeKey", "RetireGrant", "CreateGrant"), SUBSET),
        (("GenerateDataKeyPairWithoutPlaintext",), EQUALS),
        (("Sign",), GrantConstraints()),  # an empty constraints object constrains nothing
        (("Encrypt",), GrantConstraints(encryption_context_subset={f"k{i}": "v" for i in range(8)})),
        (("Encrypt",), GrantConstraints(encryption_context_equals={"k": "v" * 384})),
    ],
)
def test_valid_grant_request_passes(
    operations: tuple[str, ...], constraints: GrantConstraints | None
) -> None:
    validate_grant_request(operations, constraints)


@pytest.mark.parametrize(
    ("operations", "constraints", "reason"),
    [
        ((), None, "at least one"),
        (("Encrypt", "Frobnicate"), None, '"Frobnicate" is not one of'),
        (("encrypt",), None, "is not one of"),  # enum values are exact
        (
            ("Encrypt",),
            GrantConstraints(encryption_context_equals={"a": "b"}, encryption_context_subset={"a": "b"}),
            "not both",
        ),
        (("Encrypt", "Sign"), SUBSET, "not supported for the operations Sign"),
        (("GenerateMac", "VerifyMac"), EQUALS, "GenerateMac, VerifyMac"),
        (("GetPublicKey",), SUBSET, "GetPublicKey"),
        (("DeriveSharedSecret",), SUBSET, "DeriveSharedSecret"),
        (
            ("Encrypt",),
            GrantConstraints(encryption_context_subset={f"k{i}": "v" for i in range(9)}),
            "at most 8 pairs",
        ),
        (("Encrypt",), GrantConstraints(encryption_context_equals={"k": "v" * 385}), "at most 384"),
        (("Encrypt",), GrantConstraints(encryption_context_equals={"": "v"}), "at least 1 character"),
        (("Encrypt",), GrantConstraints(encryption_context_subset={"a": "1", "A": "2"}), "only by case"),
    ],
)
def test_invalid_grant_request_is_a_validation_exception(
    operations: tuple[str, ...], constraints: GrantConstraints | None, reason: str
) -> None:
    with pytest.raises(ValidationException, match=reason):
        validate_grant_request(operations, constraints)


def test_new_grant_ids_are_64_hex_characters_and_distinct() -> None:
    ids = {new_grant_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(grant_id) == 64 and validate_grant_id(grant_id) == grant_id for grant_id in ids)


@pytest.mark.parametrize("grant_id", ["", "abc", GRANT_ID.upper(), GRANT_ID + "0", GRANT_ID[:-1] + "g"])
def test_malformed_grant_id_is_invalid_grant_id_exception(grant_id: str) -> None:
    with pytest.raises(InvalidGrantIdException):
        validate_grant_id(grant_id)


def test_grant_token_names_its_grant() -> None:
    token = grant_token_for(GRANT_ID)
    assert token.startswith("HSMGT1")
    assert len(token) == 54
    assert grant_id_from_token(token) == GRANT_ID
    other = new_grant_id()
    assert grant_id_from_token(grant_token_for(other)) == other


def _flip(token: str, position: int) -> str:
    replacement = "A" if token[position] != "A" else "B"
    return token[:position] + replacement + token[position + 1 :]


TOKEN = grant_token_for(GRANT_ID)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "HSMGT1",
        GRANT_ID,  # a grant id is not a token
        "XXXGT1" + TOKEN[6:],
        _flip(TOKEN, 10),  # a changed grant id byte: the CRC no longer matches
        _flip(TOKEN, len(TOKEN) - 1),  # a changed CRC
        TOKEN[:-4],
        TOKEN + "AAAA",
        TOKEN + "==",
        TOKEN[:20] + "!" + TOKEN[21:],  # not base64url
        "HSMGT1" + "A" * 9000,
    ],
)
def test_malformed_grant_token_is_invalid_grant_token_exception(token: str) -> None:
    with pytest.raises(InvalidGrantTokenException):
        grant_id_from_token(token)
