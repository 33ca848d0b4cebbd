"""Requests and responses of ``hsmstore kms`` in AWS's shapes: PascalCase members, both ways.

The CLI speaks ``aws kms``'s language (issue 20: "The CLI looks like `aws kms`
but silently means something else"): a request is first the dict aws-cli
would hand botocore (``{"KeyId": ..., "EncryptionContext": {...}}``), checked
here member by member against the protobuf message (a wrong type is one line
naming the member, never a silent ``str()``), then sent by the client SDK's
``KeyStoreClient.call``. The member names are the proto field names in
PascalCase, which are AWS's names (tests/unit/test_cli_kms.py holds them to
botocore's KMS model); the one spelling AWS has otherwise is in
``_AWS_SPELLING``. A response is the client's AWS-shaped dict (booleans
always present, issue 20), printed as aws-cli 1.x prints AWS's: blobs in
base64, timestamps as epoch seconds (the wire value), ``KeyState`` as
``Enabled``/``PendingDeletion``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_AWS_SPELLING = {"aws_account_id": "AWSAccountId"}


def _pascal_value(value: str) -> str:
    """``PENDING_DELETION`` -> ``PendingDeletion``: AWS's KeyState spelling (aws_json prints the same)."""
    return "".join(part.capitalize() for part in value.split("_"))


# gRPC spells these values as hsmstore's contract does; AWS (and aws_json) otherwise.
_AWS_VALUES: dict[str, Callable[[str], str]] = {
    "KeyState": _pascal_value,
    "KeyManager": lambda value: {"SERVICE": "AWS"}.get(value, value),  # AWS's KeyManagerType
}


class RequestShapeError(ValueError):
    """A request member has the wrong type or name; the message names the flag's member."""


def aws_name(field: FieldDescriptor) -> str:
    """``key_metadata`` -> ``KeyMetadata``; ``aws_account_id`` -> ``AWSAccountId``."""
    return _AWS_SPELLING.get(field.name) or "".join(
        part[:1].upper() + part[1:] for part in field.name.split("_")
    )


def fields_of(message: Message | Descriptor) -> list[FieldDescriptor]:
    """The fields of a message or descriptor (the generated code types them loosely)."""
    descriptor = message if isinstance(message, Descriptor) else message.DESCRIPTOR
    return cast(list[FieldDescriptor], list(descriptor.fields))


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    assert field.message_type is not None, field.name
    return field.message_type


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def is_timestamp(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp"


def is_structure(field: FieldDescriptor) -> bool:
    return field.message_type is not None and not is_map(field) and not is_timestamp(field)


# -- request: AWS dict -> protobuf ----------------------------------------------------------


def fill_message(message: Message, members: Mapping[str, Any], where: str = "") -> None:
    """Set ``message`` from AWS-named ``members``; an unknown member or a wrong type is one error line."""
    fields = {aws_name(field): field for field in fields_of(message)}
    proto_names = {field.name: field for field in fields_of(message)}  # older hsmstore JSON
    for name, value in members.items():
        field = fields.get(name) or proto_names.get(name)
        if field is None:
            raise RequestShapeError(
                f"unknown member {where}{name}; expected one of {', '.join(sorted(fields))}"
            )
        if value is None:
            continue
        _set_field(message, field, value, f"{where}{name}")


def _set_field(message: Message, field: FieldDescriptor, value: Any, where: str) -> None:
    if is_map(field):
        target = getattr(message, field.name)
        for key, item in _expect(value, dict, where, "an object of strings").items():
            target[key] = _expect(item, str, f"{where}.{key}", "a string (quote a value holding a comma)")
    elif field.is_repeated:
        target = getattr(message, field.name)
        for index, item in enumerate(_expect(value, list, where, "a list")):
            if is_structure(field):
                fill_message(
                    target.add(), _expect(item, dict, f"{where}[{index}]", "an object"), f"{where}[{index}]."
                )
            else:
                target.append(_scalar(field, item, f"{where}[{index}]"))
    elif is_structure(field):
        fill_message(getattr(message, field.name), _expect(value, dict, where, "an object"), f"{where}.")
    elif is_timestamp(field):
        getattr(message, field.name).FromSeconds(_epoch_seconds(value, where))
    else:
        setattr(message, field.name, _scalar(field, value, where))


def _epoch_seconds(value: Any, where: str) -> int:
    """A timestamp as aws-cli takes one (``--valid-to``): epoch seconds, or ISO 8601 text
    (``2027-01-01T00:00:00Z``; no zone is UTC). aws-cli hands botocore the text as given."""
    what = "epoch seconds or an ISO 8601 time such as 2027-01-01T00:00:00Z"
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return int(float(text))
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise RequestShapeError(f"{where} must be {what}, got {json.dumps(value)}") from None
        return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
    return int(_expect(value, (int, float), where, what))


def _scalar(field: FieldDescriptor, value: Any, where: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_BOOL:
        return _expect(value, bool, where, "true or false")
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)  # shorthand gives text: Limit=10
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestShapeError(f"{where} must be an integer")
        return value
    if kind == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, bytes):
            return value
        try:
            return base64.b64decode(_expect(value, str, where, "base64 text"), validate=True)
        except binascii.Error:
            raise RequestShapeError(f"{where} must be base64 text or fileb://PATH") from None
    return _expect(value, str, where, "a string")


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise RequestShapeError(f"{where} must be {what}, got {json.dumps(value, default=repr)}")
    return value


# -- response: the client's AWS dict -> what is printed ----------------------------------------


def printable(value: Any, member: str = "") -> Any:
    """``KeyStoreClient.call``'s response as aws-cli prints it: blobs in base64, timestamps as epoch
    seconds, ``KeyState``/``KeyManager`` in AWS's spelling; the members (false booleans included,
    issue 20) are the client's."""
    if isinstance(value, dict):
        return {name: printable(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [printable(item, member) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.timestamp()  # aws-cli 1.x prints the wire value (cli_timestamp_format = wire)
    rename = _AWS_VALUES.get(member)
    return rename(value) if rename is not None and isinstance(value, str) else value
