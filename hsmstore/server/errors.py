"""The single table: domain error -> gRPC status code + google.rpc.ErrorInfo.

docs/api.md, "Errors": every failure carries a gRPC status code and a
``google.rpc.Status`` detail with a ``google.rpc.ErrorInfo`` whose ``reason`` is
the AWS exception name and whose ``domain`` is ``hsmstore``.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hsmstore import errors

ERROR_DOMAIN = "hsmstore"

# The status message travels twice in the trailers (grpc-message, percent-encoded,
# so up to 3 bytes per byte, and inside grpc-status-details-bin, base64). A
# message that echoed a long input pushed the trailers past the client's 16 KiB
# metadata limit, and the caller saw RESOURCE_EXHAUSTED instead of the error
# (issue 14). Capped at 1,024 UTF-8 bytes, the trailers stay under about 5 KiB.
MAX_STATUS_MESSAGE_BYTES = 1024
CUT_MARKER = "... (message truncated)"

STATUS_CODES: dict[type[errors.KMSError], grpc.StatusCode] = {
    errors.NotFoundException: grpc.StatusCode.NOT_FOUND,
    errors.DisabledException: grpc.StatusCode.FAILED_PRECONDITION,
    errors.KMSInvalidStateException: grpc.StatusCode.FAILED_PRECONDITION,
    errors.KeyUnavailableException: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidCiphertextException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.IncorrectKeyException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidKeyUsageException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.KMSInvalidSignatureException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.KMSInvalidMacException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidImportTokenException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ExpiredImportTokenException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.IncorrectKeyMaterialException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ValidationException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidAliasNameException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidArnException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidMarkerException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MalformedPolicyDocumentException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidGrantTokenException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidGrantIdException: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AlreadyExistsException: grpc.StatusCode.ALREADY_EXISTS,
    errors.AccessDeniedException: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnauthenticatedException: grpc.StatusCode.UNAUTHENTICATED,
    errors.LimitExceededException: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ThrottlingException: grpc.StatusCode.RESOURCE_EXHAUSTED,  # a request quota (core/quotas.py)
    errors.DependencyTimeoutException: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.KMSInternalException: grpc.StatusCode.INTERNAL,
    errors.DependencyUnavailableException: grpc.StatusCode.UNAVAILABLE,  # docs/api.md, "Additions"
    errors.UnsupportedOperationException: grpc.StatusCode.UNIMPLEMENTED,
    errors.TagException: grpc.StatusCode.INVALID_ARGUMENT,  # added to the contract's table
    # Issue 17, custom key stores (docs/api.md, "Custom key stores"):
    errors.CustomKeyStoreNotFoundException: grpc.StatusCode.NOT_FOUND,
    errors.CustomKeyStoreNameInUseException: grpc.StatusCode.ALREADY_EXISTS,
    errors.CustomKeyStoreInvalidStateException: grpc.StatusCode.FAILED_PRECONDITION,
    errors.CustomKeyStoreHasCMKsException: grpc.StatusCode.FAILED_PRECONDITION,
    errors.IncorrectTrustAnchorException: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_code_of(error: errors.KMSError) -> grpc.StatusCode:
    for error_type in type(error).__mro__:
        code = STATUS_CODES.get(error_type)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def to_grpc_status(error: errors.KMSError) -> grpc.Status:
    """The rich status a servicer aborts with: code, message, ErrorInfo detail."""
    code = status_code_of(error)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name),
        message=capped_message(f"{error.reason}: {error.message}"),
        details=[detail],
    )
    return rpc_status.to_status(status)


def abort(context: grpc.ServicerContext, error: errors.KMSError) -> NoReturn:
    """End the call with ``error``'s rich status: the gRPC end of the call envelope (core/calls.py).

    ``abort_with_status`` raises on every servicer context (grpc's own, and
    server/app.py's worker context); the ``raise`` after it only says so.
    """
    context.abort_with_status(to_grpc_status(error))
    raise AssertionError("abort_with_status returned")


def capped_message(message: str) -> str:
    """``message`` if it fits ``MAX_STATUS_MESSAGE_BYTES`` in UTF-8, else its start and ``CUT_MARKER``.

    The backstop for every error: whatever a message echoes, the trailers stay small.
    """
    encoded = message.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_STATUS_MESSAGE_BYTES:
        return message
    room = MAX_STATUS_MESSAGE_BYTES - len(CUT_MARKER.encode())
    return encoded[:room].decode("utf-8", "ignore") + CUT_MARKER
