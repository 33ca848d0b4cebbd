"""Write ``types.py`` and ``_methods.py`` from the proto descriptors: ``python -m hsmstore.client.codegen``.

Issue 20: "a typed KeyStoreClient (every RPC, Python types in and out, no
_proto import needed)". The result dataclasses and one method per RPC are
generated from ``proto/hsmstore/v1/key_store.proto`` (through the committed
``_proto`` code), so a new RPC cannot be forgotten:
``tests/unit/test_client_codegen.py`` fails when the committed files differ
from what this script writes, or when an RPC has no method.

Names: a message ``XResponse`` becomes the dataclass ``XResult``; other messages
keep their names (``KeyMetadata``, ``Tag``); an empty response returns None.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from hsmstore._proto.hsmstore.v1 import key_store_pb2
from hsmstore.client.codegen_names import is_idempotent, snake

SERVICES = ("KeyStore", "Admin", "Audit")
# Issue 23: a data key pair's private key and an ECDH secret are plaintext too.
SECRET_FIELDS = frozenset({"plaintext", "key_store_password", "private_key_plaintext", "shared_secret"})
Field = Any  # protobuf's stubs type descriptor fields as the Python or the upb class
TIMESTAMP = "google.protobuf.Timestamp"
HERE = Path(__file__).parent
TYPES_FILE = HERE / "types.py"
METHODS_FILE = HERE / "_methods.py"


_SCALARS = {
    FieldDescriptor.TYPE_STRING: ("str", '""'),
    FieldDescriptor.TYPE_BYTES: ("bytes", 'b""'),
    FieldDescriptor.TYPE_BOOL: ("bool", "False"),
    FieldDescriptor.TYPE_INT32: ("int", "0"),
    FieldDescriptor.TYPE_INT64: ("int", "0"),
    FieldDescriptor.TYPE_UINT32: ("int", "0"),
    FieldDescriptor.TYPE_DOUBLE: ("float", "0.0"),
}


def dataclass_name(message: Descriptor) -> str:
    name = message.name
    return name[: -len("Response")] + "Result" if name.endswith("Response") else name


def _is_map(field: Field) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_repeated(field: Field) -> bool:
    return bool(field.is_repeated)


@dataclass(frozen=True)
class _Rpc:
    service: str
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return str(self.method.name)

    @property
    def returns_nothing(self) -> bool:
        return not self.method.output_type.fields


def rpcs() -> list[_Rpc]:
    found = []
    for service in SERVICES:
        for method in key_store_pb2.DESCRIPTOR.services_by_name[service].methods:
            found.append(_Rpc(service, method))
    return found


def result_messages() -> list[Descriptor]:
    """Every message an answer carries, and the ones a request nests (Tag, GrantConstraints)."""
    seen: dict[str, Descriptor] = {}

    def visit(message: Descriptor) -> None:
        if message.full_name in seen or message.full_name == TIMESTAMP or message.GetOptions().map_entry:
            return
        for field in message.fields:
            if field.message_type is not None:
                visit(field.message_type)
        seen[message.full_name] = message

    for rpc in rpcs():
        if not rpc.returns_nothing:
            visit(rpc.method.output_type)
        for field in rpc.method.input_type.fields:
            if field.message_type is not None:
                visit(field.message_type)
    return list(seen.values())


def _result_type(field: Field) -> tuple[str, str]:
    """The annotation and default of a result field."""
    if _is_map(field):
        return "Mapping[str, str]", "field(default_factory=dict)"
    if field.message_type is not None:
        inner = (
            "datetime" if field.message_type.full_name == TIMESTAMP else dataclass_name(field.message_type)
        )
        if _is_repeated(field):
            return f"tuple[{inner}, ...]", "()"
        return f"{inner} | None", "None"
    python, default = _SCALARS[field.type]
    if _is_repeated(field):
        return f"tuple[{python}, ...]", "()"
    if field.has_presence:
        return f"{python} | None", "None"
    return python, default


def _argument_type(field: Field) -> str:
    if _is_map(field):
        return "Mapping[str, str]"
    if field.message_type is not None:
        if field.message_type.full_name == TIMESTAMP:
            return "datetime"
        inner = dataclass_name(field.message_type)
        if _is_repeated(field):
            if inner == "Tag":
                return "Mapping[str, str] | Sequence[Tag]"
            return f"Sequence[{inner}]"
        return inner
    python = _SCALARS[field.type][0]
    return f"Sequence[{python}]" if _is_repeated(field) else python


def render_types() -> str:
    lines = [
        '"""Results of hsmstore calls as frozen dataclasses (generated: python -m hsmstore.client.codegen).',
        "",
        "Fields are the proto's (docs/api.md: the AWS parameter names in snake_case);",
        "timestamps are aware datetimes in UTC; an unset message or optional number is None.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Mapping",
        "from dataclasses import dataclass, field",
        "from datetime import datetime",
        "",
    ]
    messages = result_messages()
    lines += ["# What hsmstore.client re-exports: every result type, as generated.", "__all__ = ["]
    lines += [f'    "{name}",' for name in sorted(dataclass_name(message) for message in messages)]
    lines += ["]", ""]
    for message in messages:
        lines += ["", "@dataclass(frozen=True)", f"class {dataclass_name(message)}:"]
        lines.append(f'    """``hsmstore.v1.{message.name}``."""')
        lines.append("")
        for message_field in message.fields:
            annotation, default = _result_type(message_field)
            if message_field.name in SECRET_FIELDS:  # never in a repr, so never in a log line
                default = f"field(default={default}, repr=False)"
            lines.append(f"    {message_field.name}: {annotation} = {default}")
        lines.append("")
    lines += [
        "",
        "# proto full name -> dataclass, for the converter (_convert.py).",
        "DATACLASSES: dict[str, type] = {",
    ]
    lines += [f'    "{message.full_name}": {dataclass_name(message)},' for message in messages]
    lines.append("}")
    lines.append("")
    return "\n".join(lines)


