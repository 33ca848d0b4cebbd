"""List paging after AWS: ``Limit`` 1-1000 (default 100), opaque ``Marker``/``NextMarker``.

A marker is ``base64url("<kind>1:<last value>")``: opaque to callers, bound to
the list it came from, so a marker from ListAliases given to ListKeys (or a
forged one) is ``InvalidMarkerException``.
"""

from __future__ import annotations

import base64
import binascii

from hsmstore.errors import InvalidMarkerException, ValidationException

MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
MAX_MARKER_VALUE_LENGTH = 512


def check_limit(limit: int | None, maximum: int = MAX_LIST_LIMIT, default: int = DEFAULT_LIST_LIMIT) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise ValidationException(f"Limit must be between 1 and {maximum}")
    return limit


def encode_marker(kind: str, last_value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}1:{last_value}".encode()).decode().rstrip("=")


def decode_marker(kind: str, marker: str) -> str:
    try:
        text = base64.urlsafe_b64decode(marker + "=" * (-len(marker) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidMarkerException("The marker is not valid") from None
    prefix, _, value = text.partition(":")
    if prefix != f"{kind}1" or not value or len(value) > MAX_MARKER_VALUE_LENGTH:
        raise InvalidMarkerException("The marker is not valid")
    return value
