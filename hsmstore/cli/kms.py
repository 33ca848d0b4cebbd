"""``hsmstore kms <operation>``: a client CLI that takes what ``aws kms`` takes; ``hsmstore admin``.

Commands and flags are derived from the proto descriptors, so every RPC of
``hsmstore.v1.KeyStore`` (and of ``hsmstore.v1.Admin``, under ``hsmstore admin``)
has a command: ``GenerateDataKey`` is ``generate-data-key``, field ``key_id``
is ``--key-id``. What a flag takes, and what is printed, is aws-cli's (issue
20, "The `kms` CLI as aws-cli users expect"; docs/api.md, "Command line"):

* maps and structures take aws-cli's shorthand (``--encryption-context
  app=orders,env=dev`` is two pairs; cli/shorthand.py) or JSON
  (``'{"app":"orders"}'``); lists of structures one shorthand item per word
  (``--tags TagKey=team,TagValue=payments TagKey=env,TagValue=dev``) or a JSON
  list; lists of strings one per word (``--grant-tokens a b``) or a JSON list;
  any value may be ``file://PATH`` (text); blobs ``fileb://PATH`` (raw bytes) or
  base64 text, as aws-cli v2 takes them; booleans ``--flag`` / ``--no-flag``.
  A map flag may be repeated as words (``--encryption-context a=1 b=2``), an
  older hsmstore form aws-cli does not have.
* global options go before or after the operation: ``--endpoint``
  (``--endpoint-url``), ``--ca``/``--cert``/``--key``, ``--output
  json|text|table``, ``--query`` (JMESPath), ``--no-paginate``,
  ``--max-items``, ``--page-size``, ``--starting-token``, ``--cli-input-json``,
  ``--generate-cli-skeleton``.
* output is AWS's response shape (cli/kms_shapes.py); List* calls are paged
  through until done and their lists merged, as aws-cli does.
* a missing required parameter is a usage error (exit 2); the required set is
  AWS's (botocore's KMS model; tests/unit/test_cli_kms.py compares) and, for
  hsmstore's own RPCs, docs/api.md's.

``simulate`` prints ALLOW or DENY and what decided, as the question is asked
by a person. Service errors print ``{"Error": {"Code": reason, "Message": ...}}``
on stderr and exit 254, like the AWS CLI. A secret field (a custom key
store's ``key_store_password``, the crypto user's PIN) is never a flag's
value, as a PIN is never taken on the command line (docs/api.md, "Command
line"): it is ``--key-store-password-file PATH``, or ``-`` for stdin.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.cli import output, shorthand
from hsmstore.cli.kms_shapes import (
    RequestShapeError,
    aws_name,
    fill_message,
    is_map,
    is_structure,
    is_timestamp,
    message_of,
    printable,
)
from hsmstore.client import HsmstoreError, KeyStoreClient
from hsmstore.client.channel import DEFAULT_ENDPOINT

SERVICE = pb.DESCRIPTOR.services_by_name["KeyStore"]
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["Admin"]
SERVICE_ERROR_EXIT = 254
USAGE_ERROR_EXIT = 2
CALL_TIMEOUT_SECONDS = 30

SECRET_FIELDS = frozenset({"key_store_password"})
"""Request fields read from a file or stdin only (``--<field>-file``): they would show in
``/proc/<pid>/cmdline`` and shell history as flag values."""

REQUIRED: dict[str, frozenset[str]] = {
    name: frozenset(fields)
    for name, fields in {
        # AWS's required members (botocore's KMS model), by proto field name.
        "DescribeKey": ("key_id",),
        "EnableKey": ("key_id",),
        "DisableKey": ("key_id",),
        "UpdateKeyDescription": ("key_id", "description"),
        "Encrypt": ("key_id", "plaintext"),
        "ReEncrypt": ("destination_key_id",),
        "GenerateDataKey": ("key_id",),
        "GenerateDataKeyWithoutPlaintext": ("key_id",),
        # Issue 23: asymmetric and HMAC keys.
        "Sign": ("key_id", "message", "signing_algorithm"),
        "Verify": ("key_id", "message", "signature", "signing_algorithm"),
        "GetPublicKey": ("key_id",),
        "GenerateMac": ("message", "key_id", "mac_algorithm"),
        "VerifyMac": ("message", "key_id", "mac_algorithm", "mac"),
        "GenerateDataKeyPair": ("key_id", "key_pair_spec"),
        "GenerateDataKeyPairWithoutPlaintext": ("key_id", "key_pair_spec"),
        "DeriveSharedSecret": ("key_id", "key_agreement_algorithm", "public_key"),
        # Issue 22: imported key material.
        "GetParametersForImport": ("key_id", "wrapping_algorithm", "wrapping_key_spec"),
        "ImportKeyMaterial": ("key_id", "import_token", "encrypted_key_material"),
        "DeleteImportedKeyMaterial": ("key_id",),
        "ScheduleKeyDeletion": ("key_id",),
        "CancelKeyDeletion": ("key_id",),
        "EnableKeyRotation": ("key_id",),
        "DisableKeyRotation": ("key_id",),
        "GetKeyRotationStatus": ("key_id",),
        "RotateKeyOnDemand": ("key_id",),
        "ListKeyRotations": ("key_id",),
        "CreateAlias": ("alias_name", "target_key_id"),
        "UpdateAlias": ("alias_name", "target_key_id"),
        "DeleteAlias": ("alias_name",),
        "TagResource": ("key_id", "tags"),
        "UntagResource": ("key_id", "tag_keys"),
        "ListResourceTags": ("key_id",),
        "GetKeyLastUsage": ("key_id",),
        "PutKeyPolicy": ("key_id", "policy"),
        "GetKeyPolicy": ("key_id",),
        "ListKeyPolicies": ("key_id",),
        "CreateGrant": ("key_id", "operations"),
        "ListGrants": ("key_id",),
        "RevokeGrant": ("key_id", "grant_id"),
        "CreateCustomKeyStore": ("custom_key_store_name",),
        "ConnectCustomKeyStore": ("custom_key_store_id",),
        "DisconnectCustomKeyStore": ("custom_key_store_id",),
        "UpdateCustomKeyStore": ("custom_key_store_id",),
        "DeleteCustomKeyStore": ("custom_key_store_id",),
        # hsmstore's own RPCs (docs/authorization.md "Simulate", docs/api.md "Additions").
        "Simulate": ("principal", "operation"),  # key_id: empty for operations on no key
        "PutIdentityPolicy": ("principal", "policy_name", "policy"),
        "GetIdentityPolicy": ("principal", "policy_name"),
        "DeleteIdentityPolicy": ("principal", "policy_name"),
    }.items()
}

FIELD_HELP = {
    "key_id": "key id, key ARN, alias name (alias/...) or alias ARN",
    "target_key_id": "the key the alias names: key id or key ARN",
    "destination_key_id": "the key to encrypt under: key id, key ARN, alias name or alias ARN",
    "source_key_id": "the key the ciphertext was made under (optional for symmetric keys)",
    "alias_name": "alias/NAME",
    "description": "free text shown in describe-key",
    "plaintext": "the data: fileb://PATH (raw bytes) or base64 text; at most 4096 bytes",
    "ciphertext_blob": "a ciphertext from encrypt or generate-data-key: fileb://PATH or base64 text",
    "encryption_context": "additional authenticated data; decrypt needs the same pairs",
    "source_encryption_context": "the encryption context the ciphertext was made with",
    "destination_encryption_context": "the encryption context to encrypt with",
    "grant_tokens": "grant tokens of grants not yet visible everywhere",
    "tags": "tags on the key",
    "tag_keys": "tag keys to remove",
    "policy": "a key or identity policy document: JSON text or file://PATH",
    "policy_name": "the policy's name (key policies: default)",
    "key_spec": "create-key: SYMMETRIC_DEFAULT, RSA_2048|3072|4096, ECC_NIST_P256|P384|P521, "
    "ECC_SECG_P256K1, HMAC_224|256|384|512; generate-data-key: AES_256 or AES_128",
    "key_usage": "ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC or KEY_AGREEMENT",
    "origin": "AWS_KMS; EXTERNAL to import your own key material; "
    "AWS_CLOUDHSM for a key in a custom key store",
    "number_of_bytes": "how many bytes (1-1024)",
    "pending_window_in_days": "days before deletion (7-30, default 30)",
    "rotation_period_in_days": "days between automatic rotations (90-2560, default 365)",
    "bypass_policy_lockout_safety_check": "allow a policy that locks the caller out",
    "grantee_principal": "the principal the grant is for (ARN)",
    "retiring_principal": "the principal that may retire the grant (ARN)",
    "operations": "operations the grant allows: Encrypt Decrypt GenerateDataKey ...",
    "constraints": "EncryptionContextSubset={k=v} or EncryptionContextEquals={k=v}",
    "grant_id": "the grant's id",
    "grant_token": "the grant token create-grant returned",
    "name": "the grant's name (same name and parameters: same grant)",
    "limit": "page size (paging is automatic; see --page-size)",
    "marker": "resume after this NextMarker (turns automatic paging off)",
    "custom_key_store_id": "cks-... id of a custom key store",
    "custom_key_store_name": "a name unique in the tenant",
    "principal": "the principal (ARN)",
    "operation": "the operation, e.g. Decrypt or kms:DisableKey",
    "via_service": "simulate a call made through this service",
    "encryption_algorithm": "SYMMETRIC_DEFAULT; RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256 for RSA keys",
    "message": "the message, or its digest with --message-type DIGEST: fileb://PATH or base64 text",
    "message_type": "RAW (default: at most 4096 bytes) or DIGEST (the hash of the message)",
    "signature": "the signature to verify: fileb://PATH or base64 text",
    "signing_algorithm": "RSASSA_PSS_SHA_256|384|512, RSASSA_PKCS1_V1_5_SHA_256|384|512, "
    "ECDSA_SHA_256|384|512",
    "mac": "the MAC to verify: fileb://PATH or base64 text",
    "mac_algorithm": "HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512 (the key's)",
    "key_pair_spec": "RSA_2048|3072|4096, ECC_NIST_P256|P384|P521 or ECC_SECG_P256K1",
    "key_agreement_algorithm": "ECDH",
    "public_key": "the peer's public key, DER SubjectPublicKeyInfo: fileb://PATH or base64 text",
    "wrapping_algorithm": "RSAES_OAEP_SHA_1 or RSA_AES_KEY_WRAP_SHA_1 (every token); "
    "RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256 where the token has them",
    "wrapping_key_spec": "RSA_2048, RSA_3072 or RSA_4096",
    "import_token": "the ImportToken of get-parameters-for-import: fileb://PATH or base64 text",
    "encrypted_key_material": "the 32-byte key material wrapped under the PublicKey: "
    "fileb://PATH or base64 text",
    "valid_to": "when the material expires (with KEY_MATERIAL_EXPIRES): "
    "2027-01-01T00:00:00Z or epoch seconds",
    "expiration_model": "KEY_MATERIAL_EXPIRES (the default: give --valid-to) or KEY_MATERIAL_DOES_NOT_EXPIRE",
    "source_encryption_algorithm": "SYMMETRIC_DEFAULT",
    "destination_encryption_algorithm": "SYMMETRIC_DEFAULT",
    "custom_key_store_type": "PKCS11 (the default)",
    "new_custom_key_store_name": "the store's new name",
    "pkcs11_module": "a module name the server allows (serve --pkcs11-modules), never a path",
    "hsm_profile": "softhsm2 or cloudhsm (default: the module's)",
    "token_label": "the token's label (this or --token-serial)",
    "token_serial": "the token's serial number (this or --token-label)",
}


def command_name(method_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", method_name).lower()


def add_kms_parser(subparsers: Any) -> None:
    _add_service_parser(subparsers, "kms", SERVICE, "call the key store, like `aws kms`")
    _add_service_parser(subparsers, "admin", ADMIN_SERVICE, "manage identity policies (the IAM analogue)")


# -- parsers -------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options aws-cli takes anywhere: on ``kms`` and again on each operation.

    On the operation they default to SUPPRESS, so a value given before the
    operation is kept unless given again after it.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options (before or after the operation)")
    group.add_argument(
        "--endpoint",
        "--endpoint-url",
        dest="endpoint",
        default=default(None),
        help=f"HOST:PORT (default $HSMSTORE_ENDPOINT or {DEFAULT_ENDPOINT})",
    )
    group.add_argument("--ca", default=default(None), help="CA bundle to verify a TLS server (enables TLS)")
    group.add_argument("--cert", default=default(None), help="client certificate (PEM) for mutual TLS")
    group.add_argument("--key", default=default(None), help="client private key (PEM) for mutual TLS")
    group.add_argument(
        "--output",
        choices=output.FORMATS,
        default=default(None),
        help="json (default), text or table, as aws-cli",
    )
    group.add_argument(
        "--query", default=default(None), help="JMESPath applied to the response before printing"
    )
    group.add_argument(
        "--no-paginate",
        dest="no_paginate",
        action="store_true",
        default=default(False),
        help="one page only (List* calls are paged through by default)",
    )
    group.add_argument(
        "--max-items",
        dest="max_items",
        type=_positive,
        default=default(None),
        help="stop after N items; prints NextToken",
    )
    group.add_argument(
        "--page-size", dest="page_size", type=_positive, default=default(None), help="items per call"
    )
    group.add_argument(
        "--starting-token",
        dest="starting_token",
        default=default(None),
        help="the NextToken of an earlier --max-items",
    )
    group.add_argument(
        "--cli-input-json",
        dest="cli_input_json",
        default=default(None),
        help="the request as JSON (AWS member names) or file://PATH; flags override its members",
    )
    group.add_argument(
        "--generate-cli-skeleton",
        dest="generate_cli_skeleton",
        action="store_true",
        default=default(False),
        help="print a JSON template for --cli-input-json and exit",
    )


def _add_service_parser(subparsers: Any, command: str, service: Any, help_text: str) -> None:
    kms = subparsers.add_parser(command, help=help_text)
    kms.set_defaults(service=service)
    _add_global_options(kms, suppress=False)
    operations = kms.add_subparsers(dest="operation", required=True, metavar="OPERATION")
    for method in service.methods:
        parser = operations.add_parser(
            command_name(method.name), help=method.name, description=_description(method)
        )
        parser.set_defaults(method=method)
        required = REQUIRED.get(method.name, frozenset())
        for field in method.input_type.fields:
            _add_field_argument(parser, field, field.name in required)
        _add_global_options(parser, suppress=True)


def _description(method: MethodDescriptor) -> str:
    text = f"{method.name} (hsmstore.v1.{method.containing_service.name}/{method.name})."
    if _is_paged(method):
        text += " Pages are fetched until done and merged; see --no-paginate, --max-items."
    return text


def _add_field_argument(parser: argparse.ArgumentParser, field: FieldDescriptor, required: bool) -> None:
    flag = "--" + field.name.replace("_", "-")
    mark = "[required] " if required else ""
    text = FIELD_HELP.get(field.name, aws_name(field))
    if field.name in SECRET_FIELDS:
        parser.add_argument(
            flag + "-file",
            dest=field.name,
            type=_secret_file,
            metavar="PATH|-",
            help=f"{mark}file holding the {aws_name(field)}, or - for stdin (never on the command line)",
        )
        # The bare flag exists only to refuse it (and so it is not read as an abbreviation of -file).
        parser.add_argument(
            flag, dest=f"refused_{field.name}", type=_refuse_secret(flag), help=argparse.SUPPRESS
        )
    elif is_map(field):
        parser.add_argument(
            flag,
            dest=field.name,
            nargs="+",
            metavar="KEY=VALUE,...",
            help=f"{mark}{text}; shorthand or JSON object",
        )
    elif field.is_repeated and is_structure(field):
        example = ",".join(f"{aws_name(f)}=..." for f in message_of(field).fields)
        parser.add_argument(
            flag,
            dest=field.name,
            nargs="+",
            metavar=example,
            help=f"{mark}{text}; one item per word, or a JSON list",
        )
    elif field.is_repeated:
        parser.add_argument(
            flag,
            dest=field.name,
            nargs="+",
            metavar="VALUE",
            help=f"{mark}{text}; one per word, or a JSON list",
        )
    elif field.type == FieldDescriptor.TYPE_BYTES:
        parser.add_argument(flag, dest=field.name, metavar="fileb://PATH|BASE64", help=f"{mark}{text}")
    elif is_structure(field):
        parser.add_argument(
            flag, dest=field.name, metavar="SHORTHAND|JSON", help=f"{mark}{text}; shorthand or JSON"
        )
    elif field.type == FieldDescriptor.TYPE_BOOL:
        parser.add_argument(flag, dest=field.name, action="store_true", default=None, help=f"{mark}{text}")
        parser.add_argument(
            "--no-" + flag.removeprefix("--"), dest=field.name, action="store_false", help=f"do not {text}"
        )
    elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        parser.add_argument(flag, dest=field.name, type=int, metavar="N", help=f"{mark}{text}")
    else:
        parser.add_argument(flag, dest=field.name, metavar="TEXT", help=f"{mark}{text} (text or file://PATH)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


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


# -- arguments -> the AWS-shaped request -----------------------------------------------------


class UsageError(ValueError):
    """A flag's value cannot be read; one line naming the flag."""


