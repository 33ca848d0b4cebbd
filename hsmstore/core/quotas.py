"""Quotas: how fast a tenant may call (request quotas) and how much it may keep (resource quotas).

Issue 16, Deliver 5: "Per-tenant request rates per operation family (AWS's
shape: cryptographic, management, GenerateRandom) with ThrottlingException,
and resource quotas (keys, aliases, grants per key, policies) with
LimitExceededException; configurable, documented defaults, enforced across
workers and nodes within a stated tolerance; metrics show throttles."

Request quotas follow AWS KMS's "Request quotas" page
(https://docs.aws.amazon.com/kms/latest/developerguide/requests-per-second.html):

* the cryptographic operations share one quota per account and Region
  ("Cryptographic operations (symmetric) request rate": Decrypt, Encrypt,
  GenerateDataKey, GenerateDataKeyWithoutPlaintext, GenerateMac,
  GenerateRandom, ReEncrypt, VerifyMac; 10,000 a second by default);
* every other operation has its own quota ("Each request quota is calculated
  independently": CreateKey 5, DescribeKey 2,000, ...; :data:`AWS_OPERATION_RATES`);
* "For cross-account requests, AWS KMS throttles the account that makes the
  requests, not the account that owns the KMS key": the caller's tenant pays.

An operator may give GenerateRandom its own bucket (``generate_random``, so
random draws cannot eat the tenant's encryption budget), make every management
operation share one bucket (``management_shared``), or override an
operation's rate (``management``). Operations AWS KMS does not have take
:data:`HSMSTORE_OPERATION_RATES` (LookupEvents: CloudTrail's own quota).

The buckets are token buckets of ``rate`` tokens a second holding at most one
second's worth, so a tenant that was idle may spend a full second's quota at
once, as AWS's "requests per second" allows, and no more. They live behind
the :class:`~hsmstore.core.ports.rate_limiter.RateLimiter` port: one node's
``--workers`` share them (``store/rate_buckets.py``); each node enforces
``rate x node_share`` (docs/operations.md, "Quotas", says what that gives
across nodes).

Resource quotas follow AWS KMS's "Resource quotas" page
(https://docs.aws.amazon.com/kms/latest/developerguide/resource-limits.html)
and IAM's for identity policies; the use cases that create each resource
check them (:class:`ResourceQuotas`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from hsmstore.core.model import Caller
from hsmstore.core.ports.rate_limiter import RateLimiter
from hsmstore.errors import LimitExceededException, ThrottlingException

log = logging.getLogger(__name__)


class Family(StrEnum):
    """Which kind of quota a call counts against (the metrics' ``family`` label)."""

    CRYPTOGRAPHIC = "cryptographic"
    GENERATE_RANDOM = "generate_random"
    MANAGEMENT = "management"


# AWS "Cryptographic operations (symmetric) request rate": "Applies to: Decrypt, Encrypt,
# GenerateDataKey, GenerateDataKeyWithoutPlaintext, GenerateMac, GenerateRandom, ReEncrypt, VerifyMac".
CRYPTOGRAPHIC_OPERATIONS = frozenset(
    {
        "Decrypt",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateMac",
        "GenerateRandom",
        "ReEncrypt",
        "VerifyMac",
        # Issue 23. AWS counts these against "Cryptographic operations (RSA) request rate" (500,
        # shared) or "(ECC)" (300, shared) by the key's type, but the quota is asked before the key
        # is known (core/calls.py), so they share this family rather than fall to the 5/s default.
        "Sign",
        "Verify",
        "DeriveSharedSecret",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    }
)
AWS_CRYPTOGRAPHIC_RATE = 10_000.0  # "10,000 (shared)", the default outside the larger Regions

# AWS "Request quotas for each AWS KMS API operation", requests a second (default values).
AWS_OPERATION_RATES: Mapping[str, float] = MappingProxyType(
    {
        "CancelKeyDeletion": 5,
        "CreateAlias": 5,
        "CreateGrant": 50,
        "CreateKey": 5,
        "DeleteAlias": 15,
        "DeleteImportedKeyMaterial": 15,
        "DescribeKey": 2000,
        "DisableKey": 5,
        "DisableKeyRotation": 5,
        "EnableKey": 5,
        "EnableKeyRotation": 15,
        "GetKeyLastUsage": 5,
        "GetKeyPolicy": 1000,
        "GetKeyRotationStatus": 1000,
        "GetParametersForImport": 1,
        "GetPublicKey": 2000,
        "ImportKeyMaterial": 15,
        "ListAliases": 500,
        "ListGrants": 100,
        "ListKeyPolicies": 100,
        "ListKeyRotations": 100,
        "ListKeys": 500,
        "ListResourceTags": 2000,
        "ListRetirableGrants": 100,
        "PutKeyPolicy": 15,
        "RetireGrant": 50,
        "RevokeGrant": 50,
        "RotateKeyOnDemand": 5,
        "ScheduleKeyDeletion": 15,
        "TagResource": 10,
        "UntagResource": 5,
        "UpdateAlias": 5,
        "UpdateKeyDescription": 5,
    }
)

# hsmstore's operations that AWS KMS does not have. LookupEvents is CloudTrail's ("The rate of
# lookup requests is limited to two per second, per account, per Region"); IAM publishes no
# per-operation rates, so identity policy writes get KMS's usual 5 and reads its List* 100.
HSMSTORE_OPERATION_RATES: Mapping[str, float] = MappingProxyType(
    {
        "LookupEvents": 2,
        "PutIdentityPolicy": 5,
        "DeleteIdentityPolicy": 5,
        "GetIdentityPolicy": 100,
        "ListIdentityPolicies": 100,
        "Simulate": 100,
    }
)

# An operation in no table (one added later): the most common management quota in AWS's table.
DEFAULT_OPERATION_RATE = 5.0

THROTTLED_MESSAGE = (
    "You have exceeded the rate at which you may call KMS ({family} request quota). "
    "Reduce the frequency of your calls."
)

ThrottleListener = Callable[[str, Family], None]


@dataclass(frozen=True)
class RateQuotas:
    """Request quotas, in requests a second per tenant (before ``node_share``).

    ``generate_random`` 0: GenerateRandom shares the cryptographic quota (AWS);
    above 0, its own bucket at that rate. ``management_shared`` 0: one bucket
    per operation (AWS); above 0, one bucket for every non-cryptographic
    operation at that rate. ``management``: per-operation rates that replace
    the tables' (unless ``management_shared``). ``node_share``: the part of
    each rate this node enforces (docs/operations.md, "Quotas").
    """

    cryptographic: float = AWS_CRYPTOGRAPHIC_RATE
    generate_random: float = 0.0
    management_shared: float = 0.0
    management: Mapping[str, float] = field(default_factory=dict)
    node_share: float = 1.0


@dataclass(frozen=True, slots=True)
class _Bucket:
    name: str
    family: Family
    rate: float
    burst: float


class RequestQuotas:
    """Admits a call or refuses it with ThrottlingException, before its use case runs.

    ``admit`` is handed to the call envelope (core/calls.py), so every
    transport throttles the same way and a throttled call is audited like any
    refused one. Without a limiter every call is admitted.

    A limiter that fails (its file unreadable, say) admits the call: a quota
    protects capacity, it is not access control, so it must not turn an
    outage of its own into an outage of the service. The failure is logged
    once per process.
    """

    def __init__(self, limiter: RateLimiter | None, quotas: RateQuotas | None = None) -> None:
        self._limiter = limiter
        self._quotas = quotas or RateQuotas()
        self._buckets: dict[str, _Bucket] = {}
        self._listeners: list[ThrottleListener] = []
        self._failure_logged = False
        self._lock = threading.Lock()

    @property
    def enforced(self) -> bool:
        return self._limiter is not None

    def on_throttle(self, listener: ThrottleListener) -> None:
        """Call ``listener(operation, family)`` for every throttled call (the metrics' throttle counter).

        A listener must be quick and must not raise (a failure is logged and ignored).
        """
        self._listeners.append(listener)

    def admit(self, caller: Caller, operation: str) -> None:
        """Raise ThrottlingException if ``caller``'s tenant is over the quota ``operation`` counts against."""
        if self._limiter is None:
            return
        bucket = self._bucket(operation)
        try:
            allowed = self._limiter.try_acquire(
                f"{caller.tenant}\x1f{bucket.name}", bucket.rate, bucket.burst
            )
        except Exception:
            if not self._failure_logged:
                self._failure_logged = True
                log.exception("the request quota limiter failed; calls are admitted unthrottled")
            return
        if allowed:
            return
        for listener in self._listeners:
            try:
                listener(operation, bucket.family)
            except Exception:
                log.exception("a throttle listener failed")
        raise ThrottlingException(THROTTLED_MESSAGE.format(family=bucket.family.value))

    def rate_of(self, operation: str) -> tuple[Family, float]:
        """The family ``operation`` counts against and this node's rate for it (docs, tests)."""
        bucket = self._bucket(operation)
        return bucket.family, bucket.rate

    def _bucket(self, operation: str) -> _Bucket:
        bucket = self._buckets.get(operation)
        if bucket is None:
            bucket = self._make_bucket(operation)
            with self._lock:
                self._buckets[operation] = bucket
        return bucket

    def _make_bucket(self, operation: str) -> _Bucket:
        quotas = self._quotas
        if operation == "GenerateRandom" and quotas.generate_random > 0:
            return self._scaled(Family.GENERATE_RANDOM.value, Family.GENERATE_RANDOM, quotas.generate_random)
        if operation in CRYPTOGRAPHIC_OPERATIONS:
            return self._scaled(Family.CRYPTOGRAPHIC.value, Family.CRYPTOGRAPHIC, quotas.cryptographic)
        if quotas.management_shared > 0:
            return self._scaled(Family.MANAGEMENT.value, Family.MANAGEMENT, quotas.management_shared)
        rate = quotas.management.get(operation) or operation_rate(operation)
        return self._scaled(f"{Family.MANAGEMENT.value}/{operation}", Family.MANAGEMENT, rate)

    def _scaled(self, name: str, family: Family, rate: float) -> _Bucket:
        """This node's part of ``rate``; a bucket holds one second of it, and at least one call."""
        node_rate = rate * self._quotas.node_share
        return _Bucket(name, family, node_rate, max(1.0, node_rate))


def operation_rate(operation: str) -> float:
    """The default rate of a non-cryptographic operation: AWS's, else hsmstore's, else 5 a second."""
    return float(
        AWS_OPERATION_RATES.get(operation)
        or HSMSTORE_OPERATION_RATES.get(operation)
        or DEFAULT_OPERATION_RATE
    )


def parse_operation_rates(text: str) -> dict[str, float]:
    """``"CreateKey=10,DescribeKey=500"`` -> {operation: rate}; ValueError naming what is wrong.

    Only non-cryptographic operations (the cryptographic ones share one quota,
    set on its own) and only positive, finite rates.
    """
    known = set(AWS_OPERATION_RATES) | set(HSMSTORE_OPERATION_RATES)
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        operation, equals, value = item.partition("=")
        operation = operation.strip()
        if not equals:
            raise ValueError(f"{item!r} is not OPERATION=RATE")
        if operation in CRYPTOGRAPHIC_OPERATIONS:
            raise ValueError(f"{operation} shares the cryptographic quota; set that one instead")
        if operation not in known:
            raise ValueError(f"{operation!r} is not an operation with a request quota")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"the rate of {operation} must be a number, got {value.strip()!r}") from None
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"the rate of {operation} must be a positive number of requests a second")
        rates[operation] = rate
    return rates


