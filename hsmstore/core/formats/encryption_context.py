"""Encryption context: validation and the one canonical byte form used as AAD.

AWS KMS: "The encryption context is a set of non-secret key-value pairs [...]
KMS uses the encryption context as additional authenticated data (AAD)", and
the same context must be supplied to decrypt. Order of the pairs must not
matter, so the pairs are serialised canonically, as the AWS Encryption SDK does
("the key-value pairs MUST be sorted by key, in ascending order, according to
the UTF-8 encoded binary value").

Canonical form (big-endian lengths)::

    empty context:  b""                      (zero bytes)
    otherwise:      u16 pair_count
                    repeated pair_count times, sorted by UTF-8 key bytes:
                        u16 len(key_utf8)   key_utf8
                        u16 len(value_utf8) value_utf8

Limits: keys are 1+ characters, values may be empty, and the whole canonical
form is at most ``MAX_CANONICAL_BYTES``, 8,192 bytes (AWS caps grant
constraints at 8,192 characters; a context larger than that cannot be
authorised by one, so the same bound holds here). Both are checked before
anything is packed: every pair costs at least 5 bytes (two length prefixes
and a 1-byte key), so more pairs than ``MAX_PAIRS`` are refused from the
count alone, and the byte size is summed with an early exit; the u16 pair
count and lengths can then never overflow.
Length prefixes make the form unambiguous: no two different contexts
serialise to the same bytes. Vectors: ``tests/vectors/context_v1.json``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from hsmstore.errors import ValidationException

MAX_CANONICAL_BYTES = 8192
_PAIR_OVERHEAD = 4  # two u16 length prefixes
MAX_PAIRS = (MAX_CANONICAL_BYTES - 2) // (_PAIR_OVERHEAD + 1)


def check_encryption_context(context: Mapping[str, str], field: str = "EncryptionContext") -> None:
    """Refuse a context that cannot be packed (see module doc), naming ``field``."""
    _encoded_pairs(context, field)


def canonical_encryption_context(context: Mapping[str, str], field: str = "EncryptionContext") -> bytes:
    """Validate ``context`` and return its canonical bytes (see module doc)."""
    if not context:
        return b""
    pairs = sorted(_encoded_pairs(context, field))
    parts = [struct.pack(">H", len(pairs))]
    for key_bytes, value_bytes in pairs:
        parts.append(struct.pack(">H", len(key_bytes)) + key_bytes)
        parts.append(struct.pack(">H", len(value_bytes)) + value_bytes)
    return b"".join(parts)


def _encoded_pairs(context: Mapping[str, str], field: str) -> list[tuple[bytes, bytes]]:
    """The UTF-8 pairs, refused from the pair count first, then as the size grows past the bound."""
    too_big = f"{field} must be at most {MAX_CANONICAL_BYTES} bytes"
    if len(context) > MAX_PAIRS:
        raise ValidationException(f"{too_big}, so at most {MAX_PAIRS} pairs")
    pairs: list[tuple[bytes, bytes]] = []
    size = 2
    for key, value in context.items():
        if not key:
            raise ValidationException(f"{field} keys must be at least 1 character long")
        if size + _PAIR_OVERHEAD + len(key) + len(value) > MAX_CANONICAL_BYTES:
            raise ValidationException(too_big)  # a character is at least one byte: refused unencoded
        key_bytes, value_bytes = _utf8(key, field), _utf8(value, field)
        size += _PAIR_OVERHEAD + len(key_bytes) + len(value_bytes)
        if size > MAX_CANONICAL_BYTES:
            raise ValidationException(too_big)
        pairs.append((key_bytes, value_bytes))
    return pairs


def _utf8(text: str, field: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationException(f"{field} must be valid Unicode text") from None
