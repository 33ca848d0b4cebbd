"""Hypothesis strategies for every hsmstore.v1 RPC, walked from the proto descriptors.

Each RPC's input message descriptor is walked field by field: strings are
biased toward what breaks parsers and limits (empty, ~100 KB, control
characters, NUL, unicode oddities) and, by field name, toward values that look
valid or really exist in the server (key ids, resource names, aliases, another
tenant's resource names, grant tokens, markers, policy documents); ints sit on
the boundaries the contract names (1-1000, 7-30, 90-2560, int32 limits); maps
and repeated fields sometimes carry thousands of entries; enums take unknown
numbers too. A second family serializes such a request and mutates its bytes
(flips, truncation, bogus length prefixes, invalid UTF-8, deep groups), so a
malformed body reaches the server, not just malformed values.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.fuzz.corpus import CAROL, OTHER_TENANT, REGION, TENANT, Corpus

SERVICES = ("KeyStore", "Admin", "Audit")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1
# The contract's numeric limits and one step either side (docs/api.md, key_store.proto comments).
INT_BOUNDARIES = sorted(
    {0, 1, -1, 2, 6, 7, 8, 24, 25, 26, 29, 30, 31, 49, 50, 51, 89, 90, 91, 99, 100, 101, 128, 365, 999}
    | {1000, 1001, 1023, 1024, 1025, 2559, 2560, 2561, 4096, 6144, 65535, 65536, 2**24}
    | {INT32_MAX, INT32_MIN, INT32_MAX - 1, INT32_MIN + 1}
)
INT64_BOUNDARIES = [*INT_BOUNDARIES, INT64_MAX, INT64_MIN, 2**32, -(2**32), 2**53 + 1]
LONG_LENGTHS = [127, 128, 250, 251, 256, 1024, 2048, 4096, 4097, 6144, 6145, 8192, 32768, 32769, 100_000]
MANY = [11, 26, 50, 51, 65, 100, 101, 1000, 5000]
MAX_REPEATED_BYTES = 512 * 1024  # a repeated field or map stays well under gRPC's 4 MiB message limit
SPECIAL_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\x1b[2J",
    "".join(chr(c) for c in range(1, 32)) + "\x7f",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "🔑",
    "é",
    "e\u0301",
    "\uff4b\uff45\uff59",  # fullwidth "key"
    "İ",
    "%s%n%x%d",
    "{0}{}",
    "' OR '1'='1' --",
    "%",
    "_",
    "*",
    "?",
    "\\",
    '"',
    "../../../etc/passwd",
    "null",
    "{}",
    "[]",
    "-1",
    "0",
    "1e309",
    "NaN",
    "true",
    "alias/",
    "alias/aws/fuzz",
    "alias/service/fuzz",
    "alias/ fuzz",
    "key/",
    "arn:",
    "arn:hsmstore:kms:::",
    "arn:hsmstore:kms:::key/",
    "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:hsmstore:iam::",
    "arn:hsmstore:iam:::root",
    "spiffe://example.org/tenant/local/role/admin",
]
OPERATIONS = [
    "Encrypt",
    "Decrypt",
    "ReEncryptFrom",
    "ReEncryptTo",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "DescribeKey",
    "CreateGrant",
    "RetireGrant",
    "Sign",
    "GenerateMac",
    "CreateKey",
    "ScheduleKeyDeletion",
    "PutKeyPolicy",
    "kms:Decrypt",
    "kms:*",
    "*",
    "decrypt",
]
ENUM_LIKE = [
    "SYMMETRIC_DEFAULT",
    "ENCRYPT_DECRYPT",
    "SIGN_VERIFY",
    "GENERATE_VERIFY_MAC",
    "AES_256",
    "AES_128",
    "RSA_2048",
    "HMAC_256",
    "AWS_KMS",
    "EXTERNAL",
    "AWS_CLOUDHSM",
    "RSAES_OAEP_SHA_256",
    "symmetric_default",
    # Issue 23: asymmetric and HMAC keys.
    "ECC_NIST_P256",
    "KEY_AGREEMENT",
    "ECDSA_SHA_256",
    "RSASSA_PSS_SHA_256",
    "HMAC_SHA_256",
    "RAW",
    "DIGEST",
    "ECDH",
]
LOOKUP_KEYS = ["EventName", "Username", "ResourceName", "EventId", "ResourceType", "AccessKeyId", "eventname"]
EVENT_NAMES = ["Encrypt", "Decrypt", "CreateKey", "GenerateDataKey", "LookupEvents", "PutKeyPolicy"]
CONDITION_OPERATORS = [
    "StringEquals",
    "StringNotEquals",
    "StringLike",
    "StringNotLike",
    "StringEqualsIgnoreCase",
    "Null",
    "Bool",
    "ForAllValues:StringEquals",
    "ForAnyValue:StringLike",
    "ForAllValues:Null",
    "NumericLessThan",
    "DateGreaterThan",
    "IpAddress",
    "Bogus",
    "",
]
CONDITION_KEYS = [
    "kms:EncryptionContext:app",
    "kms:EncryptionContext:",
    "kms:EncryptionContextKeys",
    "kms:CallerAccount",
    "kms:ViaService",
    "kms:GrantOperations",
    "kms:GranteePrincipal",
    "kms:RequestAlias",
    "aws:PrincipalArn",
    "kms:Bogus",
    "",
]
TIMESTAMP_SECONDS = [
    0,
    -1,
    1,
    253402300799,  # 9999-12-31T23:59:59Z, the last second a Timestamp may hold
    253402300800,
    -62135596800,  # 0001-01-01T00:00:00Z, the first
    -62135596801,
    2**31,
    INT64_MAX,
    INT64_MIN,
    1_800_000_000,
]
TIMESTAMP_NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, INT32_MAX, INT32_MIN]


@dataclass(frozen=True)
class Rpc:
    """One method of the hsmstore.v1 services, with its wire path and message classes."""

    service: str
    name: str
    path: str
    request_type: type[Message]
    response_type: type[Message]

    @property
    def descriptor(self) -> Descriptor:
        return cast(Descriptor, self.request_type.DESCRIPTOR)

    @property
    def label(self) -> str:
        return self.name if self.service == "KeyStore" else f"{self.service}/{self.name}"


@dataclass(frozen=True)
class Plan:
    """One request to send: its bytes on the wire, the message they came from, the mutations."""

    rpc: Rpc
    body: bytes
    message: Message | None  # None: random bytes, not derived from a message
    mutations: tuple[str, ...] = ()
    twin: bool = False  # sent twice at once, from two threads

    @property
    def kind(self) -> str:
        return "raw" if self.mutations or self.message is None else "structured"


def all_rpcs() -> list[Rpc]:
    """Every RPC of KeyStore, Admin and Audit, from the file descriptor (so a new RPC is fuzzed at once)."""
    rpcs = []
    for service_name in SERVICES:
        service = pb.DESCRIPTOR.services_by_name[service_name]
        method: MethodDescriptor
        for method in service.methods:
            rpcs.append(
                Rpc(
                    service=service_name,
                    name=method.name,
                    path=f"/{service.full_name}/{method.name}",
                    request_type=GetMessageClass(method.input_type),
                    response_type=GetMessageClass(method.output_type),
                )
            )
    return rpcs


# ---------------------------------------------------------------- scalars


def _repeat_to(unit: str, length: int) -> str:
    return (unit * (length // max(len(unit), 1) + 1))[:length]


def long_strings() -> st.SearchStrategy[str]:
    """Strings up to ~100 KB, built (not drawn char by char) so they fit Hypothesis's buffer."""
    units = st.sampled_from(["a", "\x00", "é", "🔑", "alias/", "/", "%", "\u202e", "0123456789abcdef"])
    return st.builds(_repeat_to, units, st.sampled_from(LONG_LENGTHS))


