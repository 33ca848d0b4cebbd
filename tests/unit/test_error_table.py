"""The contract's error table: every error class has its own row, with the contract's code."""

from __future__ import annotations

import grpc
import pytest

from hsmstore import errors
from hsmstore.server.errors import STATUS_CODES, to_grpc_status

# docs/api.md, "Errors" (TagException added by the lifecycle work).
CONTRACT = {
    "NotFoundException": grpc.StatusCode.NOT_FOUND,
    "DisabledException": grpc.StatusCode.FAILED_PRECONDITION,
    "KMSInvalidStateException": grpc.StatusCode.FAILED_PRECONDITION,
    "KeyUnavailableException": grpc.StatusCode.FAILED_PRECONDITION,
    "InvalidCiphertextException": grpc.StatusCode.INVALID_ARGUMENT,
    "IncorrectKeyException": grpc.StatusCode.INVALID_ARGUMENT,
    "InvalidKeyUsageException": grpc.StatusCode.INVALID_ARGUMENT,
    "ValidationException": grpc.StatusCode.INVALID_ARGUMENT,
    "InvalidAliasNameException": grpc.StatusCode.INVALID_ARGUMENT,
    "InvalidArnException": grpc.StatusCode.INVALID_ARGUMENT,
    "InvalidMarkerException": grpc.StatusCode.INVALID_ARGUMENT,
    "MalformedPolicyDocumentException": grpc.StatusCode.INVALID_ARGUMENT,
    "InvalidGrantTokenException": grpc.StatusCode.INVALID_ARGUMENT,
    "InvalidGrantIdException": grpc.StatusCode.INVALID_ARGUMENT,
    "TagException": grpc.StatusCode.INVALID_ARGUMENT,
    # The seed contract's import reasons (issue 22).
    "InvalidImportTokenException": grpc.StatusCode.INVALID_ARGUMENT,
    "ExpiredImportTokenException": grpc.StatusCode.INVALID_ARGUMENT,
    "IncorrectKeyMaterialException": grpc.StatusCode.INVALID_ARGUMENT,
    "AlreadyExistsException": grpc.StatusCode.ALREADY_EXISTS,
    "AccessDeniedException": grpc.StatusCode.PERMISSION_DENIED,
    "UnauthenticatedException": grpc.StatusCode.UNAUTHENTICATED,
    "LimitExceededException": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "ThrottlingException": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "DependencyTimeoutException": grpc.StatusCode.DEADLINE_EXCEEDED,
    "KMSInternalException": grpc.StatusCode.INTERNAL,
    "UnsupportedOperationException": grpc.StatusCode.UNIMPLEMENTED,
    # docs/api.md, "Custom key stores" (issue 17):
    "CustomKeyStoreNotFoundException": grpc.StatusCode.NOT_FOUND,
    "CustomKeyStoreNameInUseException": grpc.StatusCode.ALREADY_EXISTS,
    "CustomKeyStoreInvalidStateException": grpc.StatusCode.FAILED_PRECONDITION,
    "CustomKeyStoreHasCMKsException": grpc.StatusCode.FAILED_PRECONDITION,
    "IncorrectTrustAnchorException": grpc.StatusCode.INVALID_ARGUMENT,
    # docs/api.md, "Asymmetric and HMAC keys" (issue 23):
    "KMSInvalidSignatureException": grpc.StatusCode.INVALID_ARGUMENT,
    "KMSInvalidMacException": grpc.StatusCode.INVALID_ARGUMENT,
}
ERROR_CLASSES = errors.KMSError.__subclasses__()
# docs/api.md, "Additions": the same reason with a retryable code.
REFINEMENTS = {errors.DependencyUnavailableException: grpc.StatusCode.UNAVAILABLE}


def test_every_error_class_has_its_own_row() -> None:
    """A missing row would silently fall back to INTERNAL."""
    assert set(ERROR_CLASSES) | set(REFINEMENTS) == set(STATUS_CODES)
    assert {cls.reason for cls in ERROR_CLASSES} == set(CONTRACT)


@pytest.mark.parametrize("error_class", ERROR_CLASSES, ids=lambda cls: cls.reason)
def test_error_travels_with_the_contract_code_and_reason(error_class: type[errors.KMSError]) -> None:
    status = to_grpc_status(error_class("a message"))
    assert status.code == CONTRACT[error_class.reason]
    assert status.details == f"{error_class.reason}: a message"


def test_an_unreachable_dependency_is_unavailable_with_the_internal_reason() -> None:
    status = to_grpc_status(errors.DependencyUnavailableException("the token is unreachable"))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.details == "KMSInternalException: the token is unreachable"
