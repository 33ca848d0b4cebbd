"""Authorization on the request path: gather the policies and grants, ask ``decide``.

What a decision needs (core/access/decisions.py decides; this module fetches):

* the key's policy (stored with the key; AWS's default key policy for a key
  made before policies were stored),
* the identity policies attached to the caller (a tenant's ``role/admin``
  with none stored gets the default: everything on the tenant's keys,
  docs/api.md "In the default configuration a tenant's role/admin
  principals are allowed every operation on the tenant's keys"),
* the grants of the key, plus those named by the request's grant tokens,
  read fresh from the store (AWS: "a grant token ... works at once").

Parsed policies and grant lists are cached per process for at most the
metadata TTL (0.5 s by default), which is inside the 1 s staleness bound that
docs/deployment.md promises for policy and grant changes made on another node;
a change made through this process drops its entries at once.

Denials follow the contract: inside the caller's tenant, ``AccessDeniedException``
naming the principal and the operation, never the policy text; across tenants,
the very answer a missing key gets, so no one learns what exists elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hsmstore.core.access.decisions import AccessRequest, Decision, DecisionKind, decide
from hsmstore.core.access.default_policies import default_admin_identity_policy, default_key_policy
from hsmstore.core.access.grants import GrantConstraints, GrantRecord, grant_id_from_token
from hsmstore.core.access.policy import PolicyDocument, parse_policy
from hsmstore.core.audit import capture
from hsmstore.core.cache import DEFAULT_TTL_SECONDS, ChangeFeedWatch, TtlCache
from hsmstore.core.identifiers import key_arn
from hsmstore.core.model import Caller, KeyRecord, principal_arn
from hsmstore.core.ports.authorization import AuthorizationStore
from hsmstore.core.validation import check_grant_tokens
from hsmstore.errors import (
    AccessDeniedException,
    KMSError,
    MalformedPolicyDocumentException,
    NotFoundException,
)

# Enough for any real key (AWS allows 50,000 grants per key; hsmstore reads them all per TTL).
MAX_GRANTS_READ_PER_KEY = 50_000

DEFAULT_IDENTITY_POLICY_NAME = "hsmstore-default-admin"

# AWS "Cross-account use" column of the KMS permissions table: only these can
# reach a key of another tenant (by its full resource name).
CROSS_TENANT_ACTIONS = frozenset(
    {
        "kms:CreateGrant",
        "kms:Decrypt",
        "kms:DescribeKey",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GetKeyRotationStatus",
        "kms:ListGrants",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:RetireGrant",
        "kms:RevokeGrant",
        # issue 23: every one "Yes" in AWS's cross-account column too
        "kms:Sign",
        "kms:Verify",
        "kms:GetPublicKey",
        "kms:GenerateMac",
        "kms:VerifyMac",
        "kms:GenerateDataKeyPair",
        "kms:GenerateDataKeyPairWithoutPlaintext",
        "kms:DeriveSharedSecret",
    }
)


@dataclass(frozen=True)
class GrantRequestFacts:
    """What a CreateGrant asks for: the condition keys AWS evaluates for it."""

    operations: Sequence[str]
    grantee_principal: str
    retiring_principal: str | None
    constraints: GrantConstraints | None = None


def is_admin_role(tenant: str, principal: str) -> bool:
    """The tenant's ``role/admin``: the principals the default identity policy is for."""
    return principal == principal_arn(tenant, "role", "admin")


def cross_tenant_not_found() -> NotFoundException:
    """One message for every cross-tenant miss: a missing key and an unshared one look alike."""
    return NotFoundException("The key does not exist")


def access_denied(
    principal: str, action: str, resource: str, decision: Decision, *, because: str | None = None
) -> AccessDeniedException:
    """AWS's wording: names the principal, the action and the resource, never the policy text.

    ``because`` replaces the policy reason when the request itself is what no policy can allow.
    """
    if because is not None:
        why = f"because {because}"
    elif decision.kind is DecisionKind.EXPLICIT_DENY:
        why = "with an explicit deny in a policy"
    else:
        why = f"because no key policy, identity policy or grant allows the {action} action"
    return AccessDeniedException(
        f"User: {principal} is not authorized to perform: {action} on resource: {resource} {why}"
    )