def general_strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(SPECIAL_STRINGS),
        st.text(max_size=40),
        st.text(alphabet=string.printable, max_size=80),
        long_strings(),
    )


def _near(values: Sequence[str]) -> st.SearchStrategy[str]:
    """Real values and small edits of them: one character changed, cut, padded, case-swapped."""
    if not values:
        return st.nothing()
    base = st.sampled_from(list(values))

    def edit(value: str, position: int, kind: int, char: str) -> str:
        at = position % (len(value) + 1)
        if kind == 0:
            return value[:at] + char + value[at + 1 :]
        if kind == 1:
            return value[:at]
        if kind == 2:
            return value[:at] + char + value[at:]
        if kind == 3:
            return value.swapcase()
        if kind == 4:
            return f" {value} "
        return value + "\x00"

    edited = st.builds(edit, base, st.integers(0, 300), st.integers(0, 5), st.characters())
    return weighted((2, base), (1, edited))


def _key_ids(corpus: Corpus) -> st.SearchStrategy[str]:
    uuids = st.uuids().map(str)
    arn = f"arn:hsmstore:kms:{REGION}:{TENANT}:"
    return st.one_of(
        _near(corpus.key_identifiers()),
        uuids,
        uuids.map(str.upper),
        uuids.map(lambda key: arn + "key/" + key),
        uuids.map(lambda key: f"arn:hsmstore:kms:{REGION}:{OTHER_TENANT}:key/{key}"),
        st.text(max_size=30).map(lambda tail: arn + "alias/" + tail),
        st.text(max_size=30).map(lambda tail: arn + tail),
        _alias_names(corpus),
    )


