"""List paging after AWS: ``Limit`` 1-1000 (default 100), opaque ``Marker``/``NextMarker``.

A marker is ``base64url("<kind>1:<last value>")``: opaque to callers, bound to
the list it came from, so a marker from ListAliases given to ListKeys (or a
forged one) is ``InvalidMarkerException``. A marker longer than AWS's 1-1024
characters is a ``ValidationException`` before it is decoded. Markers are not
bound to a tenant and need not be: the value only says where the caller's own
list resumes, and every list is filtered by the caller's tenant, so another
tenant's marker yields the caller's own entries after that value, never theirs.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Generic, TypeVar

from hsmstore.core.validation import check_marker, check_number
from hsmstore.errors import InvalidMarkerException

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its entries, and the marker of the next page when truncated."""

    entries: list[T]
    next_marker: str
    truncated: bool


MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
MAX_MARKER_VALUE_LENGTH = 512


def check_limit(
    limit: int | None,
    maximum: int = MAX_LIST_LIMIT,
    default: int = DEFAULT_LIST_LIMIT,
    field: str = "Limit",
) -> int:
    """AWS Limit: 1 to the list's maximum (1000 for most), ``default`` when absent."""
    return check_number(limit, field, 1, maximum, default)


def encode_marker(kind: str, last_value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}1:{last_value}".encode()).decode().rstrip("=")


def decode_marker(kind: str, marker: str, field: str = "Marker") -> str:
    check_marker(marker, field)
    try:
        text = base64.urlsafe_b64decode(marker + "=" * (-len(marker) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidMarkerException(f"The {field} is not valid") from None
    prefix, _, value = text.partition(":")
    if (
        prefix != f"{kind}1"
        or not value
        or len(value) > MAX_MARKER_VALUE_LENGTH
        or not value.isprintable()  # no value hsmstore writes holds a NUL, which PostgreSQL refuses
    ):
        raise InvalidMarkerException(f"The {field} is not valid")
    return value
