"""Every request field is held to its AWS limit with a typed error that echoes at most a short prefix.

Issue 14, items 6, 7 and 9, in the core with fakes: each case is one use case
called with an input past a limit; the answer must be the contract's reason
(never KMSInternalException) and its message at most a short prefix of the
input (long echoes once pushed an error's trailers past 16 KiB).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from hsmstore.core.model import Caller
from hsmstore.core.paging import decode_marker
from hsmstore.core.use_cases import UseCases
from hsmstore.core.validation import ECHO_PREFIX_CHARS, check_text, echo
from hsmstore.errors import (
    InvalidAliasNameException,
    InvalidGrantIdException,
    InvalidMarkerException,
    KMSError,
    MalformedPolicyDocumentException,
    TagException,
    ValidationException,
)
from tests.unit.test_service import make_service

ADMIN = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
CAROL = "arn:hsmstore:iam::acme:user/carol"
HUGE = 100_000
FILLER = "Q"  # the long inputs are runs of it, so an echo of more than a prefix shows


@dataclass
class World:
    authz: UseCases
    key_id: str


@pytest.fixture
def world() -> World:
    use_cases, _store, _vault, _clock = make_service()
    return World(use_cases, use_cases.creation.create_key(ADMIN).key.key_id)


def deep_policy() -> str:
    return '{"Statement": ' + "[" * 999 + "]" * 999 + "}"


def policy_with_action(action: str) -> str:
    statement = {"Effect": "Allow", "Principal": "*", "Action": action, "Resource": "*"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


Call = Callable[[World], object]
CASES: list[tuple[str, Call, type[KMSError]]] = [
    (
        "description-nul",
        lambda w: w.authz.creation.create_key(ADMIN, description="a\x00b"),
        ValidationException,
    ),
    (
        "update-description-nul",
        lambda w: w.authz.keys.update_key_description(ADMIN, w.key_id, "a\x00b"),
        ValidationException,
    ),
    ("tag-value-newline", lambda w: w.authz.creation.create_key(ADMIN, tags=[("k", "v\n")]), TagException),
    ("tag-key-tab", lambda w: w.authz.tags.tag_resource(ADMIN, w.key_id, [("a\tb", "v")]), TagException),
    (
        "policy-nested-999",
        lambda w: w.authz.creation.create_key(ADMIN, policy=deep_policy()),
        MalformedPolicyDocumentException,
    ),
    (
        "policy-number-5000-digits",
        lambda w: w.authz.authorization.put_key_policy(
            ADMIN, w.key_id, "default", '{"Version": ' + "1" * 5000 + "}", False
        ),
        MalformedPolicyDocumentException,
    ),
    (
        "policy-long-action",
        lambda w: w.authz.authorization.put_key_policy(
            ADMIN, w.key_id, "", policy_with_action("kms:" + FILLER * 30_000), False
        ),
        MalformedPolicyDocumentException,
    ),
    (
        "alias-trailing-newline",
        lambda w: w.authz.aliases.create_alias(ADMIN, "alias/prod\n", w.key_id),
        InvalidAliasNameException,
    ),
    (
        "encryption-context-65536-pairs",
        lambda w: w.authz.crypto.encrypt(ADMIN, w.key_id, b"p", {f"k{n}": "" for n in range(65_536)}),
        ValidationException,
    ),
    (
        "source-context-65536-pairs",
        lambda w: w.authz.crypto.re_encrypt(
            ADMIN, b"x" * 40, w.key_id, {f"k{n}": "" for n in range(65_536)}, {}
        ),
        ValidationException,
    ),
    ("marker-too-long", lambda w: w.authz.keys.list_keys(ADMIN, None, FILLER * HUGE), ValidationException),
    (
        "marker-control-character",
        lambda w: w.authz.aliases.list_aliases(ADMIN, "", None, "a\nb"),
        ValidationException,
    ),
    (
        "grant-token-too-long",
        lambda w: w.authz.keys.describe_key(ADMIN, w.key_id, [FILLER * 8193]),
        ValidationException,
    ),
    (
        "grant-operation-huge",
        lambda w: w.authz.authorization.create_grant(
            ADMIN, w.key_id, CAROL, "", [FILLER * HUGE], None, [], ""
        ),
        ValidationException,
    ),
    (
        "grant-name-trailing-newline",
        lambda w: w.authz.authorization.create_grant(
            ADMIN, w.key_id, CAROL, "", ["Encrypt"], None, [], "nightly\n"
        ),
        ValidationException,
    ),
    (
        "grant-id-trailing-newline",
        lambda w: w.authz.authorization.list_grants(ADMIN, w.key_id, None, "", "a" * 64 + "\n", ""),
        InvalidGrantIdException,
    ),
    (
        "retire-grant-token-too-long",
        lambda w: w.authz.authorization.retire_grant(ADMIN, FILLER * 8193, "", ""),
        ValidationException,
    ),
    (
        "untag-more-keys-than-a-key-has",
        lambda w: w.authz.tags.untag_resource(ADMIN, w.key_id, [f"k{n}" for n in range(51)]),
        ValidationException,
    ),
    (
        "grant-id-too-long",
        lambda w: w.authz.authorization.revoke_grant(ADMIN, w.key_id, FILLER * 129),
        ValidationException,
    ),
    (
        "identity-policy-name-trailing-newline",
        lambda w: w.authz.identity_policies.put_identity_policy(
            ADMIN, CAROL, "use\n", policy_with_action("kms:Encrypt")
        ),
        ValidationException,
    ),
    (
        "simulate-operation-huge",
        lambda w: w.authz.authorization.simulate(ADMIN, ADMIN.principal, FILLER * HUGE, "", {}, "", []),
        ValidationException,
    ),
    (
        "simulate-context-65536-pairs",
        lambda w: w.authz.authorization.simulate(
            ADMIN, ADMIN.principal, "Encrypt", w.key_id, {f"k{n}": "" for n in range(65_536)}, "", []
        ),
        ValidationException,
    ),
    (
        "simulate-via-service-newline",
        lambda w: w.authz.authorization.simulate(
            ADMIN, ADMIN.principal, "Encrypt", w.key_id, {}, "backup\n", []
        ),
        ValidationException,
    ),
    (
        "key-policy-name-huge",
        lambda w: w.authz.authorization.get_key_policy(ADMIN, w.key_id, FILLER * HUGE),
        ValidationException,
    ),
]


@pytest.mark.parametrize(("name", "call", "error"), CASES, ids=[case[0] for case in CASES])
def test_input_past_its_limit_is_the_contracts_error_with_a_short_message(
    world: World, name: str, call: Call, error: type[KMSError]
) -> None:
    with pytest.raises(KMSError) as refused:
        call(world)
    assert type(refused.value) is error, refused.value.message
    message = refused.value.message
    assert len(message) <= 512  # room for a list of allowed values, not for the input
    assert FILLER * (ECHO_PREFIX_CHARS + 1) not in message


def test_echo_quotes_a_short_prefix_and_escapes_control_characters() -> None:
    assert echo("kms:Foo") == '"kms:Foo"'
    assert echo("a\nb\x00") == '"a\\x0ab\\x00"'
    assert echo("x" * 40) == '"' + "x" * ECHO_PREFIX_CHARS + '..." (40 characters)'


def test_check_text_names_the_field_and_the_limit() -> None:
    with pytest.raises(ValidationException, match="Description must be 0 to 8 characters long, not 9"):
        check_text("x" * 9, "Description", max_length=8)


def test_marker_whose_value_holds_a_control_character_is_invalid_marker() -> None:
    forged = base64.urlsafe_b64encode(b"k1:\x00").decode().rstrip("=")
    with pytest.raises(InvalidMarkerException):
        decode_marker("k", forged)
