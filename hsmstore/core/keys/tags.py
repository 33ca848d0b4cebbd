"""Tag rules, after AWS KMS TagResource.

"TagKey: 1-128 characters; TagValue: 0-256 characters"; keys and values may
hold Unicode letters, digits, spaces and ``_ . : / = + - @`` (no control
characters, so no NUL that PostgreSQL could not store); tag keys
beginning with ``aws:`` are reserved for AWS. A key holds at most 50 tags
(``LimitExceededException`` past that); a malformed tag is ``TagException``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

from hsmstore.core.validation import check_count, echo
from hsmstore.errors import LimitExceededException, TagException

MAX_TAGS_PER_KEY = 50
MAX_TAG_KEY_LENGTH = 128
MAX_TAG_VALUE_LENGTH = 256
RESERVED_TAG_PREFIX = "aws:"
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
_RULE = "Unicode letters, digits, spaces and _ . : / = + - @"


def _tag_text(text: str) -> bool:
    """AWS TagKey/TagValue pattern ``^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$``: letters, separators
    (spaces, not tabs or line breaks: those are control characters), digits and ``_.:/=+-@``."""
    return all(char in _TAG_PUNCTUATION or unicodedata.category(char)[0] in "LZN" for char in text)


def validate_tags(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The tags as a dict; duplicate keys in one request are a TagException.

    More tags than a key can hold is refused from the count, before any is read.
    """
    pairs = list(pairs)
    if len(pairs) > MAX_TAGS_PER_KEY:
        raise LimitExceededException(f"A key can have at most {MAX_TAGS_PER_KEY} tags")
    tags: dict[str, str] = {}
    for tag_key, tag_value in pairs:
        validate_tag_key(tag_key)
        if len(tag_value) > MAX_TAG_VALUE_LENGTH or not _tag_text(tag_value):
            raise TagException(
                f"TagValue for {echo(tag_key)} must be 0-{MAX_TAG_VALUE_LENGTH} of the characters {_RULE}"
            )
        if tag_key in tags:
            raise TagException(f"TagKey {echo(tag_key)} appears more than once")
        tags[tag_key] = tag_value
    return tags


def validate_tag_keys(tag_keys: Sequence[str]) -> list[str]:
    """UntagResource TagKeys: 1 to 50 keys (a key has at most 50 tags to remove)."""
    if not tag_keys:
        raise TagException("TagKeys must name at least one tag")
    check_count(tag_keys, "TagKeys", max_items=MAX_TAGS_PER_KEY, min_items=1)
    for tag_key in tag_keys:
        validate_tag_key(tag_key)
    return list(tag_keys)


def validate_tag_key(tag_key: str) -> None:
    if not 1 <= len(tag_key) <= MAX_TAG_KEY_LENGTH or not _tag_text(tag_key):
        raise TagException(f"TagKey must be 1-{MAX_TAG_KEY_LENGTH} of the characters {_RULE}")
    if tag_key.lower().startswith(RESERVED_TAG_PREFIX):
        raise TagException("TagKey must not begin with the reserved prefix 'aws:'")