def _alias_names(corpus: Corpus) -> st.SearchStrategy[str]:
    valid = st.text(alphabet=string.ascii_letters + string.digits + "/_-", min_size=1, max_size=250)
    return st.one_of(
        _near(corpus.alias_names),
        valid.map(lambda name: "alias/" + name),
        st.sampled_from(["alias/aws/", "alias/service/", "alias/aws", "ALIAS/x", "alias//x", "alias/x/"]),
        st.builds(lambda n: "alias/" + "a" * n, st.sampled_from([249, 250, 251, 256, 10_000])),
        st.text(max_size=20).map(lambda name: "alias/" + name),
    )


def _principals(corpus: Corpus) -> st.SearchStrategy[str]:
    names = st.text(alphabet=string.ascii_letters + string.digits + "+=,.@_-/", max_size=64)
    return st.one_of(
        _near(corpus.principals),
        st.builds(
            lambda tenant, kind, name: f"arn:hsmstore:iam::{tenant}:{kind}/{name}",
            st.sampled_from([TENANT, OTHER_TENANT, "", "*", TENANT.upper()]),
            st.sampled_from(["role", "user", "service", "group", "root", ""]),
            names,
        ),
        st.just(f"arn:hsmstore:iam::{OTHER_TENANT}:root"),
        st.just("*"),
    )


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(INT64_MIN, INT64_MAX),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(SPECIAL_STRINGS),
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=8,
    )


def _policy_documents(corpus: Corpus) -> st.SearchStrategy[str]:
    """AWS key/identity policy grammar with every part sometimes wrong (docs/api.md "Key policies")."""
    principals = _principals(corpus)
    actions = st.sampled_from(["kms:" + op for op in OPERATIONS] + ["kms:*", "*", "kms:", "iam:*"])
    json_values = _json_values()
    conditions = st.dictionaries(
        st.sampled_from(CONDITION_OPERATORS),
        st.dictionaries(
            st.sampled_from(CONDITION_KEYS),
            st.one_of(st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3), json_values),
            max_size=3,
        ),
        max_size=3,
    )
    statement = st.fixed_dictionaries(
        {"Effect": st.one_of(st.sampled_from(["Allow", "Deny", "allow", ""]), json_values)},
        optional={
            "Sid": st.text(max_size=20),
            "Principal": st.one_of(
                st.just("*"),
                principals.map(lambda p: {"HSM": p}),
                st.lists(principals, max_size=3).map(lambda ps: {"HSM": ps}),
                st.just({"AWS": "*"}),
                json_values,
            ),
            "NotPrincipal": principals.map(lambda p: {"HSM": p}),
            "Action": st.one_of(actions, st.lists(actions, max_size=4), json_values),
            "NotAction": actions,
            "Resource": st.one_of(st.just("*"), st.text(max_size=20), json_values),
            "Condition": st.one_of(conditions, json_values),
        },
    )
    documents = st.fixed_dictionaries(
        {
            "Version": st.sampled_from(["2012-10-17", "2008-10-17", "", "x"]),
            "Statement": st.one_of(statement, st.lists(statement, max_size=4), json_values),
        },
        optional={"Id": st.text(max_size=10)},
    ).map(json.dumps)

    def nested(depth: int) -> str:
        return '{"Statement":' + "[" * depth + "]" * depth + "}"

    def wide(count: int) -> str:
        one = {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}
        return json.dumps({"Version": "2012-10-17", "Statement": [one] * count})

    return st.one_of(
        documents,
        documents,
        _near(corpus.policies),
        st.builds(nested, st.sampled_from([10, 100, 1000, 50_000])),
        st.builds(wide, st.sampled_from([1, 100, 400, 401, 5000])),
        st.builds(
            lambda n: json.dumps({"Version": "2012-10-17", "Sid": "x" * n}), st.sampled_from([32700, 32800])
        ),
        st.sampled_from(
            ["", "null", "[]", '"x"', "1", "{", "{}", '{"Statement": []}', "NaN", '{"a":1,"a":2}']
        ),
        general_strings(),
    )


