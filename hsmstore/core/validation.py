"""Request field limits, after the AWS KMS API Reference, and how a refusal reads.

Every field a caller sends is checked with these helpers before the service
uses it (the token, the metadata DB, an error message). One helper per kind of
input (text, bytes, whole number, list), so a limit is written once, next to
the field's AWS constraint. A refusal names the field and the limit and echoes
at most :data:`ECHO_PREFIX_CHARS` characters of the value (:func:`echo`): an
echo of a long input once pushed an error's trailers past gRPC's 16 KiB.

Text that PostgreSQL cannot store (NUL) is refused for every field that is
stored, so SQLite and PostgreSQL answer the same; fields whose AWS pattern
admits no control characters (names, identifiers, tags) refuse all of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hsmstore.errors import KMSError, ValidationException

# How much of a caller's input an error message may repeat.
ECHO_PREFIX_CHARS = 32

# AWS length constraints, one per field (API Reference, "Request Parameters").
MAX_DESCRIPTION_CHARS = 8192  # CreateKey/UpdateKeyDescription Description: 0-8192
MAX_MARKER_CHARS = 1024  # Marker: 1-1024, pattern [\u0020-\u00FF]*
MAX_GRANT_TOKENS = 10  # GrantTokens: 0-10 items
MAX_GRANT_TOKEN_CHARS = 8192  # GrantTokenType: 1-8192
MAX_PRINCIPAL_CHARS = 256  # GranteePrincipal/RetiringPrincipal: 1-256
MAX_OPERATIONS = 64  # CreateGrant Operations: an enum list; more members than the enum repeats them

_NUL = "\x00"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MARKER_TEXT = re.compile(r"[\x20-\xff]*")


def echo(value: str) -> str:
    """``value`` in double quotes for an error message, cut to a short prefix, control characters escaped.

    ``"kms:Foo"``; ``"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa..." (40000 characters)`` for a long one.
    """
    shown = _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", value[:ECHO_PREFIX_CHARS])
    if len(value) <= ECHO_PREFIX_CHARS:
        return f'"{shown}"'
    return f'"{shown}..." ({len(value)} characters)'


def check_text(
    value: str,
    field: str,
    *,
    max_length: int,
    min_length: int = 0,
    control_characters: bool = False,
    error: type[KMSError] = ValidationException,
) -> str:
    """A text field's length in characters (AWS counts characters) and what it may hold.

    NUL is never accepted (PostgreSQL cannot store it); other control characters
    only with ``control_characters`` (a description may hold line breaks).
    """
    if not min_length <= len(value) <= max_length:
        raise error(f"{field} must be {min_length} to {max_length} characters long, not {len(value)}")
    if control_characters:
        if _NUL in value:
            raise error(f"{field} must not contain the NUL character")
    elif _CONTROL.search(value) is not None:
        raise error(f"{field} must not contain control characters")
    return value


def check_pattern(
    value: str,
    field: str,
    pattern: re.Pattern[str],
    rule: str,
    *,
    max_length: int,
    min_length: int = 1,
    error: type[KMSError] = ValidationException,
) -> str:
    """``check_text``, then the whole value must match ``pattern`` (``fullmatch``: no trailing newline).

    ``rule`` says in words what the pattern allows; the message names it, not the regex.
    """
    check_text(value, field, max_length=max_length, min_length=min_length, error=error)
    if pattern.fullmatch(value) is None:
        raise error(f"{field} {echo(value)} is not valid: {rule}")
    return value


def check_bytes(value: bytes, field: str, *, max_length: int, min_length: int = 1) -> bytes:
    if not min_length <= len(value) <= max_length:
        raise ValidationException(
            f"{field} must be {min_length} to {max_length} bytes long, not {len(value)}"
        )
    return value


def check_number(value: int | None, field: str, low: int, high: int, default: int | None = None) -> int:
    """A whole-number field in ``low..high``; absent means ``default`` (absent and no default: refused)."""
    if value is None:
        if default is None:
            raise ValidationException(f"{field} is required and must be between {low} and {high}")
        return default
    if not low <= value <= high:
        raise ValidationException(f"{field} must be between {low} and {high}")
    return value


def check_count(values: Sequence[object], field: str, *, max_items: int, min_items: int = 0) -> None:
    if not min_items <= len(values) <= max_items:
        raise ValidationException(f"{field} must hold {min_items} to {max_items} items, not {len(values)}")


def check_marker(marker: str, field: str = "Marker") -> str:
    """AWS Marker: 1-1024 characters of ``[\\u0020-\\u00FF]``; empty means the first page."""
    if not marker:
        return marker
    check_text(marker, field, max_length=MAX_MARKER_CHARS)
    if _MARKER_TEXT.fullmatch(marker) is None:
        raise ValidationException(f"{field} must hold only the characters U+0020 to U+00FF")
    return marker


def check_description(description: str) -> str:
    """AWS Description: 0-8192 characters, no pattern; NUL refused (PostgreSQL cannot store it)."""
    return check_text(description, "Description", max_length=MAX_DESCRIPTION_CHARS, control_characters=True)


def check_grant_tokens(grant_tokens: Sequence[str]) -> None:
    """AWS GrantTokens: 0-10 items of 1-8192 characters; what each names is grants.py's question."""
    check_count(grant_tokens, "GrantTokens", max_items=MAX_GRANT_TOKENS)
    for token in grant_tokens:
        check_text(token, "GrantTokens member", min_length=1, max_length=MAX_GRANT_TOKEN_CHARS)
