"""``hsmstore kms <operation>``: a client CLI that mirrors ``aws kms``; ``hsmstore admin``.

Commands and flags are derived from the proto descriptors, so every RPC of
``hsmstore.v1.KeyStore`` (and of ``hsmstore.v1.Admin``, under ``hsmstore admin``)
has a command: ``GenerateDataKey`` is ``generate-data-key``, field ``key_id``
is ``--key-id``. Blob inputs take ``fileb://PATH`` (raw bytes) or base64 text,
as the AWS CLI v2 does; text inputs take ``file://PATH`` too (policies); maps
take ``key=value`` pairs; other messages (grant constraints) take JSON; output
is the response as JSON (bytes in base64), except ``simulate``, which prints
ALLOW or DENY and what decided, as the question is asked by a person.
Service errors print ``{"Error": {"Code": reason, "Message": ...}}`` on stderr
and exit 254, like the AWS CLI. A secret field (a custom key store's
``key_store_password``, the crypto user's PIN) is never a flag's value, as a
PIN is never taken on the command line (docs/api.md, "Command line"): it is
``--key-store-password-file PATH``, or ``-`` for stdin.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.client.channel import DEFAULT_ENDPOINT, key_store, open_channel
from hsmstore.client.errors import error_reason

SERVICE = pb.DESCRIPTOR.services_by_name["KeyStore"]
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["Admin"]
SERVICE_ERROR_EXIT = 254
USAGE_ERROR_EXIT = 2


SECRET_FIELDS = frozenset({"key_store_password"})
"""Request fields read from a file or stdin only (``--<field>-file``): they would show in
``/proc/<pid>/cmdline`` and shell history as flag values."""


def command_name(method_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", method_name).lower()


def add_kms_parser(subparsers: Any) -> None:
    _add_service_parser(subparsers, "kms", SERVICE, "call the key store, like `aws kms`")
    _add_service_parser(subparsers, "admin", ADMIN_SERVICE, "manage identity policies (the IAM analogue)")


def _add_service_parser(subparsers: Any, command: str, service: Any, help_text: str) -> None:
    kms = subparsers.add_parser(command, help=help_text)
    kms.set_defaults(service=service)
    kms.add_argument(
        "--endpoint", default=None, help=f"HOST:PORT (default $HSMSTORE_ENDPOINT or {DEFAULT_ENDPOINT})"
    )
    kms.add_argument("--ca", help="CA bundle to verify a TLS server (enables TLS)")
    kms.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    kms.add_argument("--key", help="client private key (PEM) for mutual TLS")
    operations = kms.add_subparsers(dest="operation", required=True, metavar="OPERATION")
    for method in service.methods:
        parser = operations.add_parser(command_name(method.name), help=method.name)
        parser.set_defaults(method=method)
        for field in method.input_type.fields:
            _add_field_argument(parser, field)


def _add_field_argument(parser: argparse.ArgumentParser, field: FieldDescriptor) -> None:
    flag = "--" + field.name.replace("_", "-")
    if field.name in SECRET_FIELDS:
        parser.add_argument(flag + "-file", dest=field.name, type=_secret_file, metavar="PATH|-")
        # The bare flag exists only to refuse it (and so it is not read as an abbreviation of -file).
        parser.add_argument(
            flag, dest=f"refused_{field.name}", type=_refuse_secret(flag), help=argparse.SUPPRESS
        )
    elif _is_map(field) or _is_pair_message(field):
        parser.add_argument(flag, dest=field.name, nargs="+", metavar="KEY=VALUE", type=_pair)
    elif _is_repeated(field):
        parser.add_argument(flag, dest=field.name, nargs="+")
    elif field.type == FieldDescriptor.TYPE_BYTES:
        parser.add_argument(flag, dest=field.name, type=_blob, metavar="fileb://PATH|BASE64")
    elif field.message_type is not None and field.message_type.name != "Timestamp":
        parser.add_argument(flag, dest=field.name, type=_json_object, metavar="JSON")
    elif field.type == FieldDescriptor.TYPE_BOOL:
        parser.add_argument(flag, dest=field.name, action="store_true", default=None)
    elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        parser.add_argument(flag, dest=field.name, type=int)
    else:
        parser.add_argument(flag, dest=field.name, type=_text)


def _text(text: str) -> str:
    """``file://PATH`` reads the file (policies), as the AWS CLI does; anything else is itself."""
    if text.startswith("file://"):
        try:
            return Path(text.removeprefix("file://")).read_text(encoding="utf-8")
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror}") from None
    return text