def _ciphertexts(corpus: Corpus) -> st.SearchStrategy[bytes]:
    real = st.sampled_from(corpus.ciphertexts) if corpus.ciphertexts else st.binary(min_size=1, max_size=64)

    def damage(blob: bytes, position: int, kind: int, value: int) -> bytes:
        at = position % (len(blob) + 1)
        if kind == 0:
            return blob[:at] + bytes([value]) + blob[at + 1 :]
        if kind == 1:
            return blob[:at]
        if kind == 2:
            return blob + bytes([value]) * position
        return blob[:at] + blob[at:][::-1]

    return st.one_of(
        real,
        st.builds(damage, real, st.integers(0, 8000), st.integers(0, 3), st.integers(0, 255)),
        st.binary(max_size=64),
        _long_bytes(),
    )


def _long_bytes() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda unit, length: (unit * length)[:length],
        st.sampled_from([b"\x00", b"\xff", b"\x01\x02\x03"]),
        st.sampled_from([0, 1, 1024, 4095, 4096, 4097, 6144, 6145, 65536, 100_000]),
    )


def _field_kind(name: str) -> str:
    """The meaning of a string field, by its name (the proto's names are AWS's, docs/api.md)."""
    if name.endswith("key_id"):
        return "key_id"
    if "principal" in name:
        return "principal"
    if name.endswith("algorithm"):
        return "algorithm"
    if name.endswith(("key_spec", "key_usage", "origin")):
        return "enum_like"
    return {
        "grant_tokens": "grant_token",
        "next_token": "marker",
        "operations": "operation",
        "tag_keys": "tag_key",
    }.get(name, name)


TOKEN_ALPHABET = string.ascii_letters + "+/=-_"


def named_strings(name: str, corpus: Corpus) -> st.SearchStrategy[str]:
    """Strings for one field, by its name: what that field means to the server, plus the general ones."""
    specific: dict[str, Callable[[], st.SearchStrategy[str]]] = {
        "key_id": lambda: _key_ids(corpus),
        "alias_name": lambda: _alias_names(corpus),
        "principal": lambda: _principals(corpus),
        "policy": lambda: _policy_documents(corpus),
        "grant_id": lambda: _near(corpus.grant_ids) | st.text(alphabet="0123456789abcdef", max_size=70),
        "grant_token": lambda: _near(corpus.grant_tokens) | st.text(alphabet=TOKEN_ALPHABET, max_size=200),
        "marker": lambda: _near(corpus.markers) | st.text(alphabet=TOKEN_ALPHABET, max_size=100),
        "operation": lambda: st.sampled_from(OPERATIONS),
        "algorithm": lambda: st.sampled_from(ENUM_LIKE),
        "enum_like": lambda: st.sampled_from(ENUM_LIKE),
        "attribute_key": lambda: st.sampled_from(LOOKUP_KEYS),
        "attribute_value": lambda: st.one_of(
            st.sampled_from(EVENT_NAMES), _near(corpus.event_ids), _key_ids(corpus), _principals(corpus)
        ),
        "tag_key": lambda: (
            _near(corpus.tag_keys) | st.sampled_from(["aws:x", "aws:", "AWS:x", "a" * 128, "a" * 129])
        ),
        "policy_name": lambda: (
            _near(corpus.policy_names) | st.text(alphabet=NAME_ALPHABET + "+=,.@", max_size=130)
        ),
        "via_service": lambda: st.sampled_from(["fuzz", "kms.hsmstore", "s3", ""]),
        "custom_key_store_id": lambda: st.sampled_from(["cks-1234567890abcdef0", ""]),
    }
    make = specific.get(_field_kind(name))
    if make is None:
        return general_strings()
    return weighted((2, make()), (1, general_strings()))


def _bytes_for(name: str, corpus: Corpus) -> st.SearchStrategy[bytes]:
    if name == "ciphertext_blob":
        return _ciphertexts(corpus)
    return st.one_of(st.binary(max_size=64), _long_bytes())


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    if signed:
        low, high = (INT32_MIN, INT32_MAX) if bits == 32 else (INT64_MIN, INT64_MAX)
        boundaries = INT_BOUNDARIES if bits == 32 else INT64_BOUNDARIES
    else:
        low, high = 0, UINT32_MAX if bits == 32 else UINT64_MAX
        boundaries = [value for value in INT64_BOUNDARIES if 0 <= value <= high]
    return st.one_of(st.sampled_from(boundaries), st.integers(low, high))


# ---------------------------------------------------------------- messages

