"""One exception hierarchy, named after the AWS KMS exception names.

Every error a caller can see is a :class:`KMSError` whose ``reason`` is the AWS
exception name; ``server/errors.py`` maps that reason to a gRPC code and a
``google.rpc.ErrorInfo`` (docs/api.md, "Errors"). Messages must never hold
plaintext, key material, PINs or another tenant's resource names, so every
message here is written by hsmstore code, never copied from a library error.
"""

from __future__ import annotations

from typing import ClassVar


class KMSError(Exception):
    """Base of every error that reaches a caller."""

    reason: ClassVar[str] = "KMSInternalException"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundException(KMSError):
    reason = "NotFoundException"


class DisabledException(KMSError):
    reason = "DisabledException"


class KMSInvalidStateException(KMSError):
    reason = "KMSInvalidStateException"


class KeyUnavailableException(KMSError):
    reason = "KeyUnavailableException"


class InvalidCiphertextException(KMSError):
    reason = "InvalidCiphertextException"


class IncorrectKeyException(KMSError):
    reason = "IncorrectKeyException"


class InvalidKeyUsageException(KMSError):
    reason = "InvalidKeyUsageException"


class ValidationException(KMSError):
    reason = "ValidationException"


class InvalidAliasNameException(KMSError):
    reason = "InvalidAliasNameException"


class InvalidArnException(KMSError):
    reason = "InvalidArnException"


class InvalidMarkerException(KMSError):
    reason = "InvalidMarkerException"


class MalformedPolicyDocumentException(KMSError):
    """AWS PutKeyPolicy/CreateKey: the policy is not syntactically or semantically correct."""

    reason = "MalformedPolicyDocumentException"


class InvalidGrantTokenException(KMSError):
    reason = "InvalidGrantTokenException"


class InvalidGrantIdException(KMSError):
    reason = "InvalidGrantIdException"


class AlreadyExistsException(KMSError):
    reason = "AlreadyExistsException"


class AccessDeniedException(KMSError):
    reason = "AccessDeniedException"


class UnauthenticatedException(KMSError):
    reason = "UnauthenticatedException"


class LimitExceededException(KMSError):
    reason = "LimitExceededException"


class ThrottlingException(KMSError):
    """AWS: "the request was denied due to request throttling" (a request quota, core/quotas.py).

    docs/api.md "Errors": RESOURCE_EXHAUSTED, like LimitExceededException;
    AWS SDKs retry it with backoff.
    """

    reason = "ThrottlingException"


class DependencyTimeoutException(KMSError):
    reason = "DependencyTimeoutException"


class KMSInternalException(KMSError):
    reason = "KMSInternalException"


class DependencyUnavailableException(KMSInternalException):
    """A dependency the call needs (the token, the metadata DB, the audit spool) is unreachable.

    The reason stays ``KMSInternalException``, which AWS SDKs retry; the
    transport answers it with a retryable status (docs/api.md, "Additions":
    ``UNAVAILABLE``), unlike a defect, which stays ``INTERNAL``.
    """


class UnsupportedOperationException(KMSError):
    reason = "UnsupportedOperationException"


class CustomKeyStoreNotFoundException(KMSError):
    """AWS: "no custom key store with the specified key store name or ID" (in the caller's tenant)."""

    reason = "CustomKeyStoreNotFoundException"


class CustomKeyStoreNameInUseException(KMSError):
    """AWS: "the specified custom key store name is already assigned to another custom key store"."""

    reason = "CustomKeyStoreNameInUseException"


class CustomKeyStoreInvalidStateException(KMSError):
    """AWS: the operation is not valid for the custom key store's ConnectionState
    (Update or Delete while connected, CreateKey in a store that is not connected)."""

    reason = "CustomKeyStoreInvalidStateException"


class CustomKeyStoreHasCMKsException(KMSError):
    """AWS: "the custom key store contains KMS keys"; DeleteCustomKeyStore refuses it."""

    reason = "CustomKeyStoreHasCMKsException"


class IncorrectTrustAnchorException(KMSError):
    """AWS (CloudHSM key stores): the token named by an update is not the one the store was created
    with. Here: UpdateCustomKeyStore names a token whose serial differs from the stored one."""

    reason = "IncorrectTrustAnchorException"


class KMSInvalidSignatureException(KMSError):
    """Verify: "The request was rejected because the signature verification failed" (issue 23)."""

    reason = "KMSInvalidSignatureException"


class KMSInvalidMacException(KMSError):
    """VerifyMac: "The request was rejected because the HMAC verification failed" (issue 23)."""

    reason = "KMSInvalidMacException"


class InvalidImportTokenException(KMSError):
    """ImportKeyMaterial: "the provided import token is invalid or is associated with a different KMS key"."""

    reason = "InvalidImportTokenException"


class ExpiredImportTokenException(KMSError):
    """ImportKeyMaterial: "the specified import token is expired" (ParametersValidTo, 24 hours)."""

    reason = "ExpiredImportTokenException"


class IncorrectKeyMaterialException(KMSError):
    """ImportKeyMaterial: "the key material ... is not the same key material that was previously
    imported into this KMS key"."""

    reason = "IncorrectKeyMaterialException"


class TagException(KMSError):
    """AWS TagResource/UntagResource/CreateKey: a tag key or value is not valid."""

    reason = "TagException"


class CiphertextAuthenticationFailed(Exception):
    """Raised by a KeyVault when AES-GCM authentication of a ciphertext fails.

    Not a :class:`KMSError`: the service turns it into the single
    ``InvalidCiphertextException`` so a caller never learns *why* a blob failed.
    """