def _secret_file(path: str) -> str:
    """A secret from a file, or from stdin for ``-``; surrounding whitespace (the newline) dropped."""
    try:
        secret = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from None
    secret = secret.strip()
    if not secret:
        source = "stdin" if path == "-" else path
        raise argparse.ArgumentTypeError(f"{source} is empty; put the PIN in it")
    return secret


def _refuse_secret(flag: str) -> Any:
    def refuse(_value: str) -> str:  # the value is not repeated: it is the secret
        raise argparse.ArgumentTypeError(
            f"a PIN is never taken on the command line; use {flag}-file PATH, or {flag}-file - for stdin"
        )

    return refuse


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(_text(text))
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def _is_pair_message(field: FieldDescriptor) -> bool:
    """Repeated two-string messages (``Tag``) are given as KEY=VALUE, like maps."""
    message = field.message_type
    return (
        _is_repeated(field)
        and message is not None
        and len(message.fields) == 2
        and all(f.type == FieldDescriptor.TYPE_STRING for f in message.fields)
    )


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _pair(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _blob(text: str) -> bytes:
    if text.startswith("fileb://"):
        try:
            return Path(text.removeprefix("fileb://")).read_bytes()
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror}") from None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise argparse.ArgumentTypeError("expected fileb://PATH or base64 text") from None


def build_request(method: MethodDescriptor, args: argparse.Namespace) -> Message:
    request_class = getattr(pb, method.input_type.name)
    request: Message = request_class()
    for field in method.input_type.fields:
        value = getattr(args, field.name, None)
        if value is None:
            continue
        target = getattr(request, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target.update(dict(value))
        elif _is_pair_message(field) and field.message_type is not None:
            first, second = (f.name for f in field.message_type.fields)
            target.extend(getattr(pb, field.message_type.name)(**{first: k, second: v}) for k, v in value)
        elif _is_repeated(field):
            target.extend(value)
        elif field.message_type is not None:
            try:
                json_format.ParseDict(value, target)
            except json_format.ParseError as error:
                raise SystemExit(f"--{field.name.replace('_', '-')}: {error}") from None
        else:
            setattr(request, field.name, value)
    return request


def run_kms(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or os.environ.get("HSMSTORE_ENDPOINT") or DEFAULT_ENDPOINT
    method: MethodDescriptor = args.method
    request = build_request(method, args)
    with open_channel(endpoint, args.ca, args.cert, args.key) as channel:
        stub = key_store(channel) if args.service is SERVICE else pb_grpc.AdminStub(channel)
        call = getattr(stub, method.name)
        try:
            response = call(request, timeout=30)
        except grpc.RpcError as error:
            details = error.details() if hasattr(error, "details") else str(error)
            code = error_reason(error) or error.code().name
            print(json.dumps({"Error": {"Code": code, "Message": details}}), file=sys.stderr)
            return SERVICE_ERROR_EXIT
    if method.name == "Simulate":
        print(response.decision)
        print(f"decided by: {response.decided_by}")
        if response.grant_id:
            print(f"grant: {response.grant_id}")
        return 0
    output = json_format.MessageToDict(response, preserving_proto_field_name=True)
    print(json.dumps(output, indent=2, sort_keys=True))
    return 0
