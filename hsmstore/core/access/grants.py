"""Grants, after AWS KMS CreateGrant: the record, its constraints, ids and tokens.

AWS: "A grant is a policy instrument that allows AWS principals to use KMS keys
in cryptographic operations." A grant names one key, one grantee principal and
a list of grant operations; it may carry one encryption context constraint.
Grants need no key policy or identity policy statement to take effect, but an
explicit deny in either still wins (authorization.py).

No I/O here: the metadata store keeps :class:`GrantRecord` rows, the service
calls :func:`validate_grant_request` before writing one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from hsmstore.core.formats.encryption_context import check_encryption_context
from hsmstore.core.validation import MAX_GRANT_TOKEN_CHARS, MAX_OPERATIONS, check_count, check_pattern, echo
from hsmstore.errors import InvalidGrantIdException, InvalidGrantTokenException, ValidationException

# AWS CreateGrant "Operations" enum values.
GRANT_OPERATIONS: frozenset[str] = frozenset(
    {
        "Decrypt",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "ReEncryptFrom",
        "ReEncryptTo",
        "Sign",
        "Verify",
        "GetPublicKey",
        "CreateGrant",
        "RetireGrant",
        "DescribeKey",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateMac",
        "VerifyMac",
        "DeriveSharedSecret",
    }
)

# AWS GrantConstraints: constraints apply "only to cryptographic operations that
# support an encryption context, that is, all cryptographic operations with a
# symmetric KMS key".
CONTEXT_OPERATIONS: frozenset[str] = frozenset(
    {
        "Decrypt",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "ReEncryptFrom",
        "ReEncryptTo",
    }
)

# AWS: "Grants with grant constraints can include the DescribeKey and RetireGrant
# operations, but the constraint doesn't apply to these operations"; CreateGrant
# is allowed too (the new grant must be equally strict or stricter).
_CONSTRAINT_EXEMPT_OPERATIONS: frozenset[str] = frozenset({"DescribeKey", "RetireGrant", "CreateGrant"})

# AWS: "Each constraint value can include up to 8 encryption context pairs. The
# encryption context value in each constraint cannot exceed 384 characters."
MAX_CONSTRAINT_PAIRS = 8
MAX_CONSTRAINT_VALUE_LENGTH = 384

_GRANT_ID = re.compile(r"[0-9a-f]{64}")
MAX_GRANT_ID_LENGTH = 128  # AWS GrantId: 1-128 characters
# AWS CreateGrant Name: 1-256 characters of [a-zA-Z0-9:/_-]
GRANT_NAME_PATTERN = re.compile(r"[a-zA-Z0-9:/_-]+")
MAX_GRANT_NAME_LENGTH = 256
GRANT_TOKEN_PREFIX = "HSMGT1"  # noqa: S105 (a format marker, not a secret)
_GRANT_TOKEN_BODY_BYTES = 32 + 4  # grant id bytes + CRC-32
MAX_GRANT_TOKEN_LENGTH = MAX_GRANT_TOKEN_CHARS  # AWS GrantTokenType: 1-8192 characters


def _lower_keys(context: Mapping[str, str]) -> dict[str, str] | None:
    """The pairs with lower-cased keys; None when two keys differ only by case (ambiguous)."""
    lowered: dict[str, str] = {}
    for key, value in context.items():
        folded = key.lower()
        if folded in lowered:
            return None
        lowered[folded] = value
    return lowered


@dataclass(frozen=True)
class GrantConstraints:
    """AWS GrantConstraints: ``EncryptionContextEquals`` or ``EncryptionContextSubset``.

    AWS: "in a grant constraint, the key in each key-value pair is not case
    sensitive, but the value is case sensitive." A request context with two keys
    that differ only by case is ambiguous under that rule, so it satisfies no
    constraint (a grant can only allow, so refusing is the safe reading).
    """

    encryption_context_equals: Mapping[str, str] | None = None
    encryption_context_subset: Mapping[str, str] | None = None
    _equals: dict[str, str] | None = field(init=False, repr=False, compare=False, default=None)
    _subset: dict[str, str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.encryption_context_equals is not None:
            object.__setattr__(self, "_equals", _lower_keys(self.encryption_context_equals))
        if self.encryption_context_subset is not None:
            object.__setattr__(self, "_subset", _lower_keys(self.encryption_context_subset))

    @property
    def empty(self) -> bool:
        return self.encryption_context_equals is None and self.encryption_context_subset is None

    def allows(self, encryption_context: Mapping[str, str] | None) -> bool:
        """AWS: Equals "the encryption context in the request is the same as the
        encryption context specified in this constraint"; Subset "includes the
        key-value pairs specified in this constraint, although it can include
        additional key-value pairs". A missing context is the empty context.
        """
        if self.empty:
            return True
        request = _lower_keys(encryption_context or {})
        if request is None:
            return False
        if self.encryption_context_equals is not None:
            return self._equals is not None and request == self._equals
        subset = self._subset
        return subset is not None and all(request.get(key) == value for key, value in subset.items())

    def admits(self, child: GrantConstraints | None) -> bool:
        """Whether a grant created through this grant's CreateGrant permission is strict enough.

        AWS: "If a grant with a grant constraint includes the CreateGrant
        operation, the constraint requires that any grants created with the
        CreateGrant permission have an equally strict or stricter encryption
        context constraint." Equals admits only the same Equals; Subset S admits
        an Equals or a Subset that contains every pair of S.
        """
        if self.empty:
            return True
        if child is None or child.empty:
            return False
        if self.encryption_context_equals is not None:
            return (
                child.encryption_context_equals is not None
                and self._equals is not None
                and child._equals == self._equals
            )
        narrower = child._equals if child.encryption_context_equals is not None else child._subset
        subset = self._subset
        if narrower is None or subset is None:
            return False
        return all(narrower.get(key) == value for key, value in subset.items())

    def to_json(self) -> str:
        """Stable text for the metadata store: AWS member names, sorted keys, no spaces."""
        document: dict[str, dict[str, str]] = {}
        if self.encryption_context_equals is not None:
            document["EncryptionContextEquals"] = dict(self.encryption_context_equals)
        if self.encryption_context_subset is not None:
            document["EncryptionContextSubset"] = dict(self.encryption_context_subset)
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> GrantConstraints:
        """Inverse of :meth:`to_json`; ValueError for text it did not write."""
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("grant constraints must be a JSON object")
        unknown = set(document) - {"EncryptionContextEquals", "EncryptionContextSubset"}
        if unknown:
            raise ValueError(f"unknown grant constraint member(s): {sorted(unknown)}")
        return cls(
            encryption_context_equals=_string_map(document.get("EncryptionContextEquals")),
            encryption_context_subset=_string_map(document.get("EncryptionContextSubset")),
        )


def _string_map(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValueError("a grant constraint must map strings to strings")
    return dict(value)


@dataclass(frozen=True)
class GrantRecord:
    """One grant as the metadata store keeps it (AWS GrantListEntry)."""

    grant_id: str
    key_id: str
    key_tenant: str
    name: str
    grantee_principal: str
    retiring_principal: str
    issuing_principal: str
    operations: tuple[str, ...]
    constraints: GrantConstraints | None
    creation_date: datetime

    def permits(self, operation: str, encryption_context: Mapping[str, str] | None) -> bool:
        """Whether this grant allows ``operation`` (a grant operation name, e.g. ``"Encrypt"``).

        Constraints are checked only for operations that take an encryption
        context (AWS: "Grant constraints are not applied to operations that do
        not support an encryption context, such as [...] DescribeKey or
        RetireGrant"). Sign/Verify/MAC operations never pass a constrained
        grant: :func:`validate_grant_request` refuses that combination, so a
        stored one is not trusted either. CreateGrant's own rule (the new grant
        must be as strict) is :meth:`GrantConstraints.admits`.
        """
        if operation not in self.operations:
            return False
        constraints = self.constraints
        if constraints is None or constraints.empty:
            return True
        if operation in CONTEXT_OPERATIONS:
            return constraints.allows(encryption_context)
        return operation in _CONSTRAINT_EXEMPT_OPERATIONS

    def retirable_by(self, principal: str) -> bool:
        """AWS RetireGrant: the retiring principal, or the grantee when the grant includes RetireGrant.

        Retiring is authorised per grant, not by key policy, so authorization.decide
        never allows ``kms:RetireGrant`` through a grant; the service asks this.
        (AWS also lets the key's account retire; that is the tenant's policy path.)
        """
        if self.retiring_principal and principal == self.retiring_principal:
            return True
        return principal == self.grantee_principal and "RetireGrant" in self.operations


def validate_grant_request(operations: Sequence[str], constraints: GrantConstraints | None) -> None:
    """AWS CreateGrant input rules; ``ValidationException`` for any violation.

    - Operations: at least one, each a CreateGrant ``Operations`` enum value.
    - Constraints: not both ``EncryptionContextEquals`` and ``EncryptionContextSubset``
      (hsmstore's reading of "a grant constraint"); up to 8 pairs, values up to
      384 characters, keys not empty and not differing only by case (AWS: keys
      are not case sensitive in a constraint, "do not use multiple encryption
      context pairs that differ only by case").
    - AWS: "You cannot use an encryption context grant constraint for
      cryptographic operations with asymmetric KMS keys or HMAC KMS keys", so a
      constrained grant may hold only context operations plus DescribeKey,
      RetireGrant and CreateGrant.
    """
    if not operations:
        raise ValidationException("Operations must name at least one grant operation")
    check_count(operations, "Operations", max_items=MAX_OPERATIONS, min_items=1)
    for operation in operations:
        if operation not in GRANT_OPERATIONS:
            raise ValidationException(
                f"Operations member {echo(operation)} is not one of: {', '.join(sorted(GRANT_OPERATIONS))}"
            )
    if constraints is None or constraints.empty:
        return
    if (
        constraints.encryption_context_equals is not None
        and constraints.encryption_context_subset is not None
    ):
        raise ValidationException(
            "Constraints may set EncryptionContextEquals or EncryptionContextSubset, not both"
        )
    for member, pairs in (
        ("EncryptionContextEquals", constraints.encryption_context_equals),
        ("EncryptionContextSubset", constraints.encryption_context_subset),
    ):
        if pairs is None:
            continue
        if len(pairs) > MAX_CONSTRAINT_PAIRS:
            raise ValidationException(f"{member} may hold at most {MAX_CONSTRAINT_PAIRS} pairs")
        check_encryption_context(pairs, member)  # keys not empty, 8,192 bytes in all
        if any(len(value) > MAX_CONSTRAINT_VALUE_LENGTH for value in pairs.values()):
            raise ValidationException(
                f"{member} values must be at most {MAX_CONSTRAINT_VALUE_LENGTH} characters long"
            )
        if _lower_keys(pairs) is None:
            raise ValidationException(f"{member} keys must not differ only by case")
    unsupported = sorted(set(operations) - CONTEXT_OPERATIONS - _CONSTRAINT_EXEMPT_OPERATIONS)
    if unsupported:
        raise ValidationException(
            f"Grant constraints are not supported for the operations {', '.join(unsupported)}: "
            "they take no encryption context"
        )


def new_grant_id() -> str:
    """64 lower-case hex characters, like AWS grant ids (256 random bits)."""
    return secrets.token_hex(32)


def validate_grant_id(grant_id: str) -> str:
    """A grant id as :func:`new_grant_id` makes it; ``InvalidGrantIdException`` otherwise.

    AWS GrantId is 1-128 characters: a longer one is a ValidationException, refused unread.
    """
    if len(grant_id) > MAX_GRANT_ID_LENGTH:
        raise ValidationException(f"GrantId must be 1 to {MAX_GRANT_ID_LENGTH} characters long")
    if not _GRANT_ID.fullmatch(grant_id):
        raise InvalidGrantIdException("GrantId is not a valid grant id")
    return grant_id


def validate_grant_name(name: str) -> str:
    """AWS CreateGrant Name: 1-256 of ``[a-zA-Z0-9:/_-]``; empty means no name."""
    if name:
        check_pattern(
            name,
            "Name",
            GRANT_NAME_PATTERN,
            "1 to 256 of the characters a-z A-Z 0-9 : / _ -",
            max_length=MAX_GRANT_NAME_LENGTH,
        )
    return name


def grant_token_for(grant_id: str) -> str:
    """The grant token CreateGrant returns for ``grant_id``.

    Format: ``HSMGT1`` followed by the unpadded base64url encoding of 36 bytes,
    the 32 bytes of the hex grant id then their CRC-32 (big-endian), 54
    characters in all. Like an AWS grant token it is not a secret: it only
    names the grant, which must still exist and name the caller as grantee.
    The CRC tells a mistyped token (InvalidGrantTokenException) from an unknown grant.
    """
    raw = bytes.fromhex(validate_grant_id(grant_id))
    body = raw + zlib.crc32(raw).to_bytes(4, "big")
    return GRANT_TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")


def grant_id_from_token(token: str) -> str:
    """The grant id a token names; ``InvalidGrantTokenException`` for anything malformed."""
    if not token.startswith(GRANT_TOKEN_PREFIX) or len(token) > MAX_GRANT_TOKEN_LENGTH:
        raise InvalidGrantTokenException("The grant token is not valid")
    encoded = token[len(GRANT_TOKEN_PREFIX) :]
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise InvalidGrantTokenException("The grant token is not valid") from None
    if len(body) != _GRANT_TOKEN_BODY_BYTES or grant_token_for(body[:32].hex()) != token:
        # re-encoding catches a bad CRC and non-canonical base64 alike
        raise InvalidGrantTokenException("The grant token is not valid")
    return body[:32].hex()
