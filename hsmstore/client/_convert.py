"""Python values <-> protobuf messages, driven by the descriptors (no per-RPC code).

Two shapes: the typed one (snake_case keyword arguments in, the dataclasses of
``types.py`` out) and the AWS one of ``KeyStoreClient.call`` (PascalCase
members in and out, as boto3's ``kms`` client takes and returns them, e.g.
``{"KeyId": ..., "EncryptionContext": {...}}``). In the AWS shape, booleans are
always present (issue 20: "booleans always present in output"), strings, numbers
and maps only when set, lists always.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from hsmstore.client.types import DATACLASSES

TIMESTAMP = "google.protobuf.Timestamp"
# protobuf's stubs type a descriptor's fields as the Python or the upb class; both have these members.
Field = Any
# AWS's spellings where PascalCase of the proto name differs (KeyMetadata.AWSAccountId).
AWS_NAMES = {"aws_account_id": "AWSAccountId"}


def _is_map(field: Field) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_repeated(field: Field) -> bool:
    return bool(field.is_repeated)


def aws_name(field_name: str) -> str:
    return AWS_NAMES.get(field_name) or "".join(part.capitalize() for part in field_name.split("_"))


def _squash(name: str) -> str:
    return name.replace("_", "").lower()


def _timestamp(value: datetime | float | int) -> Timestamp:
    stamp = Timestamp()
    if isinstance(value, datetime):
        stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    else:
        stamp.FromDatetime(datetime.fromtimestamp(float(value), tz=UTC))
    return stamp


def _plain(value: Any) -> Any:
    """A dataclass of types.py as the mapping of its set fields; anything else as it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


def fill(message: Message, values: Mapping[str, Any], *, aws: bool = False) -> Message:
    """Set ``message``'s fields from ``values`` (snake_case, or PascalCase when ``aws``); None is unset.

    A repeated ``Tag`` field also takes a plain mapping ``{key: value}``; a
    string where a list is expected is refused (it would become one item per
    character), as is a member the message does not have.
    """
    by_name = (
        {_squash(f.name): f for f in message.DESCRIPTOR.fields} if aws else message.DESCRIPTOR.fields_by_name
    )
    for given_name, value in values.items():
        if value is None:
            continue
        field = by_name.get(_squash(given_name) if aws else given_name)
        if field is None:
            raise TypeError(f"{message.DESCRIPTOR.name} has no member {given_name!r}")
        _set(message, field, value, aws=aws)
    return message


def _set(message: Message, field: Field, value: Any, *, aws: bool) -> None:
    name = field.name
    if _is_map(field):
        getattr(message, name).update({str(k): str(v) for k, v in dict(value).items()})
        return
    if _is_repeated(field):
        if isinstance(value, str | bytes):
            raise TypeError(f"{name} takes a list, not a single {type(value).__name__}")
        target = getattr(message, name)
        if field.message_type is None:
            target.extend(value)
            return
        if field.message_type.name == "Tag" and isinstance(value, Mapping):
            value = [{"tag_key": k, "tag_value": v} for k, v in value.items()]
        for item in value:
            fill(target.add(), _plain(item), aws=aws)
        return
    if field.message_type is not None:
        if field.message_type.full_name == TIMESTAMP:
            getattr(message, name).CopyFrom(_timestamp(value))
        else:
            fill(getattr(message, name), _plain(value), aws=aws)
        return
    if field.type == FieldDescriptor.TYPE_BYTES and isinstance(value, str):
        value = value.encode()  # as botocore does for a blob given as str
    setattr(message, name, value)


def _datetime(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def to_dataclass(message: Message) -> Any:
    """The dataclass of types.py for ``message``, every field converted."""
    cls = DATACLASSES[message.DESCRIPTOR.full_name]
    values: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        values[field.name] = _typed_value(message, field)
    return cls(**values)


def _typed_value(message: Message, field: Field) -> Any:  # noqa: PLR0911 - one return per field kind
    value = getattr(message, field.name)
    if _is_map(field):
        return dict(value)
    if _is_repeated(field):
        if field.message_type is None:
            return tuple(value)
        if field.message_type.full_name == TIMESTAMP:
            return tuple(_datetime(v) for v in value)
        return tuple(to_dataclass(v) for v in value)
    if field.message_type is not None:
        if not message.HasField(field.name):
            return None
        return _datetime(value) if field.message_type.full_name == TIMESTAMP else to_dataclass(value)
    if field.has_presence and not message.HasField(field.name):
        return None
    return value


def to_aws_dict(message: Message) -> dict[str, Any]:
    """``message`` in the AWS shape: PascalCase members, datetimes, bytes; booleans always present."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        key = aws_name(field.name)
        if _is_map(field):
            if value:
                out[key] = dict(value)
        elif _is_repeated(field):
            if field.message_type is None:
                out[key] = list(value)
            elif field.message_type.full_name == TIMESTAMP:
                out[key] = [_datetime(v) for v in value]
            else:
                out[key] = [to_aws_dict(v) for v in value]
        elif field.message_type is not None:
            if message.HasField(field.name):
                out[key] = (
                    _datetime(value) if field.message_type.full_name == TIMESTAMP else to_aws_dict(value)
                )
        elif (
            field.type == FieldDescriptor.TYPE_BOOL
            or (field.has_presence and message.HasField(field.name))
            or value
        ):
            out[key] = value
    return out