def _paging(rpc: _Rpc) -> tuple[str, str, str, FieldDescriptor] | None:
    """(request marker, response marker, items field, the item field) of a paged list call."""
    request_fields = rpc.method.input_type.fields_by_name
    response_fields = rpc.method.output_type.fields_by_name
    for request_marker, response_marker in (("marker", "next_marker"), ("next_token", "next_token")):
        if request_marker in request_fields and response_marker in response_fields:
            items = [f for f in rpc.method.output_type.fields if _is_repeated(f) and not _is_map(f)]
            if len(items) == 1:
                return request_marker, response_marker, items[0].name, items[0]
    return None


def render_methods() -> str:
    names = sorted({dataclass_name(m) for m in result_messages()})
    lines = [
        '"""One method per RPC of KeyStore, Admin and Audit.',
        "",
        "Generated by python -m hsmstore.client.codegen from the proto descriptors; do not edit.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Iterator, Mapping, Sequence",
        "from datetime import datetime",
        "from typing import Any, cast",
        "",
        "from hsmstore.client.types import (",
        *[f"    {name}," for name in names],
        ")",
        "",
        "",
        "class GeneratedMethods:",
        '    """Keyword arguments are the request fields; None leaves a field unset.',
        "",
        "    An unset field takes the server's default, as an absent member does in AWS KMS.",
        '    """',
        "",
        "    def _invoke(self, service: str, rpc: str, fields: dict[str, Any]) -> Any:",
        "        raise NotImplementedError",
        "",
        "    def _paginate(",
        "        self,",
        "        service: str,",
        "        rpc: str,",
        "        fields: dict[str, Any],",
        "        marker: str,",
        "        next_marker: str,",
        "        items: str,",
        "    ) -> Iterator[Any]:",
        "        raise NotImplementedError",
        "",
    ]
    for rpc in rpcs():
        fields = list(rpc.method.input_type.fields)
        params = [f"{f.name}: {_argument_type(f)} | None = None" for f in fields]
        signature = ", ".join(["self", "*", *params]) if params else "self"
        returns = "None" if rpc.returns_nothing else dataclass_name(rpc.method.output_type)
        values = ", ".join(f'"{f.name}": {f.name}' for f in fields)
        retried = "retried (stateless)" if is_idempotent(rpc.name) else "never retried"
        lines += [
            f"    def {snake(rpc.name)}({signature}) -> {returns}:",
            f'        """{rpc.service}.{rpc.name}: {retried}."""',
            (
                f'        self._invoke("{rpc.service}", "{rpc.name}", {{{values}}})'
                if rpc.returns_nothing
                else f"        return cast({returns}, "
                f'self._invoke("{rpc.service}", "{rpc.name}", {{{values}}}))'
            ),
            "",
        ]
        paging = _paging(rpc)
        if paging is None:
            continue
        marker, next_marker, items, item_field = paging
        item_type = _result_type(item_field)[0].removeprefix("tuple[").removesuffix(", ...]")
        page_params = [p for p, f in zip(params, fields, strict=True) if f.name not in (marker, "limit")]
        page_signature = ", ".join(["self", "*", *page_params]) if page_params else "self"
        page_values = ", ".join(f'"{f.name}": {f.name}' for f in fields if f.name not in (marker, "limit"))
        lines += [
            f"    def paginate_{snake(rpc.name)}({page_signature}) -> Iterator[{item_type}]:",
            f'        """Every {items} entry of {rpc.name}, page after page (follows {next_marker})."""',
            f'        return self._paginate("{rpc.service}", "{rpc.name}", {{{page_values}}}, "{marker}", '
            f'"{next_marker}", "{items}")',
            "",
        ]
    body = "\n".join(lines)
    unused = [name for name in names if not re.search(rf"\b{name}\b", body.split(")\n", 1)[1])]
    return "\n".join(line for line in lines if line.strip().rstrip(",") not in unused)


def formatted(source: str, path: Path) -> str:
    """As ``ruff format`` writes it, so the committed file is lint-clean and comparable."""
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run(
        [str(ruff), "format", "--stdin-filename", str(path), "-"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def main() -> int:
    TYPES_FILE.write_text(formatted(render_types(), TYPES_FILE))
    METHODS_FILE.write_text(formatted(render_methods(), METHODS_FILE))
    print(f"wrote {TYPES_FILE} and {METHODS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
