"""The four key identifier forms and the AWS error for everything else."""

from __future__ import annotations

import pytest

from hsmstore.core.identifiers import (
    IdentifierKind,
    alias_arn,
    key_arn,
    parse_key_identifier,
    validate_alias_name,
)
from hsmstore.errors import (
    InvalidAliasNameException,
    InvalidArnException,
    KMSError,
    NotFoundException,
    ValidationException,
)

KEY_ID = "0f6a4c8e-3b1d-4e0a-9c2f-5d7e8a9b0c1d"


def test_key_id_parses() -> None:
    reference = parse_key_identifier(KEY_ID, "local")
    assert (reference.kind, reference.value, reference.tenant) == (IdentifierKind.KEY_ID, KEY_ID, None)


def test_key_id_is_normalised_to_lower_case() -> None:
    assert parse_key_identifier(KEY_ID.upper(), "local").value == KEY_ID


def test_key_arn_parses_with_tenant() -> None:
    reference = parse_key_identifier(key_arn("local", "acme", KEY_ID), "local")
    assert (reference.kind, reference.value, reference.tenant) == (IdentifierKind.KEY_ID, KEY_ID, "acme")


def test_alias_name_parses() -> None:
    reference = parse_key_identifier("alias/app/billing-key_1", "local")
    assert (reference.kind, reference.value) == (IdentifierKind.ALIAS, "alias/app/billing-key_1")


def test_alias_arn_parses_with_tenant() -> None:
    reference = parse_key_identifier(alias_arn("local", "acme", "alias/app"), "local")
    assert (reference.kind, reference.value, reference.tenant) == (IdentifierKind.ALIAS, "alias/app", "acme")


@pytest.mark.parametrize(
    ("identifier", "error"),
    [
        ("", ValidationException),
        ("x" * 2049, ValidationException),
        ("not-a-key", NotFoundException),
        ("0f6a4c8e3b1d4e0a9c2f5d7e8a9b0c1d", NotFoundException),  # UUID without dashes is not a key id
        ("alias/", NotFoundException),
        ("alias/bad name", NotFoundException),
        ("arn:aws:kms:us-east-1:111122223333:key/" + KEY_ID, InvalidArnException),
        ("arn:hsmstore:kms:local:acme:secret/" + KEY_ID, InvalidArnException),
        ("arn:hsmstore:kms:local:acme:alias/bad name", InvalidArnException),
        ("arn:hsmstore:kms:eu-west-1:acme:key/" + KEY_ID, NotFoundException),
        ("arn:hsmstore:kms:local:acme:key/not-a-uuid", NotFoundException),
    ],
)
def test_malformed_identifier_gets_the_aws_error(identifier: str, error: type[KMSError]) -> None:
    with pytest.raises(error):
        parse_key_identifier(identifier, "local")


# Issue 14, item 9: re.match with "$" let a trailing newline through ("alias/prod\n"
# beside "alias/prod"); every identifier is matched whole.
@pytest.mark.parametrize(
    ("identifier", "error"),
    [
        ("alias/prod\n", NotFoundException),
        (alias_arn("local", "acme", "alias/prod") + "\n", InvalidArnException),
        (key_arn("local", "acme", KEY_ID) + "\n", InvalidArnException),
    ],
)
def test_identifier_with_a_trailing_newline_names_nothing(identifier: str, error: type[KMSError]) -> None:
    with pytest.raises(error):
        parse_key_identifier(identifier, "local")


@pytest.mark.parametrize(
    "alias_name",
    [
        "alias/prod\n",
        "alias/" + "a" * 250 + "\n",  # 257 characters: PostgreSQL refused to store it (INTERNAL)
    ],
)
def test_create_alias_name_outside_the_aws_pattern_is_invalid_alias_name(alias_name: str) -> None:
    with pytest.raises(InvalidAliasNameException):
        validate_alias_name(alias_name)


def test_alias_name_of_exactly_256_characters_is_valid() -> None:
    assert validate_alias_name("alias/" + "a" * 250) == "alias/" + "a" * 250


def test_not_found_alias_echoes_only_a_short_prefix() -> None:
    with pytest.raises(NotFoundException) as refused:
        parse_key_identifier("alias/" + "x" * 2000 + "!", "local")
    assert len(refused.value.message) < 120
