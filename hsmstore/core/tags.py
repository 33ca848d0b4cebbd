"""Tag rules, after AWS KMS TagResource.

"TagKey: 1-128 characters; TagValue: 0-256 characters"; keys and values may
hold Unicode letters, digits, white space and ``_ . : / = + - @``; tag keys
beginning with ``aws:`` are reserved for AWS. A key holds at most 50 tags
(``LimitExceededException`` past that); a malformed tag is ``TagException``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from hsmstore.errors import TagException

MAX_TAGS_PER_KEY = 50
MAX_TAG_KEY_LENGTH = 128
MAX_TAG_VALUE_LENGTH = 256
RESERVED_TAG_PREFIX = "aws:"
_TAG_TEXT = re.compile(r"^[\w\s.:/=+\-@]*$")


def validate_tags(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The tags as a dict; duplicate keys in one request are a TagException."""
    tags: dict[str, str] = {}
    for tag_key, tag_value in pairs:
        validate_tag_key(tag_key)
        if len(tag_value) > MAX_TAG_VALUE_LENGTH or not _TAG_TEXT.match(tag_value):
            raise TagException(f"TagValue for {tag_key!r} must be 0-{MAX_TAG_VALUE_LENGTH} valid characters")
        if tag_key in tags:
            raise TagException(f"TagKey {tag_key!r} appears more than once")
        tags[tag_key] = tag_value
    return tags


def validate_tag_keys(tag_keys: Sequence[str]) -> list[str]:
    if not tag_keys:
        raise TagException("TagKeys must name at least one tag")
    for tag_key in tag_keys:
        validate_tag_key(tag_key)
    return list(tag_keys)


def validate_tag_key(tag_key: str) -> None:
    if not 1 <= len(tag_key) <= MAX_TAG_KEY_LENGTH or not _TAG_TEXT.match(tag_key):
        raise TagException(f"TagKey must be 1-{MAX_TAG_KEY_LENGTH} valid characters")
    if tag_key.lower().startswith(RESERVED_TAG_PREFIX):
        raise TagException("TagKey must not begin with the reserved prefix 'aws:'")
