"""The policy language: AWS key policy grammar, matching and IAM condition semantics."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from hsmstore.core.access.default_policies import (
    default_admin_identity_policy,
    default_key_policy,
    service_managed_key_policy,
)
from hsmstore.core.access.policy import (
    IAM_ACTIONS,
    KMS_ACTIONS,
    MAX_POLICY_BYTES,
    ConditionContext,
    Effect,
    PolicyKind,
    PrincipalMatch,
    Statement,
    parse_policy,
)
from hsmstore.errors import MalformedPolicyDocumentException, ValidationException

ALICE = "arn:hsmstore:iam::acme:user/alice"
KEY_ARN = "arn:hsmstore:kms:local:acme:key/0f6a4c8e-3b1d-4e0a-9c2f-5d7e8a9b0c1d"
BASE: dict[str, Any] = {"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}
_DROP = object()


def statement(**changes: Any) -> dict[str, Any]:
    """BASE with members replaced; a member set to _DROP is removed."""
    result = dict(BASE)
    for member, value in changes.items():
        if value is _DROP:
            result.pop(member, None)
        else:
            result[member] = value
    return result


def policy_text(*statements: Mapping[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def only_statement(text: str, kind: PolicyKind = "key") -> Statement:
    document = parse_policy(text, kind=kind)
    assert len(document.statements) == 1
    return document.statements[0]


# --- the action catalogue ----------------------------------------------------------------------------


def test_kms_actions_hold_the_aws_kms_permissions() -> None:
    for action in (
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPair",
        "kms:CreateGrant",
        "kms:ListRetirableGrants",
        "kms:GetKeyLastUsage",
        "kms:PutKeyPolicy",
        "kms:GetKeyPolicy",
        "kms:ListKeyPolicies",
        "kms:RotateKeyOnDemand",
        "kms:ListKeyRotations",
        "kms:CreateAlias",
        "kms:TagResource",
        "kms:ImportKeyMaterial",
        "kms:Sign",
        "kms:VerifyMac",
        "kms:ConnectCustomKeyStore",
        "kms:ReplicateKey",
    ):
        assert action in KMS_ACTIONS
    assert "kms:ReEncrypt" not in KMS_ACTIONS  # the permissions are ReEncryptFrom and ReEncryptTo
    assert all(action.startswith("kms:") for action in KMS_ACTIONS)
    assert {
        "iam:PutIdentityPolicy",
        "iam:GetIdentityPolicy",
        "iam:ListIdentityPolicies",
        "iam:DeleteIdentityPolicy",
        "iam:SimulatePrincipalPolicy",
    } == IAM_ACTIONS


# --- documents -----------------------------------------------------------------------------------


def test_document_keeps_the_callers_text_as_given() -> None:
    text = (
        '{\n  "Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}\n}'
    )
    document = parse_policy(text, kind="key")
    assert document.text == text
    assert document.kind == "key"
    assert document.version is None
    assert [s.effect for s in document.statements] == [Effect.ALLOW]


def test_version_id_and_statement_list_are_read() -> None:
    text = json.dumps(
        {
            "Version": "2008-10-17",
            "Id": "key-consolepolicy-3",
            "Statement": [statement(Sid="First"), statement(Effect="Deny")],
        }
    )
    document = parse_policy(text, kind="key")
    assert (document.version, document.id) == ("2008-10-17", "key-consolepolicy-3")
    assert [(s.index, s.sid, s.effect) for s in document.statements] == [
        (0, "First", Effect.ALLOW),
        (1, None, Effect.DENY),
    ]
    assert document.statements[0].label == 'statement 0 (Sid "First")'
    assert document.statements[1].label == "statement 1"


def _padded(size: int) -> str:
    text = policy_text(statement(Sid="Pad"))
    padding = size - len(text.encode("utf-8"))
    return text[:-1] + " " * padding + "}"


def test_policy_of_exactly_the_size_limit_parses() -> None:
    text = _padded(MAX_POLICY_BYTES)
    assert len(text.encode("utf-8")) == MAX_POLICY_BYTES
    parse_policy(text, kind="key")


def test_policy_over_the_size_limit_is_a_validation_exception() -> None:
    with pytest.raises(ValidationException, match="32768"):
        parse_policy(_padded(MAX_POLICY_BYTES + 1), kind="key")


# Issue 14, item 7: json's own limits failed as untyped errors (INTERNAL).
def test_policy_nested_999_levels_is_malformed_not_a_recursion_error() -> None:
    text = policy_text(statement(Condition={"StringEquals": {"kms:CallerAccount": "[" * 999 + "]" * 999}}))
    parse_policy(text, kind="key")  # brackets inside a string are text, not nesting
    nested = '{"Statement": ' + "[" * 999 + "]" * 999 + "}"
    with pytest.raises(MalformedPolicyDocumentException, match="levels deep"):
        parse_policy(nested, kind="key")


def test_policy_with_a_number_of_5000_digits_is_malformed_not_a_value_error() -> None:
    text = policy_text(statement(Condition={"StringEquals": {"kms:CallerAccount": "N"}}))
    with pytest.raises(MalformedPolicyDocumentException, match="number"):
        parse_policy(text.replace('"N"', "1" * 5000), kind="key")


def test_a_number_of_40_digits_that_policies_held_before_still_parses() -> None:
    """Stored policies are parsed again on every load: a tighter bound would lock their keys out."""
    text = policy_text(statement(Condition={"StringEquals": {"kms:CallerAccount": "N"}}))
    assert parse_policy(text.replace('"N"', "1" * 40), kind="key").statements


def test_an_unterminated_string_of_escaped_quotes_is_refused_in_one_pass() -> None:
    """A denial-of-service guard, not a speed target: the depth check once rescanned the rest of
    the text at every escaped quote (quadratic: 4.5 s for these 32 KiB, the GIL held, every
    caller of the server frozen). One pass takes milliseconds; 2 s leaves room for a loaded CI."""
    text = '"' + '\\"' * 16_383
    started = time.perf_counter()
    with pytest.raises(MalformedPolicyDocumentException, match="not valid JSON"):
        parse_policy(text, kind="identity")
    assert time.perf_counter() - started < 2.0


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    value = '[[[[[[[[[[[["[[[{{{{{{{{{{'  # json.dumps escapes the quote inside the string
    text = policy_text(statement(Condition={"StringEquals": {"kms:CallerAccount": value}}))
    assert parse_policy(text, kind="key").statements


def test_policy_with_nan_is_malformed() -> None:
    text = policy_text(statement(Condition={"StringEquals": {"kms:CallerAccount": "N"}}))
    with pytest.raises(MalformedPolicyDocumentException, match="NaN"):
        parse_policy(text.replace('"N"', "NaN"), kind="key")


def test_malformed_policy_echoes_only_a_short_prefix_of_a_long_name() -> None:
    long_action = "kms:" + "X" * 30_000
    with pytest.raises(MalformedPolicyDocumentException) as refused:
        parse_policy(policy_text(statement(Action=long_action)), kind="key")
    assert len(refused.value.message) < 200
    assert "30004 characters" in refused.value.message


def test_size_limit_counts_utf8_bytes_not_characters() -> None:
    text = policy_text(statement(Sid="Pad")).replace('"Pad"', '"' + "é" * (MAX_POLICY_BYTES // 2) + '"')
    assert len(text) < MAX_POLICY_BYTES < len(text.encode("utf-8"))
    with pytest.raises(ValidationException):
        parse_policy(text, kind="key")


def test_empty_policy_is_a_validation_exception() -> None:
    with pytest.raises(ValidationException):
        parse_policy("", kind="key")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"Statement": [', "Policy is not valid JSON: Expecting value at line 1 column 16 (char 15)"),
        ("{'Statement': []}", "Policy is not valid JSON: Expecting property name enclosed in double quotes"),
        ("[]", "Policy must be a JSON object"),
        ('{"Statement": {}, "Statement": {}}', 'Policy has a duplicate member "Statement"'),
        ('{"Statement": [], "Extra": 1}', 'Policy has an unknown member "Extra"'),
        ('{"Version": "2012-10-18", "Statement": []}', 'Version must be "2012-10-17" or "2008-10-17"'),
        ('{"Id": 7, "Statement": []}', "Id must be a string"),
        ("{}", "Statement must be an object or a non-empty list"),
        ('{"Statement": []}', "Statement must be an object or a non-empty list"),
        ('{"Statement": "Allow"}', "Statement must be an object or a non-empty list"),
        ('{"Statement": [' + json.dumps(BASE)[:-1] + ', "Effect": "Deny"}]}', 'duplicate member "Effect"'),
        ('{"Statement": ["x"]}', "Statement 0: a statement must be a JSON object"),
        (policy_text(BASE).replace("kms:Encrypt", "kms:Encrypt\u4e2d"), "not allowed (U+4E2D)"),
    ],
)
def test_malformed_document_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(MalformedPolicyDocumentException) as raised:
        parse_policy(text, kind="key")
    assert message in raised.value.message


KEY_MALFORMED: list[tuple[list[dict[str, Any]], str]] = [
    (
        [
            statement(Sid="A"),
            statement(Sid="AllowUse", Condition={"StringEq": {"kms:CallerAccount": "acme"}}),
        ],
        'Statement 1 (Sid "AllowUse"): unknown condition operator "StringEq"',
    ),
    ([statement(NotPrincipal={"HSM": ALICE})], "Statement 0: NotPrincipal is not supported"),
    ([statement(NotAction="kms:Decrypt")], "Statement 0: NotAction is not supported"),
    ([statement(NotResource="*")], "Statement 0: NotResource is not supported"),
    ([statement(Effects="Allow")], 'Statement 0: unknown statement member "Effects"'),
    ([statement(Sid=1)], "Statement 0: Sid must be a string"),
    (
        [statement(Sid="Same"), statement(Sid="Other"), statement(Sid="Same")],
        'Statement 2 (Sid "Same"): Sid "Same" is already used by statement 0',
    ),
    ([statement(Effect=_DROP)], 'Statement 0: Effect must be "Allow" or "Deny"'),
    ([statement(Effect="allow")], 'Statement 0: Effect must be "Allow" or "Deny"'),
    ([statement(Principal=_DROP)], "Statement 0: Principal is required in a key policy"),
    ([statement(Principal={"AWS": ALICE})], 'principal type "AWS" is not supported; use "HSM"'),
    ([statement(Principal={})], "Principal must be"),
    ([statement(Principal="arn:hsmstore:iam::acme:root")], "Principal must be"),
    ([statement(Principal={"HSM": []})], "non-empty list"),
    (
        [statement(Principal={"HSM": "arn:hsmstore:iam::acme:user/*"})],
        'invalid principal "arn:hsmstore:iam::acme:user/*"',
    ),
    ([statement(Principal={"HSM": "arn:hsmstore:iam::acme:group/x"})], "invalid principal"),
    # No SPIFFE identity can be this principal (core/identifiers.py: one name segment).
    ([statement(Principal={"HSM": "arn:hsmstore:iam::acme:role/team/admin"})], "invalid principal"),
    ([statement(Principal={"HSM": "arn:aws:iam::111122223333:root"})], "invalid principal"),
    ([statement(Principal={"HSM": "arn:hsmstore:iam::Acme:root"})], "invalid principal"),
    ([statement(Action=_DROP)], "Statement 0: Action is required"),
    ([statement(Action=[])], "Action must be a non-empty string"),
    ([statement(Action=["kms:Encrypt", 3])], "Action must be a non-empty string"),
    ([statement(Action="kms:Encrpyt")], 'Statement 0: unknown action "kms:Encrpyt"'),
    ([statement(Action="kms:ReEncrypt")], 'unknown action "kms:ReEncrypt"'),
    ([statement(Action="kms:Frob*")], 'Action "kms:Frob*" matches no known action'),
    ([statement(Action="s3:GetObject")], 'Action "s3:GetObject" must be "kms:<Operation>"'),
    ([statement(Action="Encrypt")], 'Action "Encrypt" must be "kms:<Operation>"'),
    ([statement(Action="iam:PutIdentityPolicy")], "iam actions are not allowed in a key policy"),
    ([statement(Resource=_DROP)], "Statement 0: Resource is required"),
    ([statement(Resource="key/1234")], 'Resource "key/1234" must be "*" or a resource name'),
    ([statement(Condition=["StringEquals"])], "Condition must be a JSON object"),
    (
        [statement(Condition={"StringEquals": {}})],
        'condition operator "StringEquals" must map condition keys',
    ),
    ([statement(Condition={"StringEquals": "kms:CallerAccount"})], "must map condition keys to values"),
    (
        [statement(Condition={"stringequals": {"kms:CallerAccount": "a"}})],
        'unknown condition operator "stringequals"',
    ),
    (
        [statement(Condition={"ForSomeValues:StringEquals": {"kms:CallerAccount": "a"}})],
        "unknown condition operator",
    ),
    ([statement(Condition={"NumericEquals": {"kms:CallerAccount": "1"}})], "unknown condition operator"),
    ([statement(Condition={"NullIfExists": {"kms:ViaService": "true"}})], "Null takes neither IfExists"),
    (
        [statement(Condition={"ForAllValues:Null": {"kms:EncryptionContextKeys": "true"}})],
        "Null takes neither",
    ),
    ([statement(Condition={"StringEquals": {"kms:KeyOrigin": "x"}})], "unknown condition key"),
    ([statement(Condition={"StringEquals": {"aws:SourceIp": "x"}})], "unknown condition key"),
    (
        [statement(Condition={"StringEquals": {"kms:EncryptionContext:": "x"}})],
        "needs an encryption context key",
    ),
    (
        [statement(Condition={"StringEquals": {"kms:EncryptionContextKeys": "a"}})],
        "is multivalued: use ForAllValues:StringEquals or ForAnyValue:StringEquals",
    ),
    ([statement(Condition={"StringLike": {"kms:GrantOperations": "Enc*"}})], "is multivalued"),
    (
        [statement(Condition={"Bool": {"kms:CallerAccount": "true"}})],
        'needs a boolean condition key, not "kms:CallerAccount"',
    ),
    (
        [statement(Condition={"StringEquals": {"kms:GrantIsForAWSResource": "true"}})],
        'is boolean: use "Bool"',
    ),
    (
        [statement(Condition={"Bool": {"kms:GrantIsForAWSResource": "yes"}})],
        'value "yes" must be "true" or "false"',
    ),
    ([statement(Condition={"Null": {"kms:ViaService": "maybe"}})], 'value "maybe" must be "true" or "false"'),
    ([statement(Condition={"StringEquals": {"kms:ViaService": []}})], "has no values"),
    ([statement(Condition={"StringEquals": {"kms:ViaService": {"a": "b"}}})], "values must be strings"),
    ([statement(Condition={"StringEquals": {"kms:ViaService": [None]}})], "values must be strings"),
]


@pytest.mark.parametrize(("statements", "message"), KEY_MALFORMED)
def test_malformed_key_policy_statement_names_the_statement_and_reason(
    statements: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(MalformedPolicyDocumentException) as raised:
        parse_policy(policy_text(*statements), kind="key")
    assert message in raised.value.message


def test_malformed_message_reads_statement_index_sid_and_reason_exactly() -> None:
    text = policy_text(
        statement(Sid="A"),
        statement(Sid="AllowUse", Condition={"StringEq": {"kms:CallerAccount": "acme"}}),
    )
    with pytest.raises(MalformedPolicyDocumentException) as raised:
        parse_policy(text, kind="key")
    assert raised.value.message == 'Statement 1 (Sid "AllowUse"): unknown condition operator "StringEq"'


IDENTITY_BASE = {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}


@pytest.mark.parametrize(
    ("member", "value", "message"),
    [
        ("Principal", "*", "Statement 0: Principal is not allowed in an identity policy"),
        ("Sid", "Allow use", "Sid in an identity policy may hold only ASCII letters and digits"),
        ("Action", "s3:*", 'must be "kms:<Operation>" or "iam:<Operation>"'),
        ("Action", "iam:PutUserPolicy", 'unknown action "iam:PutUserPolicy"'),
    ],
)
def test_malformed_identity_policy_statement_names_the_statement_and_reason(
    member: str, value: object, message: str
) -> None:
    text = policy_text({**IDENTITY_BASE, member: value})
    with pytest.raises(MalformedPolicyDocumentException) as raised:
        parse_policy(text, kind="identity")
    assert message in raised.value.message


@pytest.mark.parametrize(
    "changes",
    [
        {"Action": "KMS:encrypt"},  # actions are not case sensitive
        {"Action": ["kms:Get*", "kms:List*", "kms:Describe*"]},
        {"Action": "kms:ReEncrypt?o"},
        {"Action": "*"},
        {"Principal": {"HSM": "*"}},
        {"Principal": {"HSM": ["arn:hsmstore:iam::acme:root", "arn:hsmstore:iam::other:service/billing"]}},
        {"Resource": ["arn:hsmstore:kms:*:acme:key/*"]},
        {"Sid": "Allow use of the key"},  # key policies take any Sid text
        {"Sid": ""},
        {"Condition": {}},
        {"Condition": {"Bool": {"kms:GrantIsForAWSResource": True}}},
        {"Condition": {"BoolIfExists": {"kms:GrantIsForAWSResource": "TRUE"}}},
        {"Condition": {"Null": {"kms:EncryptionContextKeys": False}}},
        {"Condition": {"StringEquals": {"KMS:CALLERACCOUNT": 12345}}},
        {"Condition": {"ForAnyValue:StringLikeIfExists": {"kms:EncryptionContextKeys": "app*"}}},
        {"Condition": {"ForAllValues:StringNotEqualsIgnoreCase": {"kms:GrantOperations": ["Decrypt"]}}},
    ],
)
def test_valid_key_policy_statement_parses(changes: dict[str, Any]) -> None:
    only_statement(policy_text(statement(**changes)))


def test_identity_policy_may_name_iam_actions() -> None:
    found = only_statement(policy_text({**IDENTITY_BASE, "Action": ["iam:*", "kms:Describe*"]}), "identity")
    assert found.principals is None
    assert found.matches_action("iam:PutIdentityPolicy")


@pytest.mark.parametrize(
    "text",
    [default_key_policy("acme"), service_managed_key_policy("acme", "billing")],
)
def test_default_key_policies_parse(text: str) -> None:
    assert parse_policy(text, kind="key").statements


def test_default_admin_identity_policy_parses_and_allows_kms_and_iam_on_everything() -> None:
    (found,) = parse_policy(default_admin_identity_policy(), kind="identity").statements
    assert found.effect is Effect.ALLOW
    assert all(found.matches_action(action) for action in KMS_ACTIONS | IAM_ACTIONS)
    assert found.matches_resource("*") and found.matches_resource(KEY_ARN)


def test_default_key_policy_is_the_aws_default() -> None:
    document = json.loads(default_key_policy("acme"))
    assert document["Statement"] == [
        {
            "Sid": "Enable IAM policies",
            "Effect": "Allow",
            "Principal": {"HSM": "arn:hsmstore:iam::acme:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]


def test_service_managed_key_policy_follows_aws_managed_keys() -> None:
    first, second = json.loads(service_managed_key_policy("acme", "billing"))["Statement"]
    assert first["Principal"] == {"HSM": "*"}
    assert set(first["Action"]) == {
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncrypt*",
        "kms:GenerateDataKey*",
        "kms:DescribeKey",
        "kms:CreateGrant",
    }
    assert first["Condition"] == {"StringEquals": {"kms:CallerAccount": "acme", "kms:ViaService": "billing"}}
    assert second["Principal"] == {"HSM": "arn:hsmstore:iam::acme:root"}
    assert second["Action"] == ["kms:Describe*", "kms:Get*", "kms:List*"]


# --- matching ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "action", "matches"),
    [
        ("kms:Encrypt", "kms:Encrypt", True),
        ("kms:Encrypt", "kms:Decrypt", False),
        ("kms:encrypt", "kms:Encrypt", True),
        ("KMS:Encrypt", "kms:Encrypt", True),
        ("kms:*", "kms:ScheduleKeyDeletion", True),
        ("kms:*", "iam:PutIdentityPolicy", False),
        ("*", "kms:Decrypt", True),
        ("kms:ReEncrypt*", "kms:ReEncryptFrom", True),
        ("kms:ReEncrypt*", "kms:Encrypt", False),
        ("kms:GenerateDataKey*", "kms:GenerateDataKeyPairWithoutPlaintext", True),
        ("kms:Get*", "kms:GetKeyPolicy", True),
        ("kms:Get*", "kms:PutKeyPolicy", False),
        ("kms:get*", "kms:GetPublicKey", True),
        ("kms:ReEncrypt?o", "kms:ReEncryptTo", True),
        ("kms:ReEncrypt?o", "kms:ReEncryptFrom", False),
        (["kms:Decrypt", "kms:List*"], "kms:ListAliases", True),
        (["kms:Decrypt", "kms:List*"], "kms:Encrypt", False),
    ],
)
def test_action_matching_is_case_insensitive_with_wildcards(
    actions: str | list[str], action: str, matches: bool
) -> None:
    assert only_statement(policy_text(statement(Action=actions))).matches_action(action) is matches


@pytest.mark.parametrize(
    ("resources", "resource", "matches"),
    [
        ("*", KEY_ARN, True),
        ("*", "*", True),
        (KEY_ARN, KEY_ARN, True),
        (KEY_ARN, "*", False),  # an action on no key is authorised against "*" only
        ("arn:hsmstore:kms:local:acme:key/*", KEY_ARN, True),
        ("arn:hsmstore:kms:local:other:key/*", KEY_ARN, False),
        ("arn:hsmstore:kms:*:acme:key/*", KEY_ARN, True),
        ("arn:hsmstore:kms:local:ACME:key/*", KEY_ARN, False),  # resource names are case sensitive
        ("arn:hsmstore:kms:local:acme:key/0f6a4c8e-????-*", KEY_ARN, True),
        ("arn:hsmstore:kms:local:acme:alias/*", KEY_ARN, False),
    ],
)
def test_resource_matching_is_case_sensitive_with_wildcards(
    resources: str | list[str], resource: str, matches: bool
) -> None:
    assert only_statement(policy_text(statement(Resource=resources))).matches_resource(resource) is matches


@pytest.mark.parametrize(
    ("principal", "caller", "caller_tenant", "match"),
    [
        ("*", ALICE, "acme", PrincipalMatch.DIRECT),
        ({"HSM": "*"}, ALICE, "acme", PrincipalMatch.DIRECT),
        ({"HSM": ALICE}, ALICE, "acme", PrincipalMatch.DIRECT),
        ({"HSM": [ALICE, "arn:hsmstore:iam::acme:root"]}, ALICE, "acme", PrincipalMatch.DIRECT),
        ({"HSM": "arn:hsmstore:iam::acme:root"}, ALICE, "acme", PrincipalMatch.ROOT),
        (
            {"HSM": "arn:hsmstore:iam::acme:root"},
            "arn:hsmstore:iam::other:user/bob",
            "other",
            PrincipalMatch.NONE,
        ),
        ({"HSM": "arn:hsmstore:iam::acme:user/bob"}, ALICE, "acme", PrincipalMatch.NONE),
        ({"HSM": "arn:hsmstore:iam::acme:user/Alice"}, ALICE, "acme", PrincipalMatch.NONE),
    ],
)
def test_principal_matches_star_own_arn_or_tenant_root(
    principal: object, caller: str, caller_tenant: str, match: PrincipalMatch
) -> None:
    found = only_statement(policy_text(statement(Principal=principal)))
    assert found.principal_match(caller, caller_tenant) is match


def test_identity_statement_covers_its_principal_directly() -> None:
    found = only_statement(policy_text(IDENTITY_BASE), "identity")
    assert found.principal_match(ALICE, "acme") is PrincipalMatch.DIRECT


def test_statements_for_splits_deny_and_allow_and_caches_per_action() -> None:
    document = parse_policy(
        policy_text(statement(Action="kms:*"), statement(Effect="Deny"), statement(Action="kms:Decrypt")),
        kind="key",
    )
    denies, allows = document.statements_for("kms:Encrypt")
    assert [s.index for s in denies] == [1]
    assert [s.index for s in allows] == [0]
    assert document.statements_for("kms:Encrypt") is document.statements_for("kms:Encrypt")
    assert [s.index for s in document.statements_for("kms:Decrypt")[1]] == [0, 2]


# --- conditions ----------------------------------------------------------------------------------


def context(**values: Any) -> ConditionContext:
    values.setdefault("principal", ALICE)
    values.setdefault("caller_tenant", "acme")
    values.setdefault("action", "kms:Encrypt")
    return ConditionContext(**values)


EC = {"Dept": "finance", "app": "ledger"}

CONDITION_CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    # StringEquals: case-sensitive values, ORed; false when missing
    ({"StringEquals": {"kms:ViaService": "billing"}}, {"via_service": "billing"}, True),
    ({"StringEquals": {"kms:ViaService": "billing"}}, {"via_service": "Billing"}, False),
    ({"StringEquals": {"kms:ViaService": ["ledger", "billing"]}}, {"via_service": "billing"}, True),
    ({"StringEquals": {"kms:ViaService": "billing"}}, {}, False),
    # StringNotEquals: true when missing
    ({"StringNotEquals": {"kms:ViaService": "billing"}}, {"via_service": "billing"}, False),
    ({"StringNotEquals": {"kms:ViaService": "billing"}}, {"via_service": "ledger"}, True),
    ({"StringNotEquals": {"kms:ViaService": ["ledger", "billing"]}}, {"via_service": "ledger"}, False),
    ({"StringNotEquals": {"kms:ViaService": "billing"}}, {}, True),
    # IgnoreCase
    ({"StringEqualsIgnoreCase": {"kms:ViaService": "BILLING"}}, {"via_service": "billing"}, True),
    ({"StringEqualsIgnoreCase": {"kms:ViaService": "BILLING"}}, {"via_service": "ledger"}, False),
    ({"StringEqualsIgnoreCase": {"kms:ViaService": "BILLING"}}, {}, False),
    ({"StringNotEqualsIgnoreCase": {"kms:ViaService": "BILLING"}}, {"via_service": "billing"}, False),
    ({"StringNotEqualsIgnoreCase": {"kms:ViaService": "BILLING"}}, {"via_service": "ledger"}, True),
    ({"StringNotEqualsIgnoreCase": {"kms:ViaService": "BILLING"}}, {}, True),
    # StringLike: * and ?, case sensitive
    ({"StringLike": {"kms:RequestAlias": "alias/app-*"}}, {"request_alias": "alias/app-billing"}, True),
    ({"StringLike": {"kms:RequestAlias": "alias/app-*"}}, {"request_alias": "alias/APP-billing"}, False),
    ({"StringLike": {"kms:RequestAlias": "alias/app-?"}}, {"request_alias": "alias/app-1"}, True),
    ({"StringLike": {"kms:RequestAlias": "alias/app-?"}}, {"request_alias": "alias/app-12"}, False),
    (
        {"StringLike": {"kms:RequestAlias": "alias/app.x"}},
        {"request_alias": "alias/app-x"},
        False,
    ),  # no regex
    ({"StringLike": {"kms:RequestAlias": ["alias/a", "alias/b*"]}}, {"request_alias": "alias/a"}, True),
    ({"StringLike": {"kms:RequestAlias": "alias/*"}}, {}, False),
    ({"StringNotLike": {"kms:RequestAlias": "alias/app-*"}}, {"request_alias": "alias/app-billing"}, False),
    ({"StringNotLike": {"kms:RequestAlias": "alias/app-*"}}, {"request_alias": "alias/other"}, True),
    ({"StringNotLike": {"kms:RequestAlias": "alias/app-*"}}, {}, True),
    # ...IfExists: true when missing, the operator otherwise
    ({"StringEqualsIfExists": {"kms:ViaService": "billing"}}, {}, True),
    ({"StringEqualsIfExists": {"kms:ViaService": "billing"}}, {"via_service": "ledger"}, False),
    ({"StringEqualsIfExists": {"kms:ViaService": "billing"}}, {"via_service": "billing"}, True),
    ({"StringNotEqualsIfExists": {"kms:ViaService": "billing"}}, {"via_service": "billing"}, False),
    ({"StringEqualsIgnoreCaseIfExists": {"kms:ViaService": "B"}}, {}, True),
    ({"StringLikeIfExists": {"kms:RequestAlias": "alias/x*"}}, {"request_alias": "alias/y"}, False),
    ({"StringNotLikeIfExists": {"kms:RequestAlias": "alias/x*"}}, {}, True),
    # Null: "true" means the key is missing
    ({"Null": {"kms:ViaService": "true"}}, {}, True),
    ({"Null": {"kms:ViaService": "true"}}, {"via_service": "billing"}, False),
    ({"Null": {"kms:ViaService": "false"}}, {"via_service": "billing"}, True),
    ({"Null": {"kms:ViaService": "false"}}, {}, False),
    ({"Null": {"kms:ViaService": ["true", "false"]}}, {}, True),
    ({"Null": {"kms:EncryptionContextKeys": "false"}}, {"encryption_context": EC}, True),
    ({"Null": {"kms:EncryptionContextKeys": "false"}}, {"encryption_context": {}}, False),  # empty is missing
    ({"Null": {"kms:EncryptionContextKeys": "false"}}, {}, False),
    # Bool on kms:GrantIsForAWSResource (present for CreateGrant, ListGrants, RevokeGrant)
    (
        {"Bool": {"kms:GrantIsForAWSResource": "true"}},
        {"action": "kms:CreateGrant", "via_service": "s"},
        True,
    ),
    ({"Bool": {"kms:GrantIsForAWSResource": "true"}}, {"action": "kms:CreateGrant"}, False),
    ({"Bool": {"kms:GrantIsForAWSResource": "false"}}, {"action": "kms:RevokeGrant"}, True),
    ({"Bool": {"kms:GrantIsForAWSResource": True}}, {"action": "kms:ListGrants", "via_service": "s"}, True),
    ({"Bool": {"kms:GrantIsForAWSResource": "TRUE"}}, {"action": "kms:ListGrants", "via_service": "s"}, True),
    ({"Bool": {"kms:GrantIsForAWSResource": "true"}}, {"action": "kms:Encrypt", "via_service": "s"}, False),
    ({"BoolIfExists": {"kms:GrantIsForAWSResource": "true"}}, {"action": "kms:Encrypt"}, True),
    # ForAllValues: every request value matches one policy value; true when missing or empty
    (
        {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Dept", "app"]}},
        {"encryption_context": EC},
        True,
    ),
    (
        {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Dept"]}},
        {"encryption_context": EC},
        False,
    ),
    (
        {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["dept", "app"]}},
        {"encryption_context": EC},
        False,
    ),
    ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Dept"]}}, {}, True),
    (
        {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Dept"]}},
        {"encryption_context": {}},
        True,
    ),
    (
        {"ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["D*", "a?p"]}},
        {"encryption_context": EC},
        True,
    ),
    (
        {"ForAllValues:StringNotEquals": {"kms:EncryptionContextKeys": "secret"}},
        {"encryption_context": EC},
        True,
    ),
    (
        {"ForAllValues:StringNotEquals": {"kms:EncryptionContextKeys": "app"}},
        {"encryption_context": EC},
        False,
    ),
    (
        {"ForAllValues:StringEqualsIgnoreCase": {"kms:EncryptionContextKeys": ["DEPT", "APP"]}},
        {"encryption_context": EC},
        True,
    ),
    # ForAnyValue: at least one request value matches; false when missing
    ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "app"}}, {"encryption_context": EC}, True),
    ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "nope"}}, {"encryption_context": EC}, False),
    ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "app"}}, {}, False),
    ({"ForAnyValue:StringNotEquals": {"kms:EncryptionContextKeys": "app"}}, {"encryption_context": EC}, True),
    ({"ForAnyValue:StringNotEquals": {"kms:EncryptionContextKeys": "app"}}, {}, False),
    ({"ForAnyValue:StringNotLike": {"kms:EncryptionContextKeys": ["*"]}}, {"encryption_context": EC}, False),
    ({"ForAnyValue:StringEqualsIfExists": {"kms:EncryptionContextKeys": "app"}}, {}, True),
    (
        {"ForAllValues:StringEqualsIfExists": {"kms:EncryptionContextKeys": "x"}},
        {"encryption_context": EC},
        False,
    ),
    # kms:GrantOperations (multivalued)
    (
        {"ForAllValues:StringEquals": {"kms:GrantOperations": ["Encrypt", "Decrypt"]}},
        {"grant_operations": ["Decrypt"]},
        True,
    ),
    (
        {"ForAllValues:StringEquals": {"kms:GrantOperations": ["Encrypt", "Decrypt"]}},
        {"grant_operations": ["Decrypt", "CreateGrant"]},
        False,
    ),
    (
        {"ForAnyValue:StringEquals": {"kms:GrantOperations": "CreateGrant"}},
        {"grant_operations": ["Decrypt", "CreateGrant"]},
        True,
    ),
    # every single-valued condition key
    ({"StringEquals": {"kms:EncryptionContext:Dept": "finance"}}, {"encryption_context": EC}, True),
    (
        {"StringEquals": {"kms:EncryptionContext:dept": "finance"}},
        {"encryption_context": EC},
        True,
    ),  # key part
    ({"StringEquals": {"KMS:ENCRYPTIONCONTEXT:DEPT": "finance"}}, {"encryption_context": EC}, True),
    ({"StringEquals": {"kms:EncryptionContext:Dept": "Finance"}}, {"encryption_context": EC}, False),  # value
    ({"StringEquals": {"kms:EncryptionContext:Dept": "finance"}}, {}, False),
    (
        {"StringNotEquals": {"kms:EncryptionContext:Dept": "finance"}},
        {"encryption_context": {"x": "y"}},
        True,
    ),
    ({"StringEquals": {"kms:CallerAccount": "acme"}}, {}, True),
    ({"StringEquals": {"kms:CallerAccount": "other"}}, {}, False),
    ({"StringEquals": {"kms:CallerAccount": "other"}}, {"caller_tenant": "other"}, True),
    ({"StringEquals": {"kms:GranteePrincipal": ALICE}}, {"grantee_principal": ALICE}, True),
    ({"StringEquals": {"kms:GranteePrincipal": ALICE}}, {}, False),
    (
        {"StringLike": {"kms:RetiringPrincipal": "arn:hsmstore:iam::acme:*"}},
        {"retiring_principal": ALICE},
        True,
    ),
    ({"StringLike": {"kms:RetiringPrincipal": "arn:hsmstore:iam::acme:*"}}, {}, False),
    ({"StringEquals": {"kms:RequestAlias": "alias/app"}}, {"request_alias": "alias/app"}, True),
    ({"StringEquals": {"aws:PrincipalArn": ALICE}}, {}, True),
    ({"StringEquals": {"aws:PrincipalArn": ALICE}}, {"principal": "arn:hsmstore:iam::acme:user/bob"}, False),
    ({"StringLike": {"AWS:PRINCIPALARN": "arn:hsmstore:iam::acme:user/*"}}, {}, True),
    # keys in one operator ANDed; operators ANDed
    (
        {"StringEquals": {"kms:CallerAccount": "acme", "kms:ViaService": "billing"}},
        {"via_service": "billing"},
        True,
    ),
    ({"StringEquals": {"kms:CallerAccount": "acme", "kms:ViaService": "billing"}}, {}, False),
    ({"StringEquals": {"kms:CallerAccount": "acme"}, "Null": {"kms:ViaService": "false"}}, {}, False),
    ({"StringEquals": {"kms:CallerAccount": "acme"}, "Null": {"kms:ViaService": "true"}}, {}, True),
]


@pytest.mark.parametrize(("condition", "request_values", "holds"), CONDITION_CASES)
def test_condition_follows_iam_semantics(
    condition: dict[str, Any], request_values: dict[str, Any], holds: bool
) -> None:
    found = only_statement(policy_text(statement(Condition=condition)))
    assert found.conditions_hold(context(**request_values)) is holds


AMBIGUOUS = {"Dept": "finance", "DEPT": "hr"}  # keys differing only by case


@pytest.mark.parametrize(
    ("effect", "condition", "holds"),
    [
        ("Allow", {"StringEquals": {"kms:EncryptionContext:dept": "finance"}}, False),
        ("Allow", {"StringEquals": {"kms:EncryptionContext:dept": ["finance", "hr"]}}, True),
        ("Allow", {"StringNotEquals": {"kms:EncryptionContext:dept": "hr"}}, False),
        ("Deny", {"StringEquals": {"kms:EncryptionContext:dept": "hr"}}, True),
        ("Deny", {"StringNotEquals": {"kms:EncryptionContext:dept": "finance"}}, True),
    ],
)
def test_context_keys_differing_only_by_case_never_widen_access(
    effect: str, condition: dict[str, Any], holds: bool
) -> None:
    found = only_statement(policy_text(statement(Effect=effect, Condition=condition)))
    assert found.conditions_hold(context(encryption_context=AMBIGUOUS)) is holds


def test_statement_without_condition_always_holds() -> None:
    assert only_statement(policy_text(BASE)).conditions_hold(context())


def _values(found: Statement) -> Sequence[str]:
    return found.conditions[0].values


def test_condition_values_keep_what_the_author_wrote() -> None:
    found = only_statement(
        policy_text(statement(Condition={"StringEquals": {"kms:CallerAccount": [1, "b"]}}))
    )
    assert _values(found) == ("1", "b")
    assert found.conditions[0].operator == "StringEquals"
    assert found.conditions[0].key == "kms:CallerAccount"


def test_cloudtrail_lookup_events_is_an_identity_policy_action_only() -> None:
    identity = {"Statement": [{"Effect": "Allow", "Action": "cloudtrail:LookupEvents", "Resource": "*"}]}
    (statement,) = parse_policy(json.dumps(identity), kind="identity").statements
    assert statement.matches_action("cloudtrail:LookupEvents")
    key = {"Statement": [{**identity["Statement"][0], "Principal": "*"}]}
    with pytest.raises(MalformedPolicyDocumentException, match="not allowed in a key policy"):
        parse_policy(json.dumps(key), kind="key")
    unknown = {"Statement": [{"Effect": "Allow", "Action": "cloudtrail:DeleteTrail", "Resource": "*"}]}
    with pytest.raises(MalformedPolicyDocumentException, match="unknown action"):
        parse_policy(json.dumps(unknown), kind="identity")