SCALAR_BITS = {
    FieldDescriptor.TYPE_INT32: (32, True),
    FieldDescriptor.TYPE_SINT32: (32, True),
    FieldDescriptor.TYPE_SFIXED32: (32, True),
    FieldDescriptor.TYPE_INT64: (64, True),
    FieldDescriptor.TYPE_SINT64: (64, True),
    FieldDescriptor.TYPE_SFIXED64: (64, True),
    FieldDescriptor.TYPE_UINT32: (32, False),
    FieldDescriptor.TYPE_FIXED32: (32, False),
    FieldDescriptor.TYPE_UINT64: (64, False),
    FieldDescriptor.TYPE_FIXED64: (64, False),
}


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _enum_numbers(field: FieldDescriptor) -> list[int]:
    assert field.enum_type is not None
    return [value.number for value in field.enum_type.values]


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None
    return field.message_type


def _single_value(field: FieldDescriptor, corpus: Corpus, depth: int) -> st.SearchStrategy[Any]:
    """One value of the field's type (for a repeated field: one element)."""
    kind = field.type
    if kind in SCALAR_BITS:
        bits, signed = SCALAR_BITS[kind]
        return _ints(bits, signed)
    by_type: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
        FieldDescriptor.TYPE_STRING: lambda: named_strings(field.name, corpus),
        FieldDescriptor.TYPE_BYTES: lambda: _bytes_for(field.name, corpus),
        FieldDescriptor.TYPE_BOOL: st.booleans,
        FieldDescriptor.TYPE_FLOAT: lambda: st.floats(width=32),
        FieldDescriptor.TYPE_DOUBLE: st.floats,
        # known numbers, and unknown ones too
        FieldDescriptor.TYPE_ENUM: lambda: st.sampled_from(_enum_numbers(field)) | _ints(32, True),
    }
    make = by_type.get(kind)
    return make() if make is not None else message_strategy(_message_type(field), corpus, depth + 1)


