"""AWS's error responses: ``{"__type": <exception name>, "message": ...}`` and the HTTP status AWS uses.

AWS KMS API Reference, "Errors" of each operation and "Common Errors": every
client error is HTTP 400 (NotFoundException, ValidationException,
InvalidCiphertextException, AccessDeniedException, ThrottlingException,
UnrecognizedClientException, ...); KMSInternalException and
DependencyTimeoutException are 500; a dependency that is unreachable answers
503 (AWS's ServiceUnavailable), so every AWS SDK retries it, as gRPC answers it
UNAVAILABLE (docs/api.md, "Additions"). ``__type`` is the bare exception name:
botocore raises its modelled exception for it (``client.exceptions.NotFoundException``).
The protocol's own failures (an unknown operation, a body that is not JSON, no
or an unknown access key) are KMSErrors defined here, so the call envelope
audits them like any other refusal. Each refines a reason of the contract's
table (docs/api.md "Errors"), so anything that maps reasons (server/errors.py,
the metrics) knows it: a malformed body is a ValidationException, an unknown
operation an UnsupportedOperationException, a caller not known an
UnauthenticatedException (as sigv4.py's own).
"""

from __future__ import annotations

from hsmstore import errors

# Capped like gRPC's status message (server/errors.py): an error never echoes a long input in full.
MAX_MESSAGE_BYTES = 1024
CUT_MARKER = "... (message truncated)"

DEFAULT_STATUS = 400  # AWS: every client error


class SerializationException(errors.ValidationException):
    """AWS JSON protocols: the body is not JSON, or a member is not of its type."""

    reason = "SerializationException"


class UnknownOperationException(errors.UnsupportedOperationException):
    """AWS JSON protocols: ``X-Amz-Target`` names no operation of the service."""

    reason = "UnknownOperationException"


class UnrecognizedClientException(errors.UnauthenticatedException):
    """AWS: "The security token included in the request is invalid" (an unknown access key)."""

    reason = "UnrecognizedClientException"


class MissingAuthenticationTokenException(errors.UnauthenticatedException):
    """AWS: the request has no Authorization header (or it is not SigV4)."""

    reason = "MissingAuthenticationTokenException"


# Checked along the error's class hierarchy, most specific first (DependencyUnavailable before
# its base KMSInternalException).
STATUS_OF: dict[type[errors.KMSError], int] = {
    errors.DependencyUnavailableException: 503,
    errors.KMSInternalException: 500,
    errors.DependencyTimeoutException: 500,
}


def http_status_of(error: errors.KMSError) -> int:
    for error_type in type(error).__mro__:
        status = STATUS_OF.get(error_type)
        if status is not None:
            return status
    return DEFAULT_STATUS


def error_document(error: errors.KMSError) -> dict[str, str]:
    """The body AWS answers a failure with."""
    return {"__type": error.reason, "message": capped(error.message)}


def capped(message: str) -> str:
    encoded = message.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    room = MAX_MESSAGE_BYTES - len(CUT_MARKER.encode())
    return encoded[:room].decode("utf-8", "ignore") + CUT_MARKER
