"""One exception class per error reason of the contract (docs/api.md, "Errors").

Every failure carries a ``google.rpc.ErrorInfo`` whose ``reason`` is the AWS
exception name (domain ``hsmstore``); the client raises the class of that name,
so ``except NotFoundException`` reads as it does with boto3. A failure without
a reason (the server cannot be reached, the client's own deadline passed) is
``ServiceUnavailableError`` or ``DeadlineExceededError``; anything else is
``HsmstoreError`` itself with the gRPC code. No message ever holds plaintext or
key material: the server's messages do not (docs/api.md), and none is added here.
"""

from __future__ import annotations

import grpc

from hsmstore.client.errors import error_reason


class HsmstoreError(Exception):
    """A failed hsmstore call.

    ``reason`` is the AWS exception name, ``message`` the server's message and
    ``code`` the gRPC status name (``NOT_FOUND``).
    """

    reason: str = ""

    def __init__(self, message: str, *, code: str = "UNKNOWN", reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        """The message; prefixed with the reason or code when the class does not already say it."""
        if type(self).__name__ == self.reason:
            return self.message
        return f"{self.reason or self.code}: {self.message}"


# NOT_FOUND


class NotFoundException(HsmstoreError):
    """No such key, alias or grant in the caller's view."""

    reason = "NotFoundException"


class CustomKeyStoreNotFoundException(HsmstoreError):
    """No such custom key store."""

    reason = "CustomKeyStoreNotFoundException"


# FAILED_PRECONDITION


class DisabledException(HsmstoreError):
    """The key is disabled."""

    reason = "DisabledException"


class KMSInvalidStateException(HsmstoreError):
    """The key's state does not allow the call."""

    reason = "KMSInvalidStateException"


class KeyUnavailableException(HsmstoreError):
    """The key's material is not available."""

    reason = "KeyUnavailableException"


class CustomKeyStoreInvalidStateException(HsmstoreError):
    """The custom key store's connection state does not allow the call."""

    reason = "CustomKeyStoreInvalidStateException"


class CustomKeyStoreHasCMKsException(HsmstoreError):
    """The custom key store still holds keys."""

    reason = "CustomKeyStoreHasCMKsException"


# INVALID_ARGUMENT


class InvalidCiphertextException(HsmstoreError):
    """The ciphertext or its encryption context is not valid (one message for all)."""

    reason = "InvalidCiphertextException"


class IncorrectKeyException(HsmstoreError):
    """The ciphertext was not made under the given key."""

    reason = "IncorrectKeyException"


class InvalidKeyUsageException(HsmstoreError):
    """The key's usage does not allow the call."""

    reason = "InvalidKeyUsageException"


class KMSInvalidSignatureException(HsmstoreError):
    """Verify: the signature does not verify with the key and algorithm (issue 23)."""

    reason = "KMSInvalidSignatureException"


class KMSInvalidMacException(HsmstoreError):
    """VerifyMac: the MAC does not verify with the key and algorithm (issue 23)."""

    reason = "KMSInvalidMacException"


class ValidationException(HsmstoreError):
    """A parameter is missing or out of its limits."""

    reason = "ValidationException"


class InvalidAliasNameException(HsmstoreError):
    """The alias name is not valid."""

    reason = "InvalidAliasNameException"


class InvalidArnException(HsmstoreError):
    """The resource name is not valid."""

    reason = "InvalidArnException"


class MalformedPolicyDocumentException(HsmstoreError):
    """The policy does not parse."""

    reason = "MalformedPolicyDocumentException"


class InvalidGrantTokenException(HsmstoreError):
    """A grant token is not valid."""

    reason = "InvalidGrantTokenException"


class InvalidGrantIdException(HsmstoreError):
    """The grant id is not valid."""

    reason = "InvalidGrantIdException"


class InvalidImportTokenException(HsmstoreError):
    """The import token is not valid."""

    reason = "InvalidImportTokenException"


class ExpiredImportTokenException(HsmstoreError):
    """The import token has expired."""

    reason = "ExpiredImportTokenException"


class IncorrectKeyMaterialException(HsmstoreError):
    """The key material does not match."""

    reason = "IncorrectKeyMaterialException"


class InvalidMarkerException(HsmstoreError):
    """The paging marker is not valid."""

    reason = "InvalidMarkerException"


class TagException(HsmstoreError):
    """A tag key or value is not valid."""

    reason = "TagException"


class IncorrectTrustAnchorException(HsmstoreError):
    """The token's serial differs from the custom key store's."""

    reason = "IncorrectTrustAnchorException"


# ALREADY_EXISTS


class AlreadyExistsException(HsmstoreError):
    """The resource exists already."""

    reason = "AlreadyExistsException"


class CustomKeyStoreNameInUseException(HsmstoreError):
    """The tenant has a custom key store of that name."""

    reason = "CustomKeyStoreNameInUseException"


# PERMISSION_DENIED, UNAUTHENTICATED


class AccessDeniedException(HsmstoreError):
    """The caller is not allowed the call."""

    reason = "AccessDeniedException"


class UnauthenticatedException(HsmstoreError):
    """The caller is not identified."""

    reason = "UnauthenticatedException"


# RESOURCE_EXHAUSTED


class LimitExceededException(HsmstoreError):
    """A resource quota is reached."""

    reason = "LimitExceededException"


class ThrottlingException(HsmstoreError):
    """The tenant is over its request rate; retried."""

    reason = "ThrottlingException"


# DEADLINE_EXCEEDED, INTERNAL (UNAVAILABLE: a dependency is down, retried), UNIMPLEMENTED


class DependencyTimeoutException(HsmstoreError):
    """A dependency did not answer in time."""

    reason = "DependencyTimeoutException"


class KMSInternalException(HsmstoreError):
    """An internal failure; on UNAVAILABLE, retried."""

    reason = "KMSInternalException"


class UnsupportedOperationException(HsmstoreError):
    """hsmstore does not do this."""

    reason = "UnsupportedOperationException"


class ServiceUnavailableError(HsmstoreError):
    """UNAVAILABLE without a reason: the server cannot be reached or is stopping (retried)."""


class DeadlineExceededError(HsmstoreError):
    """The call's deadline (``KeyStoreClient(timeout=...)``) passed before an answer came."""


BY_REASON: dict[str, type[HsmstoreError]] = {
    cls.reason: cls
    for cls in (
        NotFoundException,
        CustomKeyStoreNotFoundException,
        DisabledException,
        KMSInvalidStateException,
        KeyUnavailableException,
        CustomKeyStoreInvalidStateException,
        CustomKeyStoreHasCMKsException,
        InvalidCiphertextException,
        IncorrectKeyException,
        InvalidKeyUsageException,
        KMSInvalidSignatureException,
        KMSInvalidMacException,
        ValidationException,
        InvalidAliasNameException,
        InvalidArnException,
        MalformedPolicyDocumentException,
        InvalidGrantTokenException,
        InvalidGrantIdException,
        InvalidImportTokenException,
        ExpiredImportTokenException,
        IncorrectKeyMaterialException,
        InvalidMarkerException,
        TagException,
        IncorrectTrustAnchorException,
        AlreadyExistsException,
        CustomKeyStoreNameInUseException,
        AccessDeniedException,
        UnauthenticatedException,
        LimitExceededException,
        ThrottlingException,
        DependencyTimeoutException,
        KMSInternalException,
        UnsupportedOperationException,
    )
}


def from_rpc_error(error: grpc.RpcError) -> HsmstoreError:
    """The typed exception for a failed call: by the ErrorInfo reason, else by the gRPC code."""
    code_enum = error.code() if hasattr(error, "code") else None
    code = code_enum.name if isinstance(code_enum, grpc.StatusCode) else "UNKNOWN"
    details = error.details() if hasattr(error, "details") else None
    message = str(details or code)
    try:
        reason = error_reason(error)
    except (AttributeError, ValueError, TypeError):  # not a call error with trailing metadata
        reason = None
    if reason is not None:
        message = message.removeprefix(f"{reason}: ")  # the server's details start with the reason
        cls = BY_REASON.get(reason)
        if cls is not None:
            return cls(message, code=code)
        return HsmstoreError(message, code=code, reason=reason)
    if code == "UNAVAILABLE":
        return ServiceUnavailableError(message, code=code)
    if code == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(message, code=code)
    return HsmstoreError(message, code=code)
