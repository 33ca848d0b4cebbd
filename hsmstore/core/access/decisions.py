"""The access decision: key policy, the caller's identity policies and grants, AWS semantics.

AWS KMS: "No AWS principal, including the account root user or key creator,
has any permissions to a KMS key unless they are explicitly allowed, and never
denied, in a key policy, IAM policy, or grant." The rules applied, in order:

1. An explicit Deny that matches, in the key policy or in one of the caller's
   identity policies, wins over everything, grants included (IAM: "an explicit
   deny in any of these policies overrides the allow").
2. Same tenant: a key policy Allow whose Principal is the caller's own ARN or
   ``"*"`` allows by itself. One whose Principal is the tenant's ``:root``
   delegates (AWS: the root principal "enables IAM policies"): the caller's
   identity policies must also Allow the action on the key.
3. Another tenant's key: AWS cross-account rule, "the key policy for the KMS key
   must give the external account [or principal] permission [...] and IAM
   policies in the external account must delegate the key policy permissions".
4. A grant whose grantee is the caller, for this key, listing the operation and
   whose constraints hold allows without any policy ("grants [...] don't
   require [...] an IAM policy").
5. Actions on no key (ListKeys, CreateKey, GenerateRandom, iam:*): identity
   policies alone decide, against the resource ``"*"``.
6. Nothing allows: implicit deny.

The ``decided_by`` text of a :class:`Decision` names policy statements (and
their Sids) of the key's tenant: it belongs in the audit record, not in an
error message of a caller from another tenant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from hsmstore.core.access.grants import GRANT_OPERATIONS, GrantConstraints, GrantRecord
from hsmstore.core.access.policy import ConditionContext, PolicyDocument, PrincipalMatch, Statement


@dataclass(frozen=True)
class AccessRequest:
    """What is asked: who, which action, on which key, with which condition key values."""

    principal: str  # caller's principal ARN (aws:PrincipalArn)
    caller_tenant: str  # kms:CallerAccount
    action: str  # "kms:Encrypt", "iam:PutIdentityPolicy", ...
    key_arn: str | None = None  # None for actions not on a key
    key_tenant: str | None = None  # the key's tenant; given whenever key_arn is
    encryption_context: Mapping[str, str] | None = None  # kms:EncryptionContext:*, grant constraints
    via_service: str | None = None  # kms:ViaService
    request_alias: str | None = None  # kms:RequestAlias
    grant_operations: Sequence[str] | None = None  # kms:GrantOperations (CreateGrant)
    grantee_principal: str | None = None  # kms:GranteePrincipal (CreateGrant)
    retiring_principal: str | None = None  # kms:RetiringPrincipal
    grant_constraints: GrantConstraints | None = None  # the constraints a CreateGrant asks for
    request_values: Mapping[str, str] | None = None  # xks:* condition keys (policy_conditions.py)

    def __post_init__(self) -> None:
        if (self.key_arn is None) != (self.key_tenant is None):
            raise ValueError("key_arn and key_tenant come together: the key's tenant is not parsed again")

    def condition_context(self) -> ConditionContext:
        return ConditionContext(
            principal=self.principal,
            caller_tenant=self.caller_tenant,
            action=self.action,
            encryption_context=self.encryption_context,
            via_service=self.via_service,
            request_alias=self.request_alias,
            grant_operations=self.grant_operations,
            grantee_principal=self.grantee_principal,
            retiring_principal=self.retiring_principal,
            request_values=self.request_values,
        )


class DecisionKind(StrEnum):
    ALLOW = "ALLOW"
    EXPLICIT_DENY = "EXPLICIT_DENY"
    IMPLICIT_DENY = "IMPLICIT_DENY"


@dataclass(frozen=True)
class Decision:
    """The outcome and, in words, what decided it (for the audit record)."""

    kind: DecisionKind
    decided_by: str
    grant_id: str | None = None

    @property
    def allowed(self) -> bool:
        return self.kind is DecisionKind.ALLOW

    @classmethod
    def implicit_deny(cls, action: str, *, on_key: bool = True) -> Decision:
        """AWS: "By default, IAM users and roles do not have permission": nothing allowed it."""
        if on_key:
            return cls(
                DecisionKind.IMPLICIT_DENY,
                f"default: no key policy statement, identity policy or grant allows {action}",
            )
        return cls(DecisionKind.IMPLICIT_DENY, f"default: no identity policy allows {action}")


def decide(
    request: AccessRequest,
    *,
    key_policy: PolicyDocument | None,
    identity_policies: Sequence[tuple[str, PolicyDocument]],
    grants: Sequence[GrantRecord],
) -> Decision:
    """Decide ``request`` (see the module doc for the rules).

    ``identity_policies`` are the (name, document) pairs attached to the
    caller's principal in the caller's tenant; ``grants`` the grants on the key.
    ``key_policy`` None means the action is not on a key; a request on a key
    with no key policy can be allowed only by a grant (AWS: every key has a key
    policy, so the service passes the stored or default one).
    """
    if key_policy is not None and key_policy.kind != "key":
        raise ValueError("key_policy must be a key policy document")
    if any(document.kind != "identity" for _, document in identity_policies):
        raise ValueError("identity_policies must be identity policy documents")
    context = request.condition_context()
    return (
        _explicit_deny(request, key_policy, identity_policies, context)
        or _policy_allow(request, key_policy, identity_policies, context)
        or _grant_allow(request, grants)
        or Decision.implicit_deny(request.action, on_key=request.key_arn is not None)
    )


def _explicit_deny(
    request: AccessRequest,
    key_policy: PolicyDocument | None,
    identity_policies: Sequence[tuple[str, PolicyDocument]],
    context: ConditionContext,
) -> Decision | None:
    """Rule 1: a matching Deny in the key policy or in any of the caller's identity policies."""
    resource = _resource(request)
    if key_policy is not None and request.key_arn is not None:
        denies, _ = key_policy.statements_for(request.action)
        for statement in denies:
            if _key_statement_applies(statement, request, resource, context) is not PrincipalMatch.NONE:
                return Decision(DecisionKind.EXPLICIT_DENY, f"explicit deny: key policy {statement.label}")
    for name, document in identity_policies:
        denies, _ = document.statements_for(request.action)
        for statement in denies:
            if statement.matches_resource(resource) and statement.conditions_hold(context):
                return Decision(
                    DecisionKind.EXPLICIT_DENY, f'explicit deny: identity policy "{name}" {statement.label}'
                )
    return None