PARSED_KEY_POLICY_TEXTS = 256  # distinct key policy texts one process keeps parsed


@functools.lru_cache(maxsize=PARSED_KEY_POLICY_TEXTS)
def parsed_key_policy(text: str) -> PolicyDocument:
    """A key policy text, parsed once per process rather than once per key: most keys share a few
    texts (each tenant's default policy), and parsing was a tenth of a cold key's first use
    (issue 18). A ``PolicyDocument`` is immutable, so keys may share one."""
    return parse_policy(text, kind="key")


class AccessControl:
    def __init__(
        self, store: AuthorizationStore, region: str, ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self._store = store
        self._region = region
        self._key_policies: TtlCache[str, PolicyDocument] = TtlCache(ttl_seconds, name="key_policies")
        self._identity_policies: TtlCache[tuple[str, str], tuple[tuple[str, PolicyDocument], ...]] = TtlCache(
            ttl_seconds, name="identity_policies"
        )
        self._grants: TtlCache[str, tuple[GrantRecord, ...]] = TtlCache(ttl_seconds, name="grants")
        self._default_admin = parse_policy(default_admin_identity_policy(), kind="identity")

    # -- the request path ---------------------------------------------------

    def check(
        self,
        caller: Caller,
        action: str,
        key: KeyRecord | None,
        *,
        encryption_context: Mapping[str, str] | None = None,
        request_alias: str | None = None,
        grant_tokens: Sequence[str] = (),
        grant_request: GrantRequestFacts | None = None,
        hidden: Callable[[], KMSError] = cross_tenant_not_found,
        request_values: Mapping[str, str] | None = None,
    ) -> Decision:
        """Allow, or raise: ``AccessDeniedException`` in the caller's tenant; for another
        tenant's key, ``hidden()`` -- what a missing key answers on that path (NotFound
        for a key identifier, the one InvalidCiphertext for a blob), so a refusal never
        tells that the key exists. Only AWS's cross-account actions can reach another
        tenant's key at all.

        A grant that decided is noted on the call's audit record. The grant tokens are
        checked against AWS's limits first, on every path that takes them.
        """
        check_grant_tokens(grant_tokens)
        cross_tenant = key is not None and key.tenant != caller.tenant
        if cross_tenant and action not in CROSS_TENANT_ACTIONS:
            raise hidden()
        decision = self.decide(
            caller,
            action,
            key,
            encryption_context=encryption_context,
            request_alias=request_alias,
            grant_tokens=grant_tokens,
            grant_request=grant_request,
            request_values=request_values,
        )
        if decision.allowed:
            if decision.grant_id is not None:
                capture.note_grant(decision.grant_id)
            return decision
        if cross_tenant:
            raise hidden()
        raise access_denied(caller.principal, action, self.resource_of(key), decision)

    def check_identity_action(self, caller: Caller, action: str) -> None:
        """``check`` for an action on no key (identity policies alone decide)."""
        self.check(caller, action, None)

    def decide(
        self,
        caller: Caller,
        action: str,
        key: KeyRecord | None,
        *,
        encryption_context: Mapping[str, str] | None = None,
        request_alias: str | None = None,
        grant_tokens: Sequence[str] = (),
        grant_request: GrantRequestFacts | None = None,
        via_service: str | None = None,
        key_policy: PolicyDocument | None = None,
        request_values: Mapping[str, str] | None = None,
    ) -> Decision:
        """The decision without raising (Simulate explains it; ``check`` enforces it).

        ``key_policy`` overrides the stored one: the lock-out safety check asks
        what a *new* policy would decide.
        """
        if key is not None:
            # kms:KeySpec and kms:KeyUsage of the key acted on (issue 23); the use case's own win.
            request_values = {
                "kms:keyspec": key.key_spec.value,
                "kms:keyusage": key.key_usage.value,
                **(request_values or {}),
            }
        request = AccessRequest(
            principal=caller.principal,
            caller_tenant=caller.tenant,
            action=action,
            key_arn=None if key is None else self.resource_of(key),
            key_tenant=None if key is None else key.tenant,
            encryption_context=encryption_context,
            via_service=via_service if via_service is not None else caller.via_service,
            request_alias=request_alias,
            grant_operations=None if grant_request is None else tuple(grant_request.operations),
            grantee_principal=None if grant_request is None else grant_request.grantee_principal,
            retiring_principal=None if grant_request is None else grant_request.retiring_principal,
            grant_constraints=None if grant_request is None else grant_request.constraints,
            request_values=request_values,
        )
        policy = key_policy if key_policy is not None or key is None else self.key_policy(key)
        grants = () if key is None else self._grants_for(key, grant_tokens)
        return decide(
            request,
            key_policy=policy,
            identity_policies=self.identity_policies(caller.tenant, caller.principal),
            grants=grants,
        )

    def check_new_key_policy(self, caller: Caller, key: KeyRecord, policy: str, bypass: bool) -> None:
        """Validate a key policy, and refuse one that locks the caller out.

        AWS PutKeyPolicy: "the principal that is making the PutKeyPolicy request
        must be allowed to make a subsequent PutKeyPolicy request on the KMS key"
        unless BypassPolicyLockoutSafetyCheck is set; the refusal is a
        MalformedPolicyDocumentException.
        """
        document = parse_policy(policy, kind="key")
        if bypass:
            return
        if not self.decide(caller, "kms:PutKeyPolicy", key, key_policy=document).allowed:
            raise MalformedPolicyDocumentException(
                "The new key policy will not allow you to update the key policy in the future."
            )

    # -- what decisions read ------------------------------------------------------

    def key_policy_text(self, key: KeyRecord) -> str:
        stored = self._store.get_key_policy(key.key_id)
        return stored if stored is not None else default_key_policy(key.tenant)

    def key_policy(self, key: KeyRecord) -> PolicyDocument:
        policy = self._key_policies.get(key.key_id, lambda: parsed_key_policy(self.key_policy_text(key)))
        assert policy is not None  # the loader never answers None
        return policy

    def identity_policies(self, tenant: str, principal: str) -> tuple[tuple[str, PolicyDocument], ...]:
        policies = self._identity_policies.get(
            (tenant, principal), lambda: self._load_identity_policies(tenant, principal)
        )
        return policies or ()

    def _load_identity_policies(self, tenant: str, principal: str) -> tuple[tuple[str, PolicyDocument], ...]:
        stored = self._store.identity_policies_of(tenant, principal)
        if not stored and is_admin_role(tenant, principal):
            return ((DEFAULT_IDENTITY_POLICY_NAME, self._default_admin),)
        return tuple(
            (record.policy_name, parse_policy(record.document, kind="identity")) for record in stored
        )

    def _grants_for(self, key: KeyRecord, grant_tokens: Sequence[str]) -> tuple[GrantRecord, ...]:
        grants = self._grants.get(
            key.key_id,
            lambda: tuple(self._store.list_grants(key.key_id, MAX_GRANTS_READ_PER_KEY, None)),
        )
        found = grants or ()
        if not grant_tokens:
            return found
        known = {grant.grant_id for grant in found}
        fresh = []
        for token in grant_tokens:
            grant_id = grant_id_from_token(token)
            if grant_id in known:
                continue
            grant = self._store.get_grant(grant_id)
            if grant is not None and grant.key_id == key.key_id:
                fresh.append(grant)
                known.add(grant_id)
        return found + tuple(fresh)

    # -- changes made through this process ------------------------------------------

    def forget_key_policy(self, key_id: str) -> None:
        self._key_policies.invalidate(key_id)

    def forget_grants(self, key_id: str) -> None:
        self._grants.invalidate(key_id)

    def forget_identity_policies(self, tenant: str, principal: str) -> None:
        self._identity_policies.invalidate((tenant, principal))

    def follow_changes(self, watch: ChangeFeedWatch) -> None:
        """Issue 18: keep policies and grants long while the process's follower of the metadata
        change feed calls the ``forget_*`` methods above (core/cache.py)."""
        self._key_policies.follow(watch)
        self._identity_policies.follow(watch)
        self._grants.follow(watch)

    def resource_of(self, key: KeyRecord | None) -> str:
        return "*" if key is None else key_arn(self._region, key.tenant, key.key_id)