def _param_file(text: str, flag: str) -> str:
    """``file://PATH`` is the file's text, for any parameter (aws-cli's "paramfile")."""
    if text.startswith("file://"):
        try:
            return Path(text.removeprefix("file://")).expanduser().read_text(encoding="utf-8")
        except OSError as error:
            raise UsageError(f"{flag}: cannot read {text}: {error.strerror}") from None
    return text


def _json(text: str, flag: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{flag}: invalid JSON: {error}") from None
    if not isinstance(value, kind):
        raise UsageError(f"{flag}: expected a JSON {'object' if kind is dict else 'list'}")
    return value


def _shorthand(text: str, flag: str, message: Descriptor | None) -> dict[str, Any]:
    try:
        parsed = shorthand.parse(text)
    except ValueError as error:
        raise UsageError(f"{flag}: {error}") from None
    return _coerce(parsed, message) if message is not None else parsed


def _coerce(members: dict[str, Any], message: Descriptor) -> dict[str, Any]:
    """Shorthand gives text and bare scalars; make them the members' types, as aws-cli's
    BackCompatVisitor does (``Operations=Decrypt`` is a one-item list, ``Limit=5`` a number)."""
    fields = {aws_name(f): f for f in message.fields} | {f.name: f for f in message.fields}
    out: dict[str, Any] = {}
    for name, value in members.items():
        field = fields.get(name)
        if field is None or is_map(field):
            out[name] = value
        elif field.is_repeated and not isinstance(value, list):
            out[name] = [value]
        elif is_structure(field) and isinstance(value, dict):
            out[name] = _coerce(value, message_of(field))
        elif field.type == FieldDescriptor.TYPE_BOOL and isinstance(value, str):
            out[name] = value.lower() == "true"
        elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64) and isinstance(
            value, str
        ):
            out[name] = int(value) if value.lstrip("-").isdigit() else value
        else:
            out[name] = value
    return out


