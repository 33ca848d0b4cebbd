"""Use cases for key policies, grants and Simulate.

Key lookup and the request-path gate are ``keys/gate.py`` (every operation,
these included, is authorized there); this module adds what AWS's
PutKeyPolicy, GetKeyPolicy, ListKeyPolicies, CreateGrant, ListGrants,
ListRetirableGrants, RetireGrant and RevokeGrant do, and ``simulate``, which
answers what a call would be answered and why. hsmstore's identity policies
are ``identity_policies.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hsmstore.core.access.control import (
    GrantRequestFacts,
    access_denied,
    cross_tenant_not_found,
)
from hsmstore.core.access.decisions import Decision
from hsmstore.core.access.grants import (
    GrantConstraints,
    GrantRecord,
    grant_id_from_token,
    grant_token_for,
    new_grant_id,
    validate_grant_id,
    validate_grant_name,
    validate_grant_request,
)
from hsmstore.core.access.policy import IAM_ACTIONS, KMS_ACTIONS
from hsmstore.core.audit import capture
from hsmstore.core.formats.encryption_context import check_encryption_context
from hsmstore.core.identifiers import PRINCIPAL_NAME_PATTERN, key_arn, parse_principal_arn
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.usage import check_grant_operations
from hsmstore.core.model import Caller, KeyManager, KeyRecord, KeyState, tenant_root_arn
from hsmstore.core.paging import Page, check_limit, decode_marker, encode_marker
from hsmstore.core.ports import Clock, Store
from hsmstore.core.quotas import ResourceQuotas
from hsmstore.core.validation import (
    MAX_GRANT_TOKEN_CHARS,
    check_grant_tokens,
    check_pattern,
    check_text,
    echo,
)
from hsmstore.errors import (
    KMSInvalidStateException,
    NotFoundException,
    ValidationException,
)

KEY_POLICY_NAME = "default"  # AWS: "The only valid policy name is default"
MAX_KEY_POLICY_NAME_LENGTH = 128  # AWS PolicyName: 1-128 characters
IDENTITY_POLICY_NAME_PATTERN = re.compile(r"[A-Za-z0-9+=,.@_-]{1,128}")  # IAM PolicyName
MAX_GRANTS_LIMIT, DEFAULT_GRANTS_LIMIT = 100, 50  # AWS ListGrants Limit: 1-100, default 50
MAX_OPERATION_NAME_LENGTH = 64  # Simulate Operation: "kms:" or "iam:" and an action name


@dataclass(frozen=True)
class GrantEntry:
    grant: GrantRecord
    key_arn: str

    @property
    def issuing_account(self) -> str:
        return tenant_root_arn(self.grant.key_tenant)


@dataclass(frozen=True)
class Simulation:
    allowed: bool
    decided_by: str
    grant_id: str | None
    key_arn: str


class AuthorizationService:
    """Key policies, grants and Simulate; every key they name comes through the gate."""

    def __init__(
        self, gate: KeyGate, store: Store, clock: Clock, quotas: ResourceQuotas | None = None
    ) -> None:
        self._gate = gate
        self._store = store
        self._clock = clock
        self._access = gate.access
        self._quotas = quotas or ResourceQuotas()

    # ------------------------------------------------------------ key policies

    def put_key_policy(
        self, caller: Caller, key_id: str, policy_name: str, policy: str, bypass_lockout_check: bool
    ) -> None:
        _check_key_policy_name(policy_name)
        key = self._gate.resolve(caller, key_id, "kms:PutKeyPolicy", fresh=True)
        _refuse_pending_deletion(key)
        self._access.check_new_key_policy(caller, key, policy, bypass_lockout_check)
        capture.change(
            lambda record: self._store.put_key_policy(
                key.key_id, KEY_POLICY_NAME, policy, self._clock.now(), audit=record
            )
        )
        self._access.forget_key_policy(key.key_id)

    def get_key_policy(self, caller: Caller, key_id: str, policy_name: str) -> tuple[str, str]:
        _check_key_policy_name(policy_name)
        key = self._gate.resolve(caller, key_id, "kms:GetKeyPolicy")
        return self._access.key_policy_text(key), KEY_POLICY_NAME

    def list_key_policies(self, caller: Caller, key_id: str, limit: int | None, marker: str) -> Page[str]:
        """AWS ListKeyPolicies: "The only valid policy name is default"."""
        check_limit(limit)
        self._gate.resolve(caller, key_id, "kms:ListKeyPolicies")
        if marker:
            decode_marker("p", marker)  # a well-formed marker is past the one page there is
            return Page([], "", False)
        return Page([KEY_POLICY_NAME], "", False)

    # ------------------------------------------------------------------ grants

    def create_grant(
        self,
        caller: Caller,
        key_id: str,
        grantee_principal: str,
        retiring_principal: str,
        operations: Sequence[str],
        constraints: GrantConstraints | None,
        grant_tokens: Sequence[str],
        name: str,
    ) -> tuple[str, str]:
        """AWS CreateGrant. The request's operations and constraints go into the decision
        (kms:GrantOperations, ...), so a grantee allowed CreateGrant by a grant of its own
        may pass on only a subset of that grant's operations under constraints at least as
        strict (authorization.decide, ``_narrower_grant``)."""
        parse_principal_arn(grantee_principal, "GranteePrincipal")
        if retiring_principal:
            parse_principal_arn(retiring_principal, "RetiringPrincipal")
        validate_grant_name(name)
        validate_grant_request(operations, constraints)
        facts = GrantRequestFacts(
            tuple(operations), grantee_principal, retiring_principal or None, constraints
        )
        key = self._gate.resolve(
            caller, key_id, "kms:CreateGrant", fresh=True, grant_tokens=grant_tokens, grant_request=facts
        )
        _refuse_pending_deletion(key)
        check_grant_operations(key, operations)  # issue 23: only operations the key's type supports
        if key.key_manager is KeyManager.CUSTOMER:  # AWS: the quota "does not apply to AWS managed keys"
            self._quotas.check_grants(self._store.count_grants(key.key_id))
        grant = GrantRecord(
            grant_id=new_grant_id(),
            key_id=key.key_id,
            key_tenant=key.tenant,
            name=name,
            grantee_principal=grantee_principal,
            retiring_principal=retiring_principal,
            issuing_principal=caller.principal,
            operations=tuple(sorted(set(operations))),
            constraints=constraints,
            creation_date=self._clock.now(),
        )
        # CreateGrant is idempotent: an identical grant answers the existing one, changing nothing.
        stored = capture.change(
            lambda record: self._store.create_grant(grant, audit=record),
            committed=lambda stored: stored.grant_id == grant.grant_id,
        )
        self._access.forget_grants(key.key_id)
        return stored.grant_id, grant_token_for(stored.grant_id)

    def list_grants(
        self,
        caller: Caller,
        key_id: str,
        limit: int | None,
        marker: str,
        grant_id: str,
        grantee_principal: str,
    ) -> Page[GrantEntry]:
        page_size = check_limit(limit, maximum=MAX_GRANTS_LIMIT, default=DEFAULT_GRANTS_LIMIT)
        after = decode_marker("g", marker) if marker else None
        if grant_id:
            validate_grant_id(grant_id)
        if grantee_principal:
            parse_principal_arn(grantee_principal, "GranteePrincipal")
        key = self._gate.resolve(caller, key_id, "kms:ListGrants")
        grants = list(
            self._store.list_grants(
                key.key_id, page_size + 1, after, grant_id or None, grantee_principal or None
            )
        )
        return self._grant_page(grants, page_size)

    def list_retirable_grants(
        self, caller: Caller, retiring_principal: str, limit: int | None, marker: str
    ) -> Page[GrantEntry]:
        """AWS ListRetirableGrants: "You must specify a principal in your [...] account. This
        operation returns a list of grants where the retiring principal specified [...] is the
        same retiring principal on the grant", whichever tenant's key a grant is on.

        Another tenant's principal is refused before the store is read: its grants are that
        tenant's to list (a grant on the caller's key naming it is listed by ListGrants).
        """
        page_size = check_limit(limit, maximum=MAX_GRANTS_LIMIT, default=DEFAULT_GRANTS_LIMIT)
        after = decode_marker("g", marker) if marker else None
        name = parse_principal_arn(retiring_principal, "RetiringPrincipal")
        self._access.check(caller, "kms:ListRetirableGrants", None)
        if name.tenant != caller.tenant:
            raise access_denied(
                caller.principal,
                "kms:ListRetirableGrants",
                retiring_principal,
                Decision.implicit_deny("kms:ListRetirableGrants"),
                because="RetiringPrincipal must be a principal of your own tenant",
            )
        grants = list(self._store.list_retirable_grants(retiring_principal, page_size + 1, after))
        return self._grant_page(grants, page_size)

    def _grant_page(self, grants: list[GrantRecord], page_size: int) -> Page[GrantEntry]:
        truncated = len(grants) > page_size
        grants = grants[:page_size]
        entries = [
            GrantEntry(grant, key_arn(self._gate.region, grant.key_tenant, grant.key_id)) for grant in grants
        ]
        return Page(entries, encode_marker("g", grants[-1].grant_id) if truncated else "", truncated)

    def retire_grant(self, caller: Caller, grant_token: str, key_id: str, grant_id: str) -> None:
        """AWS RetireGrant: by token, or by key and grant id. Who may: the retiring
        principal, the grantee if the grant includes RetireGrant, and principals of
        the key's tenant whose policies allow kms:RetireGrant on the key."""
        # For a caller of another tenant, every failure is the same NotFound as a
        # missing grant (by token) or key (by key id): RetireGrant must not tell
        # which keys or grants exist there.
        hidden = cross_tenant_not_found
        if grant_token:
            check_text(grant_token, "GrantToken", max_length=MAX_GRANT_TOKEN_CHARS)
            grant = self._store.get_grant(grant_id_from_token(grant_token))
            hidden = _grant_not_found
        elif key_id and grant_id:
            validate_grant_id(grant_id)
            key, _alias = self._gate.find(caller, key_id, "kms:RetireGrant", fresh=True)
            grant = self._store.get_grant(grant_id)
            if grant is not None and grant.key_id != key.key_id:
                grant = None
            if grant is None and key.tenant != caller.tenant:
                raise cross_tenant_not_found()
        else:
            raise ValidationException("RetireGrant needs GrantToken, or KeyId and GrantId")
        if grant is None:
            raise _grant_not_found()
        if not self._may_retire(caller, grant):
            grant_key = self._store.get_key(grant.key_id)
            if grant_key is None or grant_key.tenant != caller.tenant:
                raise hidden()
            raise access_denied(
                caller.principal,
                "kms:RetireGrant",
                self._keys_arn(grant_key),
                Decision.implicit_deny("kms:RetireGrant"),
            )
        self._delete_grant(grant)

    def _may_retire(self, caller: Caller, grant: GrantRecord) -> bool:
        if grant.retirable_by(caller.principal):
            return True
        key = self._store.get_key(grant.key_id)
        return (
            key is not None
            and key.tenant == caller.tenant
            and self._access.decide(caller, "kms:RetireGrant", key).allowed
        )

    def revoke_grant(self, caller: Caller, key_id: str, grant_id: str) -> None:
        validate_grant_id(grant_id)
        key = self._gate.resolve(caller, key_id, "kms:RevokeGrant", fresh=True)
        grant = self._store.get_grant(grant_id)
        if grant is None or grant.key_id != key.key_id:
            raise _grant_not_found()
        self._delete_grant(grant)

    def _delete_grant(self, grant: GrantRecord) -> None:
        capture.change(lambda record: self._store.delete_grant(grant.grant_id, audit=record))
        self._access.forget_grants(grant.key_id)

    # --------------------------------------------------------------- simulate

    def simulate(
        self,
        caller: Caller,
        principal: str,
        operation: str,
        key_id: str,
        encryption_context: Mapping[str, str],
        via_service: str,
        grant_tokens: Sequence[str],
    ) -> Simulation:
        """What ``principal`` would be answered for ``operation`` on ``key_id``, and why.

        Only principals of the caller's own tenant; a caller may always ask
        about itself, and about others with ``iam:SimulatePrincipalPolicy``.
        An unshared key of another tenant is NotFound here too, as it would be
        for the real call.
        """
        name = parse_principal_arn(principal, "Principal")
        if name.kind == "root" or name.tenant != caller.tenant:
            raise ValidationException("Principal must be a user, service or role of your own tenant")
        check_text(operation, "Operation", min_length=1, max_length=MAX_OPERATION_NAME_LENGTH)
        action = operation if operation.startswith(("kms:", "iam:")) else f"kms:{operation}"
        if action not in KMS_ACTIONS and action not in IAM_ACTIONS:
            raise ValidationException(f"Operation {echo(operation)} is not a KMS or identity operation")
        check_encryption_context(encryption_context)
        if via_service:
            check_pattern(
                via_service,
                "ViaService",
                PRINCIPAL_NAME_PATTERN,
                "a service name: a letter or digit, then letters, digits . _ -",
                max_length=128,
            )
        check_grant_tokens(grant_tokens)
        if principal != caller.principal:
            self._access.check(caller, "iam:SimulatePrincipalPolicy", None)
        subject = Caller(name.tenant, principal, name.kind, name.name)
        key: KeyRecord | None = None
        request_alias: str | None = None
        if key_id:
            key, request_alias = self._gate.find(subject, key_id, action)
        decision = self._access.decide(
            subject,
            action,
            key,
            encryption_context=encryption_context or None,
            request_alias=request_alias,
            grant_tokens=grant_tokens,
            via_service=via_service or None,
        )
        decided_by = decision.decided_by
        if key is not None and key.tenant != caller.tenant:
            if not decision.allowed:
                raise cross_tenant_not_found()
            if decision.grant_id is None:
                # Never show another tenant's statements or Sids (core/access/decisions.py).
                decided_by = "the owning tenant's key policy, with your identity policies"
        arn = "" if key is None else self._keys_arn(key)
        return Simulation(decision.allowed, decided_by, decision.grant_id, arn)

    def _keys_arn(self, key: KeyRecord) -> str:
        return key_arn(self._gate.region, key.tenant, key.key_id)


def _grant_not_found() -> NotFoundException:
    return NotFoundException("The grant does not exist")


def _refuse_pending_deletion(key: KeyRecord) -> None:
    if key.state in (KeyState.PENDING_DELETION, KeyState.DESTROYING):
        raise KMSInvalidStateException(f"{key.key_id} is pending deletion")


def _check_key_policy_name(policy_name: str) -> None:
    """AWS PolicyName: 1-128 characters; "The only valid policy name is default"."""
    if policy_name:
        check_text(policy_name, "PolicyName", max_length=MAX_KEY_POLICY_NAME_LENGTH)
    if policy_name and policy_name != KEY_POLICY_NAME:
        raise NotFoundException(f"The only key policy name is {KEY_POLICY_NAME}")
