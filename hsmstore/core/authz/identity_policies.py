"""Identity policies: hsmstore's IAM analogue, per tenant, attached to one principal.

PutIdentityPolicy, GetIdentityPolicy, ListIdentityPolicies and
DeleteIdentityPolicy (the Admin service, docs/api.md). A tenant manages only
its own principals' policies; a tenant's ``role/admin`` with none stored gets
the default policy (``default_policies.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from hsmstore.core.access.control import DEFAULT_IDENTITY_POLICY_NAME, AccessControl, is_admin_role
from hsmstore.core.access.default_policies import default_admin_identity_policy
from hsmstore.core.access.policy import parse_policy
from hsmstore.core.audit import capture
from hsmstore.core.identifiers import PrincipalName, parse_principal_arn
from hsmstore.core.model import Caller
from hsmstore.core.paging import Page, check_limit, decode_marker, encode_marker
from hsmstore.core.ports import AuthorizationStore, Clock, IdentityPolicyRecord
from hsmstore.core.quotas import ResourceQuotas
from hsmstore.core.validation import check_pattern
from hsmstore.errors import NotFoundException, ValidationException

IDENTITY_POLICY_NAME_PATTERN = re.compile(r"[A-Za-z0-9+=,.@_-]{1,128}")  # IAM PolicyName


@dataclass(frozen=True)
class IdentityPolicy:
    principal: str
    policy_name: str
    document: str
    last_updated: datetime | None
    is_default: bool


class IdentityPolicies:
    def __init__(
        self,
        access: AccessControl,
        store: AuthorizationStore,
        clock: Clock,
        quotas: ResourceQuotas | None = None,
    ) -> None:
        self._access = access
        self._store = store
        self._clock = clock
        self._quotas = quotas or ResourceQuotas()

    def put_identity_policy(self, caller: Caller, principal: str, policy_name: str, policy: str) -> None:
        self._own_principal(caller, principal)
        _check_identity_policy_name(policy_name)
        self._access.check(caller, "iam:PutIdentityPolicy", None)  # before the parse: any caller reaches it
        parse_policy(policy, kind="identity")
        attached = self._store.identity_policies_of(caller.tenant, principal)
        if all(existing.policy_name != policy_name for existing in attached):  # replacing never counts
            self._quotas.check_identity_policies(len(attached))
        record = IdentityPolicyRecord(caller.tenant, principal, policy_name, policy, self._clock.now())
        capture.change(lambda audit_record: self._store.put_identity_policy(record, audit=audit_record))
        self._access.forget_identity_policies(caller.tenant, principal)

    def get_identity_policy(self, caller: Caller, principal: str, policy_name: str) -> IdentityPolicy:
        """Another tenant's principal has, as this tenant sees it, no policy: NotFound, as IAM
        answers a name it does not know, so the answer says nothing about that tenant."""
        name = self._own_principal(caller, principal, reading=True)
        _check_identity_policy_name(policy_name)
        self._access.check(caller, "iam:GetIdentityPolicy", None)
        if name.tenant != caller.tenant:
            raise NotFoundException(f"No identity policy {policy_name} is attached to {principal}")
        stored = self._store.identity_policies_of(caller.tenant, principal)
        for record in stored:
            if record.policy_name == policy_name:
                return IdentityPolicy(principal, policy_name, record.document, record.last_updated, False)
        if (
            not stored
            and is_admin_role(caller.tenant, principal)
            and policy_name == DEFAULT_IDENTITY_POLICY_NAME
        ):
            return IdentityPolicy(principal, policy_name, default_admin_identity_policy(), None, True)
        raise NotFoundException(f"No identity policy {policy_name} is attached to {principal}")

    def list_identity_policies(
        self, caller: Caller, principal: str, limit: int | None, marker: str
    ) -> Page[IdentityPolicy]:
        """The tenant's identity policies, or one principal's; another tenant's principal: an empty page."""
        name = self._own_principal(caller, principal, reading=True) if principal else None
        page_size = check_limit(limit)
        after = _decode_identity_marker(marker) if marker else None
        self._access.check(caller, "iam:ListIdentityPolicies", None)
        if name is not None and name.tenant != caller.tenant:
            return Page([], "", False)
        records = list(
            self._store.list_identity_policies(caller.tenant, page_size + 1, after, principal or None)
        )
        truncated = len(records) > page_size
        records = records[:page_size]
        entries = [
            IdentityPolicy(r.principal, r.policy_name, r.document, r.last_updated, False) for r in records
        ]
        next_marker = (
            encode_marker("i", f"{records[-1].policy_name} {records[-1].principal}") if truncated else ""
        )
        return Page(entries, next_marker, truncated)

    def delete_identity_policy(self, caller: Caller, principal: str, policy_name: str) -> None:
        self._own_principal(caller, principal)
        _check_identity_policy_name(policy_name)
        self._access.check(caller, "iam:DeleteIdentityPolicy", None)
        deleted = capture.change(
            lambda record: self._store.delete_identity_policy(
                caller.tenant, principal, policy_name, audit=record
            )
        )
        self._access.forget_identity_policies(caller.tenant, principal)
        if not deleted:
            raise NotFoundException(f"No identity policy {policy_name} is attached to {principal}")

    @staticmethod
    def _own_principal(caller: Caller, principal: str, *, reading: bool = False) -> PrincipalName:
        """A user, service or role; of the caller's tenant, unless ``reading`` (see the readers)."""
        name = parse_principal_arn(principal, "Principal")
        if name.kind == "root" or (name.tenant != caller.tenant and not reading):
            raise ValidationException("Principal must be a user, service or role of your own tenant")
        return name


def _check_identity_policy_name(policy_name: str) -> None:
    check_pattern(
        policy_name,
        "PolicyName",
        IDENTITY_POLICY_NAME_PATTERN,
        "1 to 128 of the characters A-Z a-z 0-9 + = , . @ _ -",
        max_length=128,
    )


def _decode_identity_marker(marker: str) -> tuple[str, str]:
    policy_name, _, principal = decode_marker("i", marker).partition(" ")
    return principal, policy_name
