"""The converter kinds between AWS JSON members and use-case values, both ways.

AWS JSON 1.1 (the KMS service model, ``protocol: json``): members are
PascalCase, blobs are base64 strings, timestamps are epoch seconds as JSON
numbers, maps are JSON objects, lists are arrays. A request member whose JSON
type is not the model's is refused like AWS refuses it: ``SerializationException``.
Each kind knows how to read a request value, how to show it in the audit
record (CloudTrail's ``requestParameters``: camelCase names, never a blob), and
how to write a response value. ``operations.py`` names a kind per member; no
operation converts anything itself.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hsmstore.aws_json.errors import SerializationException
from hsmstore.core.access.grants import GrantConstraints
from hsmstore.errors import UnsupportedOperationException


def camel(name: str) -> str:
    """CloudTrail's spelling of a request member: ``KeyId`` -> ``keyId``."""
    return name[:1].lower() + name[1:]


def _type_error(member: str, expected: str) -> SerializationException:
    return SerializationException(f"{member} must be {expected}")


# -- request kinds -----------------------------------------------------------------------


@dataclass(frozen=True)
class InKind:
    """How one request member is read, and how it appears in the audit record (None: left out)."""

    name: str
    parse: Callable[[str, Any], Any]
    audit: Callable[[Any], Any] | None = lambda value: value


def _string(member: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error(member, "a string")
    return value


def _integer(member: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(member, "an integer")
    return value


def _boolean(member: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error(member, "true or false")
    return value


def _blob(member: str, value: Any) -> bytes:
    """A base64 string (RFC 4648, with padding), as every AWS SDK sends a blob."""
    if not isinstance(value, str):
        raise _type_error(member, "a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _type_error(member, "a base64 string") from None


def _timestamp(member: str, value: Any) -> datetime:
    """Epoch seconds as a JSON number, as AWS JSON 1.1 sends a timestamp (ImportKeyMaterial ``ValidTo``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(member, "a timestamp (epoch seconds)")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise _type_error(member, "a timestamp (epoch seconds) between years 1 and 9999") from None


def _string_map(member: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise _type_error(member, "an object of strings")
    return dict(value)


def _string_list(member: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _type_error(member, "an array of strings")
    return list(value)


def _tags(member: str, value: Any) -> list[tuple[str, str]]:
    """AWS ``TagList``: ``[{"TagKey": ..., "TagValue": ...}]``, both required."""
    if not isinstance(value, list):
        raise _type_error(member, "an array of {TagKey, TagValue}")
    pairs = []
    for tag in value:
        if not isinstance(tag, dict) or not isinstance(tag.get("TagKey"), str):
            raise _type_error(member, "an array of {TagKey, TagValue}")
        if not isinstance(tag.get("TagValue"), str):
            raise _type_error(member, "an array of {TagKey, TagValue}")
        pairs.append((tag["TagKey"], tag["TagValue"]))
    return pairs


def _tags_audit(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    return [{camel(k): v for k, v in tag.items()} if isinstance(tag, dict) else tag for tag in value]


# AWS ``GrantConstraints`` members hsmstore enforces; ``SourceArn`` (a grant for an AWS service
# acting for a resource) has no principal to match here.
CONSTRAINT_MEMBERS = ("EncryptionContextSubset", "EncryptionContextEquals")
REFUSED_CONSTRAINT_MEMBERS = {
    "SourceArn": "Constraints.SourceArn is not supported: hsmstore has no AWS service principals",
}


def _constraints(member: str, value: Any) -> GrantConstraints | None:
    """Absent, or with neither map set: no constraints (AWS: Constraints is optional)."""
    if not isinstance(value, dict):
        raise _type_error(member, "an object")
    for name, why in REFUSED_CONSTRAINT_MEMBERS.items():
        if value.get(name) is not None:
            raise UnsupportedOperationException(why)
    equals = _string_map(f"{member}.EncryptionContextEquals", value.get("EncryptionContextEquals") or {})
    subset = _string_map(f"{member}.EncryptionContextSubset", value.get("EncryptionContextSubset") or {})
    if not equals and not subset:
        return None
    return GrantConstraints(
        encryption_context_equals=equals or None, encryption_context_subset=subset or None
    )


def _constraints_audit(value: Any) -> Any:
    return {camel(k): v for k, v in value.items()} if isinstance(value, dict) else value


STRING = InKind("string", _string)
INTEGER = InKind("integer", _integer)
BOOLEAN = InKind("boolean", _boolean)
BLOB = InKind("blob", _blob, audit=None)  # plaintext or ciphertext: never in the audit record
TIMESTAMP = InKind("timestamp", _timestamp)
STRING_MAP = InKind("map", _string_map)
STRING_LIST = InKind("list", _string_list)
TAGS = InKind("tags", _tags, audit=_tags_audit)
CONSTRAINTS = InKind("constraints", _constraints, audit=_constraints_audit)


# -- response kinds ----------------------------------------------------------------------


Getter = Callable[[Any], Any]


def attr(path: str) -> Getter:
    """``attr("key.tenant")``: the result's attribute (dotted); ``attr("")``: the result itself."""
    parts = [part for part in path.split(".") if part]

    def get(result: Any) -> Any:
        for part in parts:
            result = getattr(result, part)
        return result

    return get


def item(index: int) -> Getter:
    """A tuple result's element (``create_grant`` answers ``(grant_id, grant_token)``)."""
    return lambda result: result[index]


@dataclass(frozen=True)
class Out:
    """One response member: its AWS name, how to get it from the use case's result, how to write it.

    A value of None is left out, as AWS leaves out an absent member;
    ``omit_empty`` leaves out "" and empty lists too (``NextMarker`` on the last page).
    """

    name: str
    get: Getter
    write: Callable[[Any], Any] = lambda value: value
    omit_empty: bool = False


def render(members: Sequence[Out], result: Any) -> dict[str, Any]:
    """The JSON object of ``members`` read from ``result``."""
    document: dict[str, Any] = {}
    for member in members:
        value = member.get(result)
        if value is None or (member.omit_empty and value in ("", [], ())):
            continue
        document[member.name] = member.write(value)
    return document


def blob_out(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def timestamp_out(value: datetime) -> float:
    """Epoch seconds as a JSON number (AWS JSON 1.1's default timestamp format)."""
    return value.timestamp()


def enum_out(names: Mapping[str, str] | None = None) -> Callable[[Any], str]:
    """An enum's value, renamed where AWS spells it otherwise (``SERVICE`` -> ``AWS``)."""
    table = names or {}

    def write(value: Any) -> str:
        text = str(getattr(value, "value", value))
        return table.get(text, text)

    return write


def pascal_out(value: Any) -> str:
    """AWS's ``KeyState`` spelling of hsmstore's: ``PENDING_DELETION`` -> ``PendingDeletion``."""
    text = str(getattr(value, "wire_name", getattr(value, "value", value)))
    return "".join(word.capitalize() for word in text.split("_"))


def structure_out(members: Sequence[Out]) -> Callable[[Any], dict[str, Any]]:
    return lambda value: render(members, value)


def list_out(write: Callable[[Any], Any] = lambda value: value) -> Callable[[Any], list[Any]]:
    return lambda values: [write(value) for value in values]


def map_out(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


# The members every AWS list answers with after its entries (core/paging.py ``Page``).
PAGE_MEMBERS = (
    Out("NextMarker", attr("next_marker"), omit_empty=True),
    Out("Truncated", attr("truncated")),
)