def _pair_item(text: str, flag: str, message: Descriptor) -> dict[str, Any]:
    """One shorthand item of a list of structures; for a two-string structure (``Tag``), the
    older hsmstore form ``team=payments`` is ``TagKey=team,TagValue=payments`` (aws-cli refuses
    that word as an unknown member, so no aws-cli form changes meaning)."""
    item = _shorthand(text, flag, message)
    members = [f for f in message.fields if f.type == FieldDescriptor.TYPE_STRING]
    names = {aws_name(f) for f in message.fields} | {f.name for f in message.fields}
    if len(members) == len(message.fields) == 2 and len(item) == 1:
        ((key, value),) = item.items()
        if key not in names and isinstance(value, str):
            return {aws_name(members[0]): key, aws_name(members[1]): value}
    return item


def _blob(text: str, flag: str) -> bytes:
    if text.startswith("fileb://"):
        try:
            return Path(text.removeprefix("fileb://")).expanduser().read_bytes()
        except OSError as error:
            raise UsageError(f"{flag}: cannot read {text}: {error.strerror}") from None
    if text.startswith("file://"):
        return _param_file(text, flag).encode("utf-8")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise UsageError(f"{flag}: expected fileb://PATH or base64 text") from None


def aws_member(field: FieldDescriptor, value: Any) -> Any:
    """One flag's parsed argv value as the AWS request member aws-cli would build."""
    flag = "--" + field.name.replace("_", "-")
    if field.name in SECRET_FIELDS or isinstance(value, bool | int):
        return value
    if is_map(field):
        return _map_member(value, flag)
    if field.is_repeated:
        return _list_member(field, value, flag)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _blob(value, flag)
    text = _param_file(value, flag)
    if not is_structure(field):
        return text
    return (
        _json(text, flag, dict)
        if shorthand.looks_like_json(text)
        else _shorthand(text, flag, message_of(field))
    )


