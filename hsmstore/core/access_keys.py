"""Access keys (issue 19, Deliver 2): create, list, revoke; and who a signed request speaks for.

"``hsmstore admin`` creates and revokes access keys for a principal; secrets
stored hashed or encrypted under a token key, shown once." The secret is
sealed with the ``SecretSealer`` (core/ports/secrets.py) under a context
binding the key id, tenant and principal (``access_keys_model.sealing_context``),
so the DB never holds it in clear and a sealed secret moved to another row
does not unseal. :meth:`AccessKeys.create` is the only place the secret
leaves in clear, once; :meth:`AccessKeys.list` never shows it.

Verification (``aws_json/access_keys.py``) asks :meth:`AccessKeys.signing_identity`
for the caller and secret of an access key id. Unsealing is a token call, so
identities are cached in memory, in each process:

* at most :data:`SECRET_CACHE_ENTRIES` keys (the cache empties when full);
* each for at most :data:`SECRET_CACHE_SECONDS`, so a key revoked or made
  inactive in another process (the CLI, another worker or node) stops working
  there within that bound; in this process at once. A serving process that follows the
  metadata change feed (issue 18, :meth:`AccessKeys.follow_changes`) keeps them longer and
  drops a changed key when the feed names it, within the feed's staleness (core/cache.py).

Only Active keys are returned; an unknown, Inactive or Revoked key is None,
never cached, so a key created a moment ago works at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from hsmstore.core.access_keys_model import (
    AccessKeyRecord,
    AccessKeyStatus,
    new_access_key_id,
    new_secret_access_key,
    sealing_context,
)
from hsmstore.core.audit.record import CallAudit
from hsmstore.core.cache import ChangeFeedWatch, TtlCache
from hsmstore.core.identifiers import parse_principal_arn
from hsmstore.core.model import Caller, principal_arn
from hsmstore.core.ports.access_keys import AccessKeyRecords
from hsmstore.core.ports.clock import Clock
from hsmstore.core.ports.secrets import SecretSealer
from hsmstore.errors import AlreadyExistsException, NotFoundException, ValidationException

SECRET_CACHE_SECONDS: Final = 10.0
SECRET_CACHE_ENTRIES: Final = 1024
LAST_USED_INTERVAL_SECONDS: Final = 60.0
"""``last_used`` is written at most once a minute per key and process: it is coarse on purpose."""
DEFAULT_OPERATOR: Final = "cli"
"""Who the audit record names when the caller does not say (``hsmstore admin access-keys``
passes the operating-system user)."""
_CREATE_ATTEMPTS: Final = 5  # a 82-bit random id collides essentially never; retry a few times anyway


@dataclass(frozen=True)
class CreatedAccessKey:
    """What :meth:`AccessKeys.create` returns: the only time the secret is seen."""

    access_key_id: str
    secret_access_key: str
    tenant: str
    principal: str
    status: AccessKeyStatus


@dataclass(frozen=True)
class AccessKeySummary:
    """A key as :meth:`AccessKeys.list` shows it: everything but the secret."""

    access_key_id: str
    tenant: str
    principal: str
    status: AccessKeyStatus
    created_at: str  # ISO 8601, UTC
    last_used: str | None


@dataclass(frozen=True)
class SigningIdentity:
    """Who an access key speaks for, and the secret its requests are signed with."""

    caller: Caller
    secret: str


def principal_of(principal: str, tenant: str | None) -> tuple[str, str]:
    """``(tenant, principal ARN)`` of ``--principal`` given as an ARN or as ``<kind>/<name>``.

    docs/api.md: a principal is ``arn:hsmstore:iam::<tenant>:<user|service|role>/<name>``;
    ``<kind>/<name>`` takes ``tenant`` (default ``local``). A tenant's root is no caller.
    """
    arn = (
        principal
        if principal.startswith("arn:")
        else principal_arn(tenant or "local", *_kind_name(principal))
    )
    parsed = parse_principal_arn(arn, "principal")
    if parsed.kind == "root":
        raise ValidationException("principal must be a user, service or role, not a tenant's root")
    if tenant is not None and parsed.tenant != tenant:
        raise ValidationException(f"principal {arn} is not in tenant {tenant}")
    return parsed.tenant, arn


def _kind_name(principal: str) -> tuple[str, str]:
    kind, slash, name = principal.partition("/")
    if not slash:
        raise ValidationException(
            "principal must be <user|service|role>/<name> or its arn:hsmstore:iam:: ARN"
        )
    return kind, name


def caller_of(record: AccessKeyRecord) -> Caller:
    parsed = parse_principal_arn(record.principal, "principal")
    return Caller(tenant=parsed.tenant, principal=record.principal, kind=parsed.kind, name=parsed.name)


class AccessKeys:
    """The access key use cases over the records port and the token's secret sealer."""

    def __init__(
        self,
        records: AccessKeyRecords,
        sealer: SecretSealer,
        clock: Clock,
        *,
        cache_seconds: float = SECRET_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._sealer = sealer
        self._clock = clock
        self._monotonic = monotonic
        self._identities: TtlCache[str, SigningIdentity] = TtlCache(
            cache_seconds, monotonic, SECRET_CACHE_ENTRIES, name="access_keys"
        )
        self._last_noted: dict[str, float] = {}
        self._noted_lock = threading.Lock()

    def create(
        self, principal: str, tenant: str | None = None, *, operator: str = DEFAULT_OPERATOR
    ) -> CreatedAccessKey:
        """A new Active key for ``principal``; its secret is returned here and never again.

        Audited like IAM's CreateAccessKey in CloudTrail: one ``CreateAccessKey``
        record, committed with the key, naming the ``operator`` who made it, the
        principal and the new key's id (never the secret)."""
        tenant_name, arn = principal_of(principal, tenant)
        secret = new_secret_access_key()
        for _ in range(_CREATE_ATTEMPTS):
            access_key_id = new_access_key_id()
            record = AccessKeyRecord(
                access_key_id=access_key_id,
                tenant=tenant_name,
                principal=arn,
                sealed_secret=self._sealer.seal(
                    secret.encode(), sealing_context(access_key_id, tenant_name, arn)
                ),
                status=AccessKeyStatus.ACTIVE,
                created_at=self._clock.now(),
            )
            audit = self._audit(
                "CreateAccessKey",
                tenant_name,
                operator,
                {"principal": arn, "accessKeyId": access_key_id},
            )
            try:
                self._records.insert_access_key(record, audit=audit)
            except AlreadyExistsException:
                continue
            return CreatedAccessKey(access_key_id, secret, tenant_name, arn, AccessKeyStatus.ACTIVE)
        raise AlreadyExistsException("could not choose an unused access key id; try again")

    def list(self, tenant: str | None = None, principal: str | None = None) -> list[AccessKeySummary]:
        """Every key (of a tenant, of a principal), without its secret."""
        arn = principal_of(principal, tenant)[1] if principal is not None else None
        return [_summary(record) for record in self._records.list_access_keys(tenant, arn)]

    def revoke(self, access_key_id: str, *, operator: str = DEFAULT_OPERATOR) -> AccessKeySummary:
        """Revoke a key for good: its requests are refused from now on (other processes: see module doc).

        Audited as ``RevokeAccessKey`` (IAM's DeleteAccessKey analogue), committed with the change."""
        existing = self._records.get_access_key(access_key_id)
        if existing is None:
            raise NotFoundException(f"no access key {access_key_id}")
        audit = self._audit(
            "RevokeAccessKey",
            existing.tenant,
            operator,
            {"principal": existing.principal, "accessKeyId": access_key_id},
        )
        if not self._records.set_access_key_status(access_key_id, AccessKeyStatus.REVOKED, audit=audit):
            raise NotFoundException(f"no access key {access_key_id}")
        self._identities.invalidate(access_key_id)
        record = self._records.get_access_key(access_key_id)
        if record is None:
            raise NotFoundException(f"no access key {access_key_id}")
        return _summary(record)

    def _audit(
        self, event_name: str, tenant: str, operator: str, parameters: dict[str, str]
    ) -> dict[str, Any]:
        """The record of an operator's change: the operator acts in the key's tenant."""
        caller = Caller(tenant, principal_arn(tenant, "operator", operator), kind="operator", name=operator)
        return CallAudit(event_name, caller, parameters, self._clock.now()).to_record()

    def signing_identity(self, access_key_id: str) -> SigningIdentity | None:
        """The caller and secret of an Active key, else None (cached, see the module doc)."""
        return self._identities.get(access_key_id, lambda: self._load_identity(access_key_id))

    def forget(self, access_key_id: str) -> None:
        """The key changed (revoked or made inactive, maybe elsewhere): the next request reads it."""
        self._identities.invalidate(access_key_id)

    def follow_changes(self, watch: ChangeFeedWatch) -> None:
        """Issue 18: keep identities long while the process's follower of the metadata change
        feed calls :meth:`forget` (core/cache.py); a revocation elsewhere then stops a key within
        the feed's staleness, and within :data:`SECRET_CACHE_SECONDS` when it is not followed."""
        self._identities.follow(watch)

    def note_used(self, access_key_id: str) -> None:
        """Record a verified request's key as used now: at most every :data:`LAST_USED_INTERVAL_SECONDS`."""
        now = self._monotonic()
        with self._noted_lock:
            last = self._last_noted.get(access_key_id)
            if last is not None and now - last < LAST_USED_INTERVAL_SECONDS:
                return
            if len(self._last_noted) >= SECRET_CACHE_ENTRIES:
                self._last_noted.clear()
            self._last_noted[access_key_id] = now
        self._records.note_access_key_used(access_key_id, self._clock.now())

    def _load_identity(self, access_key_id: str) -> SigningIdentity | None:
        record = self._records.get_access_key(access_key_id)
        if record is None or record.status is not AccessKeyStatus.ACTIVE:
            return None
        secret = self._sealer.unseal(
            record.sealed_secret, sealing_context(record.access_key_id, record.tenant, record.principal)
        )
        return SigningIdentity(caller_of(record), secret.decode())


def _summary(record: AccessKeyRecord) -> AccessKeySummary:
    return AccessKeySummary(
        access_key_id=record.access_key_id,
        tenant=record.tenant,
        principal=record.principal,
        status=record.status,
        created_at=record.created_at.isoformat(),
        last_used=record.last_used.isoformat() if record.last_used is not None else None,
    )
