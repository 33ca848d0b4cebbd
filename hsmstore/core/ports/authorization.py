"""The authorization store port: key policies, grants and identity policies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from hsmstore.core.access.grants import GrantRecord


@dataclass(frozen=True)
class IdentityPolicyRecord:
    """A named identity policy attached to one principal of a tenant."""

    tenant: str
    principal: str
    policy_name: str
    document: str
    last_updated: datetime


class AuthorizationStore(Protocol):
    """Key policies, grants and identity policies. Each call is one transaction.

    ``audit=`` as on MetadataStore: the change's record commits with the change.
    """

    def get_key_policy(self, key_id: str) -> str | None:
        """The key's stored policy document; None if none was stored (keys made before 0004)."""
        ...

    def put_key_policy(
        self,
        key_id: str,
        policy_name: str,
        document: str,
        now: datetime,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace the key's policy; ``NotFoundException`` if the key is gone."""

    def create_grant(self, grant: GrantRecord, *, audit: Mapping[str, Any] | None = None) -> GrantRecord:
        """Insert a grant, or answer the existing one when a grant of that key has the same
        name and identical parameters (AWS: "CreateGrant ... is idempotent" for a named grant).

        ``NotFoundException`` if the key is gone.
        """
        ...

    def get_grant(self, grant_id: str) -> GrantRecord | None: ...

    def count_grants(self, key_id: str) -> int:
        """How many grants the key has (its grant quota, core/quotas.py)."""
        ...

    def list_grants(
        self,
        key_id: str,
        limit: int,
        after_grant_id: str | None,
        grant_id: str | None = None,
        grantee_principal: str | None = None,
    ) -> Sequence[GrantRecord]:
        """Grants of a key by grant id (keyset paging), optionally filtered."""
        ...

    def list_retirable_grants(
        self, retiring_principal: str, limit: int, after_grant_id: str | None
    ) -> Sequence[GrantRecord]:
        """Grants of any key whose retiring principal is this one, by grant id."""
        ...

    def delete_grant(self, grant_id: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        """Retire or revoke: False if no such grant."""
        ...

    def identity_policies_of(self, tenant: str, principal: str) -> Sequence[IdentityPolicyRecord]:
        """Every identity policy attached to the principal, by name."""
        ...

    def put_identity_policy(
        self, record: IdentityPolicyRecord, *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Create or replace by (tenant, principal, policy_name)."""

    def delete_identity_policy(
        self, tenant: str, principal: str, policy_name: str, *, audit: Mapping[str, Any] | None = None
    ) -> bool: ...

    def list_identity_policies(
        self, tenant: str, limit: int, after: tuple[str, str] | None, principal: str | None = None
    ) -> Sequence[IdentityPolicyRecord]:
        """A tenant's identity policies ordered by (principal, policy_name), keyset paged."""
        ...
