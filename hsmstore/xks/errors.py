"""The XKS error body ``{"errorName": ..., "errorMessage": ...}`` and its HTTP status (spec "Error codes").

hsmstore's KMSError reasons (docs/api.md "Errors") map to the spec's names
along the error's class hierarchy, most specific first:

| hsmstore | XKS errorName | HTTP |
|---|---|---|
| UnauthenticatedException (a bad or stale signature, unknown key id) | AuthenticationFailedException | 401 |
| AccessDeniedException (the key policy, grants, identity policies) | AccessDeniedException | 403 |
| NotFoundException (no such key in the prefix's tenant) | KeyNotFoundException | 404 |
| DisabledException, KMSInvalidStateException, CustomKeyStoreInvalidState... | InvalidStateException | 400 |
| InvalidCiphertextException | InvalidCiphertextException | 400 |
| InvalidKeyUsageException | InvalidKeyUsageException | 400 |
| ValidationException (and the AWS syntax errors) | ValidationException | 400 |
| UnsupportedOperationException (a size beyond hsmstore's) | UnsupportedOperationException | 501 |
| ThrottlingException | ThrottlingException | 429 |
| DependencyTimeoutException | DependencyTimeoutException | 503 |
| anything else, a token outage too (DependencyUnavailableException) | InternalException | 500 |

The spec: "errorMessage is optional, under 512 chars and printable ASCII only".
"""

from __future__ import annotations

from typing import Any, Final

from hsmstore import errors

MAX_MESSAGE_CHARS: Final = 511

# (errorName, HTTP status) by hsmstore error class; looked up along the class's MRO.
_BY_CLASS: Final[dict[type[errors.KMSError], tuple[str, int]]] = {
    errors.UnauthenticatedException: ("AuthenticationFailedException", 401),
    errors.AccessDeniedException: ("AccessDeniedException", 403),
    errors.NotFoundException: ("KeyNotFoundException", 404),
    errors.DisabledException: ("InvalidStateException", 400),
    errors.KMSInvalidStateException: ("InvalidStateException", 400),
    errors.CustomKeyStoreInvalidStateException: ("InvalidStateException", 400),
    errors.InvalidCiphertextException: ("InvalidCiphertextException", 400),
    errors.InvalidKeyUsageException: ("InvalidKeyUsageException", 400),
    errors.ValidationException: ("ValidationException", 400),
    errors.InvalidArnException: ("ValidationException", 400),
    errors.InvalidAliasNameException: ("ValidationException", 400),
    errors.UnsupportedOperationException: ("UnsupportedOperationException", 501),
    errors.ThrottlingException: ("ThrottlingException", 429),
    errors.DependencyTimeoutException: ("DependencyTimeoutException", 503),
}
INTERNAL: Final = ("InternalException", 500)
INVALID_URI_PATH: Final = ("InvalidUriPathException", 404)


def xks_error_of(error: errors.KMSError) -> tuple[str, int]:
    """The spec's errorName and HTTP status for an hsmstore error."""
    for error_type in type(error).__mro__:
        found = _BY_CLASS.get(error_type)
        if found is not None:
            return found
    return INTERNAL


def error_body(name: str, message: str) -> dict[str, Any]:
    return {"errorName": name, "errorMessage": printable(message)}


def printable(message: str) -> str:
    """Printable ASCII only, at most 511 characters (spec)."""
    text = "".join(char if " " <= char <= "~" else "?" for char in message)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."
