"""What each kind of key may be used for: key usage, algorithms and grant operations (issue 23).

AWS's rules, with its wording where it has one:

* an operation on a key of another usage is ``InvalidKeyUsageException``:
  "<key ARN> key usage is SIGN_VERIFY which is not valid for Encrypt.";
* an algorithm the key's spec does not allow is ``InvalidKeyUsageException``:
  "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_4096."
  (AWS's answer to Encrypt with an RSA key and no algorithm);
* a name that is no algorithm at all is ``ValidationException`` (AWS's enum check);
* an algorithm AWS allows but the key's token does not offer is
  ``UnsupportedOperationException`` naming it (issue 23: "an algorithm the key's
  token lacks is refused clearly ... never moves to the host");
* CreateGrant: "if the grant allows an operation that the KMS key does not
  support, CreateGrant fails with a ValidationException" (:func:`grant_operations_for`).
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum
from typing import TypeVar

from hsmstore.core.model import KeyRecord, KeySpec, KeyUsage
from hsmstore.core.ports.key_store import KeyPairs, MacKeys
from hsmstore.errors import InvalidKeyUsageException, UnsupportedOperationException, ValidationException

EnumT = TypeVar("EnumT", bound=StrEnum)


def parse_algorithm(enum: type[EnumT], value: str, field_name: str) -> EnumT:
    """An algorithm member: missing or unknown is ``ValidationException`` (AWS's enum constraint)."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ValidationException(f"{field_name} must be one of: {allowed}") from None


def require_usage(key: KeyRecord, usage: KeyUsage, operation: str, arn: str) -> None:
    """AWS: "<arn> key usage is <usage> which is not valid for <operation>."."""
    if key.key_usage is not usage:
        raise InvalidKeyUsageException(
            f"{arn} key usage is {key.key_usage.value} which is not valid for {operation}."
        )


def require_algorithm(key: KeyRecord, algorithm: str, allowed: Collection[str]) -> None:
    """AWS: "Algorithm <algorithm> is incompatible with key spec <spec>."."""
    if algorithm not in allowed:
        raise InvalidKeyUsageException(
            f"Algorithm {algorithm} is incompatible with key spec {key.key_spec.value}."
        )


def offered_by(key_store: object) -> frozenset[str] | None:
    """The algorithms a key store's token runs, or None for one without key pairs (no filter)."""
    return key_store.offered_algorithms() if isinstance(key_store, KeyPairs) else None


def offered_for(key_store: object, spec: KeySpec) -> frozenset[str] | None:
    """The filter of ``spec``'s algorithm lists: a token's profile names its asymmetric and HMAC
    algorithms only, so SYMMETRIC_DEFAULT (AES-GCM, every key store's) is never filtered."""
    return None if spec is KeySpec.SYMMETRIC_DEFAULT else offered_by(key_store)


def require_offered(key_store: object, algorithm: str) -> None:
    """An algorithm AWS allows for the key that its token cannot run is refused, never emulated."""
    offered = offered_by(key_store)
    if offered is not None and algorithm not in offered:
        raise UnsupportedOperationException(
            f"{algorithm} is not supported by this key's key store (its token does not offer it)"
        )


def key_pairs_of(key_store: object) -> KeyPairs:
    if not isinstance(key_store, KeyPairs):
        raise UnsupportedOperationException("This key's key store does not hold RSA or ECC key pairs")
    return key_store


def mac_keys_of(key_store: object) -> MacKeys:
    if not isinstance(key_store, MacKeys):
        raise UnsupportedOperationException("This key's key store does not hold HMAC keys")
    return key_store


# -- grants -----------------------------------------------------------------------------------------

_ALWAYS = frozenset({"CreateGrant", "RetireGrant", "DescribeKey"})
_SYMMETRIC = frozenset(
    {
        "Encrypt",
        "Decrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "ReEncryptFrom",
        "ReEncryptTo",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    }
)
_BY_USAGE: dict[KeyUsage, frozenset[str]] = {
    KeyUsage.ENCRYPT_DECRYPT: frozenset(
        {"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey"}
    ),
    KeyUsage.SIGN_VERIFY: frozenset({"Sign", "Verify", "GetPublicKey"}),
    KeyUsage.GENERATE_VERIFY_MAC: frozenset({"GenerateMac", "VerifyMac"}),
    KeyUsage.KEY_AGREEMENT: frozenset({"DeriveSharedSecret", "GetPublicKey"}),
}


def grant_operations_for(spec: KeySpec, usage: KeyUsage) -> frozenset[str]:
    """The grant operations a key of ``spec`` and ``usage`` supports (AWS CreateGrant).

    "Grants for symmetric [keys] cannot allow ... Sign, Verify, and GetPublicKey";
    "Grants for asymmetric [keys] cannot allow ... operations that generate data keys
    or data key pairs"; an ENCRYPT_DECRYPT asymmetric key no Sign or Verify, a
    SIGN_VERIFY one no Encrypt or Decrypt; HMAC keys GenerateMac and VerifyMac.
    """
    if spec is KeySpec.SYMMETRIC_DEFAULT:
        return _ALWAYS | _SYMMETRIC
    return _ALWAYS | _BY_USAGE[usage]


def check_grant_operations(key: KeyRecord, operations: Collection[str]) -> None:
    """CreateGrant on ``key``: every operation must be one the key supports, else ValidationException."""
    unsupported = sorted(set(operations) - grant_operations_for(key.key_spec, key.key_usage))
    if unsupported:
        raise ValidationException(
            f"Operations {', '.join(unsupported)} are not supported by a {key.key_spec.value} key "
            f"with KeyUsage {key.key_usage.value}"
        )
