"""The access decision: key policy, identity policies and grants combined as AWS does."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from hsmstore.core.access.decisions import AccessRequest, Decision, DecisionKind, decide
from hsmstore.core.access.default_policies import (
    default_admin_identity_policy,
    default_key_policy,
    service_managed_key_policy,
)
from hsmstore.core.access.grants import GrantConstraints, GrantRecord
from hsmstore.core.access.policy import PolicyDocument, parse_policy

KEY_ID = "0f6a4c8e-3b1d-4e0a-9c2f-5d7e8a9b0c1d"
OTHER_KEY_ID = "1a2b3c4d-1111-4222-8333-444455556666"
KEY_ARN = f"arn:hsmstore:kms:local:acme:key/{KEY_ID}"
ACME_ROOT = "arn:hsmstore:iam::acme:root"
ALICE = "arn:hsmstore:iam::acme:user/alice"
BOB = "arn:hsmstore:iam::acme:user/bob"
ADMIN = "arn:hsmstore:iam::acme:role/admin"
BILLING = "arn:hsmstore:iam::acme:service/billing"
EVE = "arn:hsmstore:iam::other:user/eve"  # another tenant
OTHER_ROOT = "arn:hsmstore:iam::other:root"
GRANT_ID = "0c237476b39f8bc44e45212e08498fbe3151305030726c0590dd8d3e9f3d6a60"


def key_policy(*statements: Mapping[str, Any]) -> PolicyDocument:
    return parse_policy(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}), kind="key")


def identity(*statements: Mapping[str, Any]) -> PolicyDocument:
    return parse_policy(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}), kind="identity")


def allow(principal: object, action: object = "kms:Encrypt", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": principal, "Action": action, "Resource": "*", **extra}


def deny(principal: object, action: object = "kms:Encrypt", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Principal": principal, "Action": action, "Resource": "*", **extra}


def id_allow(action: object = "kms:Encrypt", resource: object = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def id_deny(action: object = "kms:Encrypt", resource: object = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def hsm(*arns: str) -> dict[str, Any]:
    return {"HSM": list(arns)}


def request(principal: str = ALICE, action: str = "kms:Encrypt", **extra: Any) -> AccessRequest:
    tenant = principal.split(":")[4]
    extra.setdefault("key_arn", KEY_ARN)
    if extra["key_arn"] is not None:
        extra.setdefault("key_tenant", "acme")
    return AccessRequest(principal=principal, caller_tenant=tenant, action=action, **extra)


def grant(
    grantee: str = BILLING,
    operations: Sequence[str] = ("Encrypt",),
    constraints: GrantConstraints | None = None,
    key_id: str = KEY_ID,
    key_tenant: str = "acme",
) -> GrantRecord:
    return GrantRecord(
        grant_id=GRANT_ID,
        key_id=key_id,
        key_tenant=key_tenant,
        name="",
        grantee_principal=grantee,
        retiring_principal="",
        issuing_principal=ADMIN,
        operations=tuple(operations),
        constraints=constraints,
        creation_date=datetime(2025, 1, 1, tzinfo=UTC),
    )


def run(
    req: AccessRequest,
    kp: PolicyDocument | None,
    identities: Sequence[PolicyDocument] = (),
    grants: Sequence[GrantRecord] = (),
) -> Decision:
    named = [(f"p{index}", document) for index, document in enumerate(identities)]
    return decide(req, key_policy=kp, identity_policies=named, grants=grants)


EMPTY_KEY_POLICY = key_policy(allow(hsm(BOB), "kms:DescribeKey"))


# --- same tenant ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kp", "identities", "allowed"),
    [
        (key_policy(allow(hsm(ALICE))), [], True),  # naming the principal allows by itself
        (key_policy(allow("*")), [], True),
        (key_policy(allow({"HSM": "*"})), [], True),
        (key_policy(allow(hsm(ACME_ROOT))), [], False),  # root delegates: identity policy needed
        (key_policy(allow(hsm(ACME_ROOT))), [identity(id_allow())], True),
        (key_policy(allow(hsm(ACME_ROOT))), [identity(id_allow("kms:Decrypt"))], False),
        (key_policy(allow(hsm(ACME_ROOT))), [identity(id_allow(resource=KEY_ARN))], True),
        (key_policy(allow(hsm(ACME_ROOT))), [identity(id_allow(resource=KEY_ARN + "x"))], False),
        (
            key_policy(allow(hsm(ACME_ROOT), "kms:Decrypt")),
            [identity(id_allow())],
            False,
        ),  # key policy must allow
        (key_policy(allow(hsm(BOB))), [identity(id_allow())], False),  # someone else named
        (EMPTY_KEY_POLICY, [identity(id_allow("kms:*"))], False),  # identity alone is not enough
        (None, [identity(id_allow("kms:*"))], False),  # a key request with no key policy
    ],
)
def test_same_tenant_key_policy_allows_directly_or_through_root_delegation(
    kp: PolicyDocument | None, identities: list[PolicyDocument], allowed: bool
) -> None:
    decision = run(request(), kp, identities)
    assert decision.allowed is allowed
    assert decision.kind is (DecisionKind.ALLOW if allowed else DecisionKind.IMPLICIT_DENY)


def test_direct_allow_names_the_key_policy_statement() -> None:
    decision = run(request(), key_policy(allow(hsm(ALICE), Sid="AllowUse")))
    assert decision == Decision(DecisionKind.ALLOW, 'key policy statement 0 (Sid "AllowUse")')


def test_root_delegation_names_both_statements() -> None:
    kp = parse_policy(default_key_policy("acme"), kind="key")
    decision = decide(
        request(),
        key_policy=kp,
        identity_policies=[("default", identity(id_allow()))],
        grants=[],
    )
    assert decision.decided_by == (
        'key policy statement 0 (Sid "Enable IAM policies") with identity policy "default" statement 0'
    )
    assert decision.grant_id is None


def test_identity_policies_are_searched_in_order() -> None:
    kp = key_policy(allow(hsm(ACME_ROOT)))
    decision = run(request(), kp, [identity(id_allow("kms:Decrypt")), identity(id_allow(Sid="Use"))])
    assert decision.decided_by.endswith('identity policy "p1" statement 0 (Sid "Use")')


# --- cross tenant --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kp", "identities", "allowed"),
    [
        (key_policy(allow(hsm(EVE))), [], False),  # named in the key policy, but no identity policy
        (key_policy(allow(hsm(EVE))), [identity(id_allow())], True),
        (key_policy(allow(hsm(OTHER_ROOT))), [identity(id_allow())], True),
        (key_policy(allow(hsm(OTHER_ROOT))), [], False),
        (key_policy(allow("*")), [], False),
        (key_policy(allow("*")), [identity(id_allow(resource=KEY_ARN))], True),
        (key_policy(allow(hsm(ACME_ROOT))), [identity(id_allow())], False),  # the key's root is not eve's
        (parse_policy(default_key_policy("acme"), kind="key"), [identity(id_allow("kms:*"))], False),
        (
            key_policy(allow(hsm(EVE))),
            [identity(id_allow(resource="arn:hsmstore:kms:local:other:key/*"))],
            False,
        ),
    ],
)
def test_cross_tenant_needs_key_policy_and_identity_policy(
    kp: PolicyDocument, identities: list[PolicyDocument], allowed: bool
) -> None:
    assert run(request(EVE), kp, identities).allowed is allowed


def test_cross_tenant_allow_names_both_statements() -> None:
    decision = run(request(EVE), key_policy(allow(hsm(EVE), Sid="ShareWithEve")), [identity(id_allow())])
    assert (
        decision.decided_by
        == 'key policy statement 0 (Sid "ShareWithEve") with identity policy "p0" statement 0'
    )


def test_a_key_arn_without_its_tenant_or_a_tenant_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="come together"):
        request(key_tenant=None)
    with pytest.raises(ValueError, match="come together"):
        request(key_arn=None, key_tenant="acme")


def test_caller_account_condition_limits_a_star_principal_to_one_tenant() -> None:
    kp = key_policy(allow("*", Condition={"StringEquals": {"kms:CallerAccount": "acme"}}))
    assert run(request(), kp).allowed
    assert not run(request(EVE), kp, [identity(id_allow())]).allowed


# --- explicit deny -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kp", "identities", "grants", "decided_by"),
    [
        (
            key_policy(allow(hsm(ALICE)), deny(hsm(ALICE), Sid="NoEncrypt")),
            [],
            [],
            'explicit deny: key policy statement 1 (Sid "NoEncrypt")',
        ),
        (
            key_policy(allow(hsm(ALICE)), deny(hsm(ACME_ROOT))),  # root in a Deny covers the whole tenant
            [],
            [],
            "explicit deny: key policy statement 1",
        ),
        (
            key_policy(allow(hsm(ALICE)), deny("*", "kms:*")),
            [],
            [],
            "explicit deny: key policy statement 1",
        ),
        (
            key_policy(allow(hsm(ALICE))),
            [identity(id_allow()), identity(id_allow(), id_allow(), id_deny(Sid="NoEncrypt"))],
            [],
            'explicit deny: identity policy "p1" statement 2 (Sid "NoEncrypt")',
        ),
        (
            key_policy(allow(hsm(BOB))),
            [identity(id_deny())],
            [grant(ALICE)],
            'explicit deny: identity policy "p0" statement 0',
        ),
        (
            key_policy(deny(hsm(ALICE))),
            [],
            [grant(ALICE)],
            "explicit deny: key policy statement 0",
        ),
    ],
)
def test_explicit_deny_beats_every_allow(
    kp: PolicyDocument, identities: list[PolicyDocument], grants: list[GrantRecord], decided_by: str
) -> None:
    decision = run(request(), kp, identities, grants)
    assert decision.kind is DecisionKind.EXPLICIT_DENY
    assert not decision.allowed
    assert decision.decided_by == decided_by
    assert decision.grant_id is None


def test_explicit_deny_in_identity_policy_beats_grant() -> None:
    decision = run(request(BILLING), EMPTY_KEY_POLICY, [identity(id_deny())], [grant()])
    assert decision.kind is DecisionKind.EXPLICIT_DENY


@pytest.mark.parametrize(
    "denying",
    [
        deny(hsm(BOB)),  # another principal
        deny(hsm(OTHER_ROOT)),  # another tenant
        deny(hsm(ALICE), "kms:Decrypt"),  # another action
        deny(hsm(ALICE), Resource="arn:hsmstore:kms:local:acme:key/other"),  # another key
        deny(hsm(ALICE), Condition={"StringEquals": {"kms:ViaService": "billing"}}),  # condition false
    ],
)
def test_deny_that_does_not_match_does_not_deny(denying: dict[str, Any]) -> None:
    assert run(request(), key_policy(allow(hsm(ALICE)), denying)).allowed


def test_deny_with_negated_condition_applies_when_the_key_is_missing() -> None:
    kp = key_policy(
        allow(hsm(ALICE)),
        deny("*", Condition={"StringNotEquals": {"kms:EncryptionContext:app": "ledger"}}),
    )
    assert run(request(), kp).kind is DecisionKind.EXPLICIT_DENY
    assert run(request(encryption_context={"app": "ledger"}), kp).allowed


def test_identity_deny_on_another_resource_does_not_deny() -> None:
    kp = key_policy(allow(hsm(ALICE)))
    assert run(request(), kp, [identity(id_deny(resource="arn:hsmstore:kms:local:acme:key/other"))]).allowed


# --- actions on no key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "identities", "allowed"),
    [
        ("kms:ListKeys", [identity(id_allow("kms:ListKeys"))], True),
        ("kms:CreateKey", [identity(id_allow("kms:*"))], True),
        ("kms:GenerateRandom", [identity(id_allow("kms:Encrypt"))], False),
        ("kms:ListKeys", [identity(id_allow("kms:ListKeys", "arn:hsmstore:kms:local:acme:key/*"))], False),
        ("kms:ListKeys", [], False),
        ("iam:PutIdentityPolicy", [identity(id_allow("iam:*"))], True),
        ("iam:PutIdentityPolicy", [identity(id_allow("kms:*"))], False),
        ("iam:PutIdentityPolicy", [identity(id_allow("*"))], True),
        ("kms:CreateKey", [identity(id_allow("kms:*"), id_deny("kms:CreateKey"))], False),
    ],
)
def test_actions_on_no_key_are_decided_by_identity_policies_alone(
    action: str, identities: list[PolicyDocument], allowed: bool
) -> None:
    decision = run(request(action=action, key_arn=None), None, identities)
    assert decision.allowed is allowed


def test_non_key_decisions_explain_themselves() -> None:
    allowed = run(
        request(action="kms:ListKeys", key_arn=None), None, [identity(id_allow("kms:List*", Sid="L"))]
    )
    assert allowed.decided_by == 'identity policy "p0" statement 0 (Sid "L")'
    denied = run(request(action="kms:ListKeys", key_arn=None), None, [])
    assert denied == Decision(DecisionKind.IMPLICIT_DENY, "default: no identity policy allows kms:ListKeys")


def test_implicit_deny_names_the_action() -> None:
    decision = run(request(), EMPTY_KEY_POLICY)
    assert decision == Decision(
        DecisionKind.IMPLICIT_DENY,
        "default: no key policy statement, identity policy or grant allows kms:Encrypt",
    )
    assert decision == Decision.implicit_deny("kms:Encrypt")


# --- grants --------------------------------------------------------------------------------------

SUBSET = GrantConstraints(encryption_context_subset={"app": "ledger"})
EQUALS = GrantConstraints(encryption_context_equals={"app": "ledger"})


@pytest.mark.parametrize(
    ("req", "grants", "allowed"),
    [
        (request(BILLING), [grant()], True),
        (request(BILLING, "kms:Decrypt"), [grant()], False),  # operation not granted
        (request(ALICE), [grant()], False),  # not the grantee
        (request(BILLING), [grant(key_id=OTHER_KEY_ID)], False),  # another key's grant
        (request(BILLING), [grant(key_tenant="other")], False),
        (request(BILLING, "kms:ReEncryptFrom"), [grant(operations=["ReEncryptFrom"])], True),
        (request(BILLING, "kms:ReEncryptTo"), [grant(operations=["ReEncryptFrom"])], False),
        (request(BILLING, "kms:DescribeKey"), [grant(operations=["DescribeKey"], constraints=SUBSET)], True),
        (request(BILLING, encryption_context={"app": "ledger", "x": "y"}), [grant(constraints=SUBSET)], True),
        (request(BILLING, encryption_context={"APP": "ledger"}), [grant(constraints=SUBSET)], True),
        (request(BILLING, encryption_context={"app": "other"}), [grant(constraints=SUBSET)], False),
        (request(BILLING), [grant(constraints=SUBSET)], False),
        (request(BILLING, encryption_context={"app": "ledger"}), [grant(constraints=EQUALS)], True),
        (
            request(BILLING, encryption_context={"app": "ledger", "x": "y"}),
            [grant(constraints=EQUALS)],
            False,
        ),
        (
            request(BILLING, "kms:RetireGrant"),
            [grant(operations=["RetireGrant"])],
            False,
        ),  # per grant, not here
        (request(BILLING, "kms:ScheduleKeyDeletion"), [grant(operations=["Encrypt"])], False),
        (request(BILLING, key_arn=None, action="kms:ListKeys"), [grant()], False),
        (request(EVE), [grant(EVE)], True),  # a grant needs no identity policy, even across tenants
    ],
)
def test_grant_allows_its_grantee_its_operations_within_its_constraints(
    req: AccessRequest, grants: list[GrantRecord], allowed: bool
) -> None:
    kp = None if req.key_arn is None else EMPTY_KEY_POLICY
    decision = run(req, kp, [], grants)
    assert decision.allowed is allowed
    assert decision.grant_id == (GRANT_ID if allowed else None)


def test_grant_decision_names_the_grant() -> None:
    decision = run(request(BILLING), EMPTY_KEY_POLICY, [], [grant()])
    assert decision == Decision(DecisionKind.ALLOW, f"grant {GRANT_ID}", grant_id=GRANT_ID)


def test_grant_allows_when_the_key_request_has_no_key_policy() -> None:
    assert run(request(BILLING), None, [], [grant()]).grant_id == GRANT_ID


def test_policy_allow_is_preferred_to_a_grant() -> None:
    decision = run(request(BILLING), key_policy(allow(hsm(BILLING))), [], [grant()])
    assert decision.allowed and decision.grant_id is None


@pytest.mark.parametrize(
    ("parent_operations", "parent_constraints", "new_operations", "new_constraints", "allowed"),
    [
        (["CreateGrant", "Encrypt", "Decrypt"], None, ["Decrypt"], None, True),
        (["CreateGrant", "Encrypt"], None, ["Encrypt", "Decrypt"], None, False),  # more than it has
        (["CreateGrant", "Encrypt"], None, None, None, False),
        (["CreateGrant", "Decrypt"], SUBSET, ["Decrypt"], EQUALS, True),
        (["CreateGrant", "Decrypt"], SUBSET, ["Decrypt"], SUBSET, True),
        (["CreateGrant", "Decrypt"], SUBSET, ["Decrypt"], None, False),  # less strict
        (["CreateGrant", "Decrypt"], EQUALS, ["Decrypt"], SUBSET, False),
        (["Encrypt"], None, ["Encrypt"], None, False),  # CreateGrant not granted
    ],
)
def test_create_grant_through_a_grant_gives_no_more_than_it_has(
    parent_operations: list[str],
    parent_constraints: GrantConstraints | None,
    new_operations: list[str] | None,
    new_constraints: GrantConstraints | None,
    allowed: bool,
) -> None:
    req = request(
        BILLING,
        "kms:CreateGrant",
        grant_operations=new_operations,
        grantee_principal=BOB,
        grant_constraints=new_constraints,
    )
    parent = grant(operations=parent_operations, constraints=parent_constraints)
    assert run(req, EMPTY_KEY_POLICY, [], [parent]).allowed is allowed


# --- condition keys fed from the request ---------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "extra", "allowed"),
    [
        (
            {"StringEquals": {"kms:EncryptionContext:app": "ledger"}},
            {"encryption_context": {"app": "ledger"}},
            True,
        ),
        ({"StringEquals": {"kms:EncryptionContext:app": "ledger"}}, {}, False),
        (
            {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": "app"}},
            {"encryption_context": {"b": "1"}},
            False,
        ),
        ({"StringEquals": {"kms:ViaService": "billing"}}, {"via_service": "billing"}, True),
        ({"StringEquals": {"kms:RequestAlias": "alias/app"}}, {"request_alias": "alias/app"}, True),
        ({"StringEquals": {"kms:RequestAlias": "alias/app"}}, {}, False),
        (
            {"ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt", "Encrypt"]}},
            {"action": "kms:CreateGrant", "grant_operations": ["Decrypt"]},
            True,
        ),
        (
            {"StringEquals": {"kms:GranteePrincipal": BILLING}},
            {"action": "kms:CreateGrant", "grantee_principal": BILLING},
            True,
        ),
        (
            {"StringEquals": {"kms:RetiringPrincipal": BOB}},
            {"action": "kms:CreateGrant", "retiring_principal": ALICE},
            False,
        ),
        (
            {"Bool": {"kms:GrantIsForAWSResource": "true"}},
            {"action": "kms:CreateGrant", "via_service": "s"},
            True,
        ),
        ({"StringEquals": {"aws:PrincipalArn": ALICE}}, {}, True),
        ({"StringEquals": {"kms:CallerAccount": "other"}}, {}, False),
    ],
)
def test_request_values_feed_the_condition_keys(
    condition: dict[str, Any], extra: dict[str, Any], allowed: bool
) -> None:
    action = extra.pop("action", "kms:Encrypt")
    kp = key_policy(allow(hsm(ALICE), ["kms:Encrypt", "kms:CreateGrant"], Condition=condition))
    assert run(request(action=action, **extra), kp).allowed is allowed


# --- the policies hsmstore writes ----------------------------------------------------------------

DEFAULT_KP = parse_policy(default_key_policy("acme"), kind="key")
ADMIN_POLICY = parse_policy(default_admin_identity_policy(), kind="identity")


@pytest.mark.parametrize(
    "action", ["kms:Encrypt", "kms:ScheduleKeyDeletion", "kms:PutKeyPolicy", "kms:CreateGrant"]
)
def test_default_policies_let_the_tenant_admin_do_everything_on_its_keys(action: str) -> None:
    assert run(request(ADMIN, action), DEFAULT_KP, [ADMIN_POLICY]).allowed


def test_default_admin_identity_policy_covers_actions_on_no_key() -> None:
    assert run(request(ADMIN, "iam:PutIdentityPolicy", key_arn=None), None, [ADMIN_POLICY]).allowed
    assert run(request(ADMIN, "kms:CreateKey", key_arn=None), None, [ADMIN_POLICY]).allowed


def test_default_key_policy_alone_allows_nobody() -> None:
    assert not run(request(ALICE), DEFAULT_KP).allowed


def test_another_tenants_admin_gets_nothing_from_the_default_key_policy() -> None:
    other_admin = "arn:hsmstore:iam::other:role/admin"
    assert not run(request(other_admin), DEFAULT_KP, [ADMIN_POLICY]).allowed


SERVICE_KP = parse_policy(service_managed_key_policy("acme", "billing"), kind="key")


@pytest.mark.parametrize(
    ("req", "identities", "allowed"),
    [
        (
            request(ALICE, "kms:Encrypt", via_service="billing"),
            [],
            True,
        ),  # any principal, through the service
        (request(ALICE, "kms:GenerateDataKeyWithoutPlaintext", via_service="billing"), [], True),
        (request(ALICE, "kms:ReEncryptTo", via_service="billing"), [], True),
        (request(ALICE, "kms:CreateGrant", via_service="billing"), [], True),
        (request(ALICE, "kms:Encrypt"), [], False),  # not through the service
        (request(ALICE, "kms:Encrypt"), [ADMIN_POLICY], False),
        (request(ALICE, "kms:Encrypt", via_service="ledger"), [], False),  # another service
        (request(EVE, "kms:Encrypt", via_service="billing"), [ADMIN_POLICY], False),  # another tenant
        (request(ALICE, "kms:ScheduleKeyDeletion", via_service="billing"), [ADMIN_POLICY], False),
        (request(ALICE, "kms:DescribeKey"), [ADMIN_POLICY], True),  # metadata through root delegation
        (request(ALICE, "kms:GetKeyPolicy"), [ADMIN_POLICY], True),
        (request(ALICE, "kms:ListGrants"), [], False),  # root delegation needs an identity policy
        (request(ALICE, "kms:PutKeyPolicy"), [ADMIN_POLICY], False),
    ],
)
def test_service_managed_key_policy_allows_use_through_its_service_only(
    req: AccessRequest, identities: list[PolicyDocument], allowed: bool
) -> None:
    assert run(req, SERVICE_KP, identities).allowed is allowed


# --- misuse --------------------------------------------------------------------------------------


def test_documents_of_the_wrong_kind_are_refused() -> None:
    with pytest.raises(ValueError, match="key policy"):
        decide(request(), key_policy=ADMIN_POLICY, identity_policies=[], grants=[])
    with pytest.raises(ValueError, match="identity policy"):
        decide(request(), key_policy=DEFAULT_KP, identity_policies=[("x", DEFAULT_KP)], grants=[])


def test_decision_allowed_reflects_its_kind() -> None:
    assert Decision(DecisionKind.ALLOW, "x").allowed
    assert not Decision(DecisionKind.EXPLICIT_DENY, "x").allowed
    assert not Decision(DecisionKind.IMPLICIT_DENY, "x").allowed