def _map_member(words: list[str], flag: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for word in words:
        text = _param_file(word, flag)
        merged.update(
            _json(text, flag, dict) if shorthand.looks_like_json(text) else _shorthand(text, flag, None)
        )
    return merged


def _list_member(field: FieldDescriptor, value: list[str], flag: str) -> list[Any]:
    words = [_param_file(word, flag) for word in value]
    if len(words) == 1 and words[0].strip().startswith("["):
        return list(_json(words[0], flag, list))
    if not is_structure(field):
        return words
    return [
        _json(w, flag, dict) if shorthand.looks_like_json(w) else _pair_item(w, flag, message_of(field))
        for w in words
    ]


def aws_request(method: MethodDescriptor, args: argparse.Namespace) -> dict[str, Any]:
    """The request as the dict of AWS members aws-cli hands botocore (``--cli-input-json`` first,
    flags over it); tests/unit/test_cli_aws_parity.py compares it with aws-cli's."""
    request: dict[str, Any] = {}
    cli_input = getattr(args, "cli_input_json", None)
    if cli_input:
        request.update(_json(_param_file(cli_input, "--cli-input-json"), "--cli-input-json", dict))
    for field in method.input_type.fields:
        value = getattr(args, field.name, None)
        if value is not None:
            request[aws_name(field)] = aws_member(field, value)
    missing = [
        "--" + f.name.replace("_", "-")
        for f in method.input_type.fields
        if f.name in REQUIRED.get(method.name, ()) and request.get(aws_name(f)) in (None, "", [], {})
    ]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    return request


def to_message(method: MethodDescriptor, request: dict[str, Any]) -> Message:
    message: Message = getattr(pb, method.input_type.name)()
    try:
        fill_message(message, request)
    except RequestShapeError as error:
        raise UsageError(str(error)) from None
    return message


def build_request(method: MethodDescriptor, args: argparse.Namespace) -> Message:
    return to_message(method, aws_request(method, args))


def skeleton(message: Descriptor, depth: int = 0) -> dict[str, Any]:
    """``--generate-cli-skeleton``: every member with a placeholder of its type."""
    out: dict[str, Any] = {}
    for field in message.fields:
        if field.name in SECRET_FIELDS:
            continue
        if is_map(field):
            value: Any = {"KeyName": ""}
        elif is_structure(field):
            value = skeleton(message_of(field), depth + 1) if depth < 3 else {}
        elif is_timestamp(field):
            value = 0
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
            value = 0
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = None
        else:
            value = ""
        out[aws_name(field)] = [value] if field.is_repeated and not is_map(field) else value
    return out


# -- calling, paging, printing ---------------------------------------------------------------


def _is_paged(method: MethodDescriptor) -> bool:
    """A List* call: ``marker`` in, ``next_marker`` and ``truncated`` out (AWS's KMS paging)."""
    inputs = {f.name for f in method.input_type.fields}
    outputs = {f.name for f in method.output_type.fields}
    return "marker" in inputs and {"next_marker", "truncated"} <= outputs


@dataclass(frozen=True)
class Paging:
    no_paginate: bool
    max_items: int | None
    page_size: int | None
    starting_token: str | None


def _decode_token(token: str | None) -> tuple[str, int]:
    """botocore's NextToken: base64 of ``{"Marker": ..., "boto_truncate_amount": N}``."""
    if not token:
        return "", 0
    try:
        value = json.loads(base64.b64decode(token, validate=True))
        return str(value.get("Marker", "")), int(value.get("boto_truncate_amount", 0))
    except (binascii.Error, ValueError, AttributeError, TypeError):
        raise UsageError("--starting-token: not a NextToken printed by --max-items") from None


def _encode_token(marker: str, skip: int) -> str:
    value: dict[str, Any] = {"Marker": marker}
    if skip:
        value["boto_truncate_amount"] = skip
    return base64.b64encode(json.dumps(value).encode()).decode("ascii")


def paginate(
    call: Callable[[dict[str, Any]], dict[str, Any]], request: dict[str, Any], paging: Paging
) -> dict[str, Any]:
    """Follow NextMarker until Truncated is false and merge the lists, as aws-cli does; stop after
    ``--max-items`` and print ``NextToken`` to resume with ``--starting-token``.

    ``call`` takes and returns AWS-shaped dicts (``KeyStoreClient.call``); the lists merged are
    the response's list members (``Keys``, ``Grants``, ...).
    """
    marker, skip = _decode_token(paging.starting_token)
    merged: dict[str, Any] = {}
    first: dict[str, Any] | None = None
    taken = 0
    while True:
        page = call({**request, "Marker": marker or None, "Limit": paging.page_size or request.get("Limit")})
        first = first if first is not None else page
        items = {name: value for name, value in page.items() if isinstance(value, list)}
        for name in items:
            merged.setdefault(name, [])
        count = max((len(v) for v in items.values()), default=0)
        if paging.max_items is not None and taken + count - skip >= paging.max_items:
            keep = paging.max_items - taken
            for name, values in items.items():
                merged[name] += values[skip : skip + keep]
            if skip + keep < count:
                merged["NextToken"] = _encode_token(marker, skip + keep)
            elif page.get("Truncated"):
                merged["NextToken"] = _encode_token(page.get("NextMarker", ""), 0)
            break
        for name, values in items.items():
            merged[name] += values[skip:]
        taken += count - skip
        skip = 0
        if not page.get("Truncated") or not page.get("NextMarker"):
            break
        marker = page["NextMarker"]
    rest = {k: v for k, v in first.items() if k not in merged and k not in ("NextMarker", "Truncated")}
    return rest | merged


def run_kms(args: argparse.Namespace) -> int:
    method: MethodDescriptor = args.method
    try:
        if args.generate_cli_skeleton:
            print(json.dumps(skeleton(method.input_type), indent=4))
            return 0
        request = aws_request(method, args)
        to_message(method, request)  # every member of the right type, or one line naming it
        return _call_and_print(args, method, request)
    except (UsageError, output.QueryError) as error:
        prog = f"hsmstore {'kms' if args.service is SERVICE else 'admin'} {command_name(method.name)}"
        print(f"{prog}: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT


def _call_and_print(args: argparse.Namespace, method: MethodDescriptor, request: dict[str, Any]) -> int:
    """The call through the client SDK (hsmstore.client: deadlines, retries of idempotent calls,
    typed errors), with AWS-shaped dicts in and out."""
    endpoint = args.endpoint or os.environ.get("HSMSTORE_ENDPOINT") or DEFAULT_ENDPOINT
    client = KeyStoreClient(
        endpoint, ca_file=args.ca, cert_file=args.cert, key_file=args.key, timeout=CALL_TIMEOUT_SECONDS
    )
    with client:

        def call(members: dict[str, Any]) -> dict[str, Any]:
            return client.call(method.name, members)

        try:
            if method.name == "Simulate":
                return _print_simulate(call(request))
            explicit_paging = any(getattr(args, name, None) is not None for name in ("marker", "limit"))
            if _is_paged(method) and not args.no_paginate and not explicit_paging:
                paging = Paging(args.no_paginate, args.max_items, args.page_size, args.starting_token)
                response = paginate(call, request, paging)
            else:
                if _is_paged(method) and args.page_size and not explicit_paging:
                    request = {**request, "Limit": args.page_size}
                response = call(request)
        except HsmstoreError as error:
            failure = {"Error": {"Code": error.reason or error.code, "Message": error.message}}
            print(json.dumps(failure), file=sys.stderr)
            return SERVICE_ERROR_EXIT
    result = output.apply_query(printable(response), args.query)
    output.write(result, args.output or "json", method.name, sys.stdout)
    return 0


def _print_simulate(response: dict[str, Any]) -> int:
    print(response.get("Decision", ""))
    print(f"decided by: {response.get('DecidedBy', '')}")
    if response.get("GrantId"):
        print(f"grant: {response['GrantId']}")
    return 0
