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
form is at most ``MAX_CANONICAL_BYTES`` (AWS caps grant constraints at 8,192
characters; a context larger than that cannot be authorised by one, so the same
bound holds here). Length prefixes make the form unambiguous: no two different
contexts serialise to the same bytes. Vectors: ``tests/vectors/context_v1.json``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from hsmstore.errors import ValidationException

MAX_CANONICAL_BYTES = 8192


def canonical_encryption_context(context: Mapping[str, str]) -> bytes:
    """Validate ``context`` and return its canonical bytes (see module doc)."""
    if not context:
        return b""
    pairs: list[tuple[bytes, bytes]] = []
    for key, value in context.items():
        if not key:
            raise ValidationException("EncryptionContext keys must be at least 1 character long")
        pairs.append((_utf8(key), _utf8(value)))
    pairs.sort(key=lambda pair: pair[0])
    parts = [struct.pack(">H", len(pairs))]
    size = 2
    for key_bytes, value_bytes in pairs:
        size += 4 + len(key_bytes) + len(value_bytes)
        if size > MAX_CANONICAL_BYTES:
            raise ValidationException(f"EncryptionContext must be at most {MAX_CANONICAL_BYTES} bytes")
        parts.append(struct.pack(">H", len(key_bytes)) + key_bytes)
        parts.append(struct.pack(">H", len(value_bytes)) + value_bytes)
    return b"".join(parts)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationException("EncryptionContext must be valid Unicode text") from None