def _policy_allow(
    request: AccessRequest,
    key_policy: PolicyDocument | None,
    identity_policies: Sequence[tuple[str, PolicyDocument]],
    context: ConditionContext,
) -> Decision | None:
    """Rules 2, 3 and 5: the key policy, with the identity policies where AWS requires them."""
    resource = _resource(request)
    if request.key_arn is None:
        return _identity_only_allow(request, identity_policies, context)
    if key_policy is None:
        return None
    same_tenant = request.key_tenant == request.caller_tenant
    delegating: Statement | None = None
    _, allows = key_policy.statements_for(request.action)
    for statement in allows:
        match = _key_statement_applies(statement, request, resource, context)
        if match is PrincipalMatch.DIRECT and same_tenant:
            return Decision(DecisionKind.ALLOW, f"key policy {statement.label}")
        if match is not PrincipalMatch.NONE and delegating is None:
            delegating = statement
    if delegating is None:
        return None
    found = _identity_allow(identity_policies, request.action, resource, context)
    if found is None:
        return None
    return Decision(
        DecisionKind.ALLOW,
        f'key policy {delegating.label} with identity policy "{found[0]}" {found[1].label}',
    )


def _identity_only_allow(
    request: AccessRequest,
    identity_policies: Sequence[tuple[str, PolicyDocument]],
    context: ConditionContext,
) -> Decision | None:
    """Rule 5: an action on no key, authorised against the resource "*"."""
    found = _identity_allow(identity_policies, request.action, "*", context)
    if found is None:
        return None
    return Decision(DecisionKind.ALLOW, f'identity policy "{found[0]}" {found[1].label}')


def _grant_allow(request: AccessRequest, grants: Sequence[GrantRecord]) -> Decision | None:
    """Rule 4."""
    grant = _allowing_grant(request, grants)
    if grant is None:
        return None
    return Decision(DecisionKind.ALLOW, f"grant {grant.grant_id}", grant_id=grant.grant_id)


def _resource(request: AccessRequest) -> str:
    return request.key_arn if request.key_arn is not None else "*"


def _key_statement_applies(
    statement: Statement, request: AccessRequest, resource: str, context: ConditionContext
) -> PrincipalMatch:
    """How a key policy statement (its Action already matched) covers the request; NONE if it does not."""
    match = statement.principal_match(request.principal, request.caller_tenant)
    if match is PrincipalMatch.NONE or not statement.matches_resource(resource):
        return PrincipalMatch.NONE
    return match if statement.conditions_hold(context) else PrincipalMatch.NONE


def _identity_allow(
    identity_policies: Sequence[tuple[str, PolicyDocument]],
    action: str,
    resource: str,
    context: ConditionContext,
) -> tuple[str, Statement] | None:
    for name, document in identity_policies:
        _, allows = document.statements_for(action)
        for statement in allows:
            if statement.matches_resource(resource) and statement.conditions_hold(context):
                return name, statement
    return None


def _allowing_grant(request: AccessRequest, grants: Sequence[GrantRecord]) -> GrantRecord | None:
    """The first grant that allows the request.

    The grant's operation is the action without ``kms:`` ("Encrypt",
    "ReEncryptFrom", ...). RetireGrant is never allowed here: AWS authorises
    retiring per grant (``GrantRecord.retirable_by``). CreateGrant through a
    grant follows AWS: the new grant's operations must be among this grant's,
    and its constraints as strict ("equally strict or stricter").
    """
    if not request.action.startswith("kms:") or request.key_arn is None:
        return None
    operation = request.action[4:]
    if operation not in GRANT_OPERATIONS or operation == "RetireGrant":
        return None
    key_tenant = request.key_tenant
    for grant in grants:
        if grant.grantee_principal != request.principal or grant.key_tenant != key_tenant:
            continue
        if not request.key_arn.endswith(f":key/{grant.key_id}"):
            continue
        if not grant.permits(operation, request.encryption_context):
            continue
        if operation == "CreateGrant" and not _narrower_grant(grant, request):
            continue
        return grant
    return None


def _narrower_grant(parent: GrantRecord, request: AccessRequest) -> bool:
    if not request.grant_operations or not set(request.grant_operations) <= set(parent.operations):
        return False
    return parent.constraints is None or parent.constraints.admits(request.grant_constraints)