# -- resource quotas -------------------------------------------------------------------------

AWS_KEYS_PER_TENANT = (
    100_000  # "AWS KMS keys: 100,000 ... customer managed keys ... regardless of ... key state"
)
AWS_ALIASES_PER_KEY = 50  # "Aliases per KMS key: 50"; it "replaces the Aliases per Region quota"
AWS_GRANTS_PER_KEY = 50_000  # "Grants per KMS key: 50,000" (customer managed keys)
# IAM quotas: "Managed policies attached to an IAM role" / "... to an IAM user": 10 by default.
IAM_POLICIES_PER_PRINCIPAL = 10


@dataclass(frozen=True)
class ResourceQuotas:
    """How many of each resource a tenant, key or principal may have; AWS's defaults.

    Checked against a count from the store just before the resource is made.
    Two creations racing past the same count can both succeed, so a limit can
    be exceeded by at most the number of creations running at that moment
    (docs/operations.md, "Quotas"); AWS's quotas are soft limits too.
    """

    keys_per_tenant: int = AWS_KEYS_PER_TENANT
    aliases_per_key: int = AWS_ALIASES_PER_KEY
    grants_per_key: int = AWS_GRANTS_PER_KEY
    identity_policies_per_principal: int = IAM_POLICIES_PER_PRINCIPAL

    def check_keys(self, customer_keys: int) -> None:
        """CreateKey: AWS managed keys "do not count against this quota", every state does."""
        if customer_keys >= self.keys_per_tenant:
            raise LimitExceededException(
                f"This tenant already has {customer_keys} customer managed keys, its quota of "
                f"{self.keys_per_tenant}; schedule the deletion of keys it no longer needs"
            )

    def check_aliases(self, aliases_of_key: int) -> None:
        """CreateAlias, UpdateAlias: "You might encounter this quota when you create or update an alias"."""
        if aliases_of_key >= self.aliases_per_key:
            raise LimitExceededException(
                f"The target key already has {aliases_of_key} aliases, the quota of "
                f"{self.aliases_per_key} aliases per key"
            )

    def check_grants(self, grants_of_key: int) -> None:
        """CreateGrant: "you can create new grants ... only when an active grant is retired or revoked"."""
        if grants_of_key >= self.grants_per_key:
            raise LimitExceededException(
                f"The key already has {grants_of_key} grants, the quota of {self.grants_per_key} "
                "grants per key; retire or revoke grants it no longer needs"
            )

    def check_identity_policies(self, policies_of_principal: int) -> None:
        """PutIdentityPolicy of a new name (replacing one never counts)."""
        if policies_of_principal >= self.identity_policies_per_principal:
            raise LimitExceededException(
                f"The principal already has {policies_of_principal} identity policies, the quota of "
                f"{self.identity_policies_per_principal} per principal; delete one or combine them"
            )