def _maps(field: FieldDescriptor, corpus: Corpus, depth: int) -> st.SearchStrategy[dict[Any, Any]]:
    key_field = _message_type(field).fields_by_name["key"]
    value_field = _message_type(field).fields_by_name["value"]
    keys = _single_value(key_field, corpus, depth)
    values = _single_value(value_field, corpus, depth)
    small = st.dictionaries(keys, values, max_size=4)
    if key_field.type != FieldDescriptor.TYPE_STRING or value_field.type != FieldDescriptor.TYPE_STRING:
        return small
    many = st.builds(
        lambda count, width: {
            f"k{i:0{width}d}": f"v{i}" for i in range(min(count, MAX_REPEATED_BYTES // width))
        },
        st.sampled_from(MANY),
        st.sampled_from([1, 200]),
    )
    contexts = st.sampled_from(corpus.contexts) if corpus.contexts else small
    return st.one_of(small, small, contexts, many)


def _size_of(value: Any) -> int:
    if isinstance(value, Message):
        return value.ByteSize()
    return len(value) if isinstance(value, str | bytes) else 8


def _copies(value: Any, count: int) -> list[Any]:
    """``count`` copies of ``value``, fewer when they would pass MAX_REPEATED_BYTES."""
    return [value] * max(1, min(count, MAX_REPEATED_BYTES // max(_size_of(value), 1)))


def _repeated(field: FieldDescriptor, corpus: Corpus, depth: int) -> st.SearchStrategy[list[Any]]:
    element = _single_value(field, corpus, depth)
    copies = st.builds(_copies, element, st.sampled_from(MANY))
    if field.type == FieldDescriptor.TYPE_STRING:
        distinct = st.builds(
            lambda value, count: [f"{value}{i}" for i in range(len(_copies(value, count)))],
            element,
            st.sampled_from(MANY),
        )
        return st.one_of(st.lists(element, max_size=4), st.lists(element, max_size=4), copies, distinct)
    if field.type == FieldDescriptor.TYPE_MESSAGE and _message_type(field).full_name == "hsmstore.v1.Tag":
        tags = st.builds(
            lambda count, value: [pb.Tag(tag_key=f"k{i}", tag_value=value) for i in range(count)],
            st.sampled_from(MANY),
            st.sampled_from(["", "v", "v" * 256, "v" * 257]),
        )
        return st.one_of(st.lists(element, max_size=4), st.lists(element, max_size=4), copies, tags)
    return st.one_of(st.lists(element, max_size=4), st.lists(element, max_size=4), copies)


def _timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    return st.builds(
        lambda seconds, nanos: timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        st.one_of(st.sampled_from(TIMESTAMP_SECONDS), st.integers(INT64_MIN, INT64_MAX)),
        st.one_of(st.sampled_from(TIMESTAMP_NANOS), st.integers(INT32_MIN, INT32_MAX)),
    )


def _field_strategy(field: FieldDescriptor, corpus: Corpus, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(field):
        return _maps(field, corpus, depth)
    if field.is_repeated:
        return _repeated(field, corpus, depth)
    return _single_value(field, corpus, depth)


def _build(message_type: type[Message], values: dict[str, Any]) -> Message:
    message = message_type()
    for name, value in values.items():
        if value is None:
            continue
        field = cast(FieldDescriptor, message.DESCRIPTOR.fields_by_name[name])
        target = getattr(message, name) if field.is_repeated else None
        if _is_map(field):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)  # type: ignore[index]
                else:
                    target[key] = item  # type: ignore[index]
        elif target is not None:
            target.extend(value)
        elif isinstance(value, Message):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def message_strategy(descriptor: Descriptor, corpus: Corpus, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of this descriptor: every field unset or wild, or all plausible but one wild field.

    The second shape gets past validation (each field looks right and names
    what exists) so the one wild field reaches the deep paths behind it.
    """
    message_type = GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return _timestamps()
    if depth > 4:
        return st.just(message_type())
    wild = {field.name: st.none() | _field_strategy(field, corpus, depth) for field in descriptor.fields}
    plausible = {
        field.name: weighted((1, st.none()), (3, _plausible(field, corpus, depth)))
        for field in descriptor.fields
    }
    if not wild:
        return st.just(message_type())

    def one_wild(name: str) -> st.SearchStrategy[dict[str, Any]]:
        return _one_of_exclusive(st.fixed_dictionaries({**plausible, name: wild[name]}), name)

    return weighted(
        (1, st.fixed_dictionaries(wild)),
        (3, st.sampled_from(sorted(wild)).flatmap(one_wild)),
        (2, _one_of_exclusive(st.fixed_dictionaries(plausible), "")),
    ).map(lambda values: _build(message_type, values))


# key_store.proto, GenerateDataKeyRequest: "exactly one of this and key_spec".
EXCLUSIVE_FIELDS = ("number_of_bytes", "key_spec")


def _one_of_exclusive(
    values: st.SearchStrategy[dict[str, Any]], wild: str
) -> st.SearchStrategy[dict[str, Any]]:
    """Plausible values keep at most one of two exclusive fields (the wild one, if it is one of them)."""

    def keep_one(drawn: dict[str, Any], keep_first: bool) -> dict[str, Any]:
        if not all(name in drawn for name in EXCLUSIVE_FIELDS):
            return drawn
        if wild in EXCLUSIVE_FIELDS:
            keep_first = wild == EXCLUSIVE_FIELDS[0]
        return {**drawn, EXCLUSIVE_FIELDS[1 if keep_first else 0]: None}

    return st.builds(keep_one, values, st.booleans())


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn ``weight`` times as often as a weight of 1."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda chosen: chosen)


# ---------------------------------------------------------------- plausible values

PLAUSIBLE_INTS = {
    "limit": (1, 50),
    "max_results": (1, 50),
    "number_of_bytes": (1, 1024),
    "pending_window_in_days": (7, 30),
    "rotation_period_in_days": (90, 2560),
}
PLAUSIBLE_ENUM_LIKE = {
    "key_spec": ["AES_256", "AES_128", "SYMMETRIC_DEFAULT"],
    "key_usage": ["ENCRYPT_DECRYPT"],
    "origin": ["AWS_KMS"],
}
NAME_ALPHABET = string.ascii_letters + string.digits + "_-"


def _pick(values: Sequence[Any], fallback: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(list(values)) if values else fallback


def _plausible_enum_like(name: str) -> st.SearchStrategy[str]:
    for suffix, values in PLAUSIBLE_ENUM_LIKE.items():
        if name.endswith(suffix):
            return st.sampled_from(values)
    return st.just("")


def _plausible_string(name: str, corpus: Corpus) -> st.SearchStrategy[str]:
    short = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=12)
    own_keys = [*corpus.key_ids, *corpus.key_arns, *corpus.alias_names, *corpus.alias_arns]
    plausible: dict[str, Callable[[], st.SearchStrategy[str]]] = {
        "key_id": lambda: _pick(own_keys, short),
        "alias_name": lambda: _pick(corpus.alias_names, short) | short.map(lambda tail: "alias/fuzz-" + tail),
        "principal": lambda: _pick(corpus.principals, short),
        "policy": lambda: _pick(corpus.policies, short),
        "grant_id": lambda: _pick(corpus.grant_ids, short),
        "grant_token": lambda: _pick(corpus.grant_tokens, short),
        "marker": lambda: _pick(corpus.markers, short),
        "operation": lambda: st.sampled_from(OPERATIONS[:7]),
        "algorithm": lambda: st.just("SYMMETRIC_DEFAULT"),
        "enum_like": lambda: _plausible_enum_like(name),
        "attribute_key": lambda: st.sampled_from(LOOKUP_KEYS[:4]),
        "attribute_value": lambda: st.one_of(
            st.sampled_from(EVENT_NAMES), _pick(corpus.event_ids, short), _pick(own_keys, short)
        ),
        "tag_key": lambda: _pick(corpus.tag_keys, short) | short,
        "policy_name": lambda: _pick(corpus.policy_names, short),
        "via_service": lambda: st.just("fuzz"),
        "custom_key_store_id": lambda: st.just(""),
    }
    make = plausible.get(_field_kind(name))
    return short if make is None else make()


def _plausible_single(field: FieldDescriptor, corpus: Corpus, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in SCALAR_BITS:
        low, high = PLAUSIBLE_INTS.get(field.name, (0, 30))
        return st.integers(low, high)
    blobs = corpus.ciphertexts if field.name == "ciphertext_blob" else []
    by_type: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
        FieldDescriptor.TYPE_STRING: lambda: _plausible_string(field.name, corpus),
        FieldDescriptor.TYPE_BYTES: lambda: _pick(blobs, st.binary(min_size=1, max_size=64)),
        FieldDescriptor.TYPE_BOOL: st.booleans,
        FieldDescriptor.TYPE_FLOAT: lambda: st.floats(0, 100),
        FieldDescriptor.TYPE_DOUBLE: lambda: st.floats(0, 100),
        FieldDescriptor.TYPE_ENUM: lambda: st.sampled_from(_enum_numbers(field)),
    }
    make = by_type.get(kind)
    if make is not None:
        return make()
    if _message_type(field).full_name == "google.protobuf.Timestamp":
        return st.integers(1_700_000_000, 1_900_000_000).map(lambda s: timestamp_pb2.Timestamp(seconds=s))
    return message_strategy(_message_type(field), corpus, depth + 1)


def _plausible(field: FieldDescriptor, corpus: Corpus, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(field):
        small = st.dictionaries(
            st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=8),
            st.text(alphabet=NAME_ALPHABET, max_size=8),
            max_size=3,
        )
        return st.one_of(_pick(corpus.contexts, small), small)
    element = _plausible_single(field, corpus, depth)
    if field.is_repeated:
        return st.lists(element, max_size=3)
    return element


# ---------------------------------------------------------------- raw bytes


def _varint(value: int) -> bytes:
    value &= UINT64_MAX
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def crafted_chunks(descriptor: Descriptor) -> list[bytes]:
    """Wire snippets a generator would rarely hit by flipping bits: each one a parser edge."""
    chunks = [
        _tag(1, 0) + b"\xff" * 10 + b"\x01",  # a varint longer than 10 bytes
        _tag(1, 2) + b"\xff\xff\xff\xff\x0f",  # a 4 GiB length prefix
        _tag(1, 2) + b"\xff" * 9 + b"\x01",  # a negative length
        b"\x00\x01",  # field number 0
        b"\x0e\x00",  # wire type 6
        b"\x0f\x00",  # wire type 7
        _tag(99, 3),  # a group that never ends
        _tag(99, 4),  # an end-group with no start
        _tag(99, 3) * 200 + _tag(99, 4) * 200,  # groups nested past the recursion limit
        _tag(536870911, 0) + b"\x01",  # the largest field number
        _tag(19000, 0) + b"\x01",  # a reserved field number
        _tag(99, 5) + b"\x00\x00",  # a truncated fixed32
    ]
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            chunks.append(_tag(field.number, 2) + b"\x02\xc3\x28")  # invalid UTF-8
            chunks.append(_tag(field.number, 2) + b"\x03\xed\xa0\x80")  # an encoded surrogate
            chunks.append(_tag(field.number, 0) + b"\x01")  # a varint where a string belongs
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            nested = b""
            for _ in range(120):  # deeper than protobuf's default recursion limit of 100
                nested = _tag(field.number, 2) + _varint(len(nested)) + nested
            chunks.append(nested)
            chunks.append(_tag(field.number, 2) + b"\x05\x0a\x03abc")  # a length that cuts its content
        elif field.type in SCALAR_BITS or field.type == FieldDescriptor.TYPE_BOOL:
            chunks.append(_tag(field.number, 0) + b"\xff" * 9 + b"\x01")  # 2**64 - 1 in an int32
            chunks.append(_tag(field.number, 2) + b"\x01\x01")  # a length-delimited int
    return chunks


MUTATIONS = ("flip", "set", "insert", "delete", "truncate", "duplicate", "append", "splice")


def mutate(body: bytes, operations: Sequence[tuple[str, int, int, bytes]]) -> bytes:
    """Apply byte-level mutations; positions wrap around the current length."""
    data = bytearray(body)
    for kind, position, length, chunk in operations:
        at = position % (len(data) + 1)
        if kind == "flip" and data:
            data[at % len(data)] ^= 1 << (length % 8)
        elif kind == "set" and data:
            data[at % len(data)] = (0x00, 0xFF, 0x80, 0x7F, 0x01)[length % 5]
        elif kind == "insert":
            data[at:at] = chunk
        elif kind == "delete":
            del data[at : at + max(length, 1)]
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate":
            data[at:at] = data[at : at + max(length, 1)]
        elif kind == "append":
            data += chunk
        elif kind == "splice":
            data[at : at + len(chunk)] = chunk
    return bytes(data)


def _raw_plans(rpc: Rpc, corpus: Corpus) -> st.SearchStrategy[Plan]:
    descriptor = rpc.descriptor
    chunks = st.one_of(st.binary(min_size=1, max_size=16), st.sampled_from(crafted_chunks(descriptor)))
    operations = st.lists(
        st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 2**16), st.integers(0, 64), chunks),
        min_size=1,
        max_size=4,
    )

    def mutated(message: Message, ops: list[tuple[str, int, int, bytes]]) -> Plan:
        names = tuple(
            f"{kind}@{position}:{length}:{chunk[:24].hex()}" for kind, position, length, chunk in ops
        )
        return Plan(rpc, mutate(message.SerializeToString(), ops), message, names)

    random_bodies = st.binary(max_size=256).map(lambda body: Plan(rpc, body, None, ("random",)))
    return st.one_of(
        st.builds(mutated, message_strategy(descriptor, corpus), operations),
        st.builds(mutated, message_strategy(descriptor, corpus), operations),
        random_bodies,
    )


def _structured_plans(rpc: Rpc, corpus: Corpus) -> st.SearchStrategy[Plan]:
    return message_strategy(rpc.descriptor, corpus).map(
        lambda message: Plan(rpc, message.SerializeToString(), message)
    )


def _spare_the_admin(plan: Plan) -> Plan:
    """PutIdentityPolicy on the caller's own ``role/admin`` goes to carol instead.

    In the plaintext dev mode every request is the local admin's; a fuzzed
    policy put on that principal rightly locks out every later request
    (AccessDeniedException, even for ListIdentityPolicies), and the rest of the
    run would test nothing behind authorization.
    """
    message = plan.message
    if not isinstance(message, pb.PutIdentityPolicyRequest) or ":role/admin" not in message.principal.lower():
        return plan
    spared = pb.PutIdentityPolicyRequest()
    spared.CopyFrom(message)
    spared.principal = CAROL
    body = (
        spared.SerializeToString()
        if not plan.mutations
        else plan.body.replace(message.principal.encode(), CAROL.encode())
    )
    return Plan(plan.rpc, body, spared, plan.mutations)


def plans(rpcs: Sequence[Rpc], corpus: Corpus, raw_share: int = 6) -> st.SearchStrategy[Plan]:
    """A request to some RPC: structured, or (1 in ``raw_share``) a mutated body."""
    per_rpc: dict[str, st.SearchStrategy[Plan]] = {}
    for rpc in rpcs:
        structured = _structured_plans(rpc, corpus).map(_spare_the_admin)
        raw = _raw_plans(rpc, corpus).map(_spare_the_admin)
        per_rpc[rpc.path] = weighted((raw_share - 1, structured), (1, raw))
    pick: Callable[[Rpc], st.SearchStrategy[Plan]] = lambda rpc: per_rpc[rpc.path]  # noqa: E731
    return st.sampled_from(list(rpcs)).flatmap(pick)


@cache
def rpc_by_label() -> dict[str, Rpc]:
    return {rpc.label: rpc for rpc in all_rpcs()}
