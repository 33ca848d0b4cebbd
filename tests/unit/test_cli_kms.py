"""``hsmstore kms`` without a server: flags, help, required marks, paging, output shapes, imports.

Issue 20, "The `kms` CLI as aws-cli users expect": global options before or
after the operation, help text for every flag and a "required" mark,
automatic paging with --no-paginate/--max-items, booleans always present,
`hsmstore --version`; and "the client installs without the server".
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.cli import kms as kms_module
from hsmstore.cli.kms import ADMIN_SERVICE, REQUIRED, SERVICE, command_name
from hsmstore.cli.kms_shapes import aws_name, printable
from hsmstore.cli.main import build_parser, main
from hsmstore.client import KeyStoreClient


def kms_args(*argv: str) -> argparse.Namespace:
    return build_parser(server_commands=False).parse_args(["kms", *argv])


def snake(member: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", member).lower().replace("a_w_s", "aws")


# -- required marks and help ---------------------------------------------------------------


def test_the_required_parameters_are_aws_kms_required_members() -> None:
    """The CLI's table is held to botocore's KMS model here, not read from it at run time
    (botocore is a dev dependency only)."""
    botocore_session = pytest.importorskip("botocore.session")
    model = botocore_session.get_session().get_service_model("kms")
    for method in SERVICE.methods:
        if method.name not in model.operation_names:
            continue
        fields = {field.name for field in method.input_type.fields}
        aws_required = {snake(m) for m in model.operation_model(method.name).input_shape.required_members}
        assert aws_required <= fields, method.name
        assert REQUIRED.get(method.name, frozenset()) == aws_required, method.name


def test_the_request_members_are_aws_kms_member_names() -> None:
    """Every flag of an RPC AWS has becomes the member AWS names (or is an hsmstore addition)."""
    botocore_session = pytest.importorskip("botocore.session")
    model = botocore_session.get_session().get_service_model("kms")
    hsmstore_only = {"pkcs11_module", "hsm_profile", "token_label", "token_serial"}  # custom key stores
    for method in SERVICE.methods:
        if method.name in model.operation_names:
            members = set(model.operation_model(method.name).input_shape.members)
            for field in method.input_type.fields:
                assert aws_name(field) in members or field.name in hsmstore_only, (method.name, field.name)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def operation_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser(server_commands=False)
    found = []
    for command in ("kms", "admin"):
        service = subcommands(parser)[command]
        operations = subcommands(service)
        found += [(f"{command} {name}", sub) for name, sub in operations.items()]
    return found


def test_every_flag_has_help_and_each_required_one_is_marked() -> None:
    by_command = {f"kms {command_name(m.name)}": m for m in SERVICE.methods}
    by_command |= {f"admin {command_name(m.name)}": m for m in ADMIN_SERVICE.methods}
    for name, parser in operation_parsers():
        method = by_command[name]
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            assert action.help, (name, action.option_strings)
            required = action.dest in REQUIRED.get(method.name, ()) and not action.option_strings[
                0
            ].startswith("--no-")
            assert action.help.startswith("[required]") == required, (name, action.option_strings)


def test_help_shows_the_required_mark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        kms_args("encrypt", "--help")
    shown = capsys.readouterr().out
    assert re.search(r"--key-id TEXT\s+\[required\]", shown)
    assert re.search(r"--plaintext fileb://PATH\|BASE64\s+\[required\]", shown)
    assert "--encryption-context KEY=VALUE,..." in shown


def test_a_missing_required_flag_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kms", "describe-key", "--endpoint", "127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "hsmstore kms describe-key: the following arguments are required: --key-id"
    ]


def test_version_is_the_installed_package_version() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", "--version"], capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == f"hsmstore {importlib.metadata.version('hsmstore')}"


# -- global options ------------------------------------------------------------------------


def test_global_options_are_read_after_the_operation() -> None:
    args = kms_args(
        "describe-key", "--key-id", "K", "--endpoint", "h:1", "--output", "table", "--query", "a.b"
    )
    assert (args.endpoint, args.output, args.query, args.key_id) == ("h:1", "table", "a.b", "K")


def test_global_options_are_read_before_the_operation_and_the_later_one_wins() -> None:
    before = kms_args("--endpoint-url", "h:1", "--no-paginate", "list-keys")
    assert (before.endpoint, before.no_paginate) == ("h:1", True)
    both = kms_args("--endpoint", "h:1", "list-keys", "--endpoint", "h:2", "--max-items", "3")
    assert (both.endpoint, both.max_items) == ("h:2", 3)


def test_tls_files_are_global_options_too() -> None:
    args = kms_args("list-keys", "--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem")
    assert (args.ca, args.cert, args.key) == ("ca.pem", "c.pem", "k.pem")


def test_a_boolean_has_a_no_form() -> None:
    assert (
        kms_args("create-key", "--bypass-policy-lockout-safety-check").bypass_policy_lockout_safety_check
        is True
    )
    assert (
        kms_args("create-key", "--no-bypass-policy-lockout-safety-check").bypass_policy_lockout_safety_check
        is False
    )
    assert kms_args("create-key").bypass_policy_lockout_safety_check is None


def test_generate_cli_skeleton_prints_the_aws_member_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kms", "encrypt", "--generate-cli-skeleton"]) == 0
    skeleton = json.loads(capsys.readouterr().out)
    assert {"KeyId", "Plaintext", "EncryptionContext", "GrantTokens"} <= set(skeleton)


# -- a fake server at the channel ---------------------------------------------------------


class CannedChannel:
    """A gRPC channel whose RPCs are Python functions of the request (a fake server for
    KeyStoreClient, which the CLI calls through); records every request."""

    def __init__(self, **rpcs: Callable[[Any], Any]) -> None:
        self.rpcs = rpcs
        self.requests: list[Any] = []

    def unary_unary(self, path: str, **_: Any) -> Callable[..., Any]:
        rpc = self.rpcs[path.rsplit("/", 1)[1]]

        def call(request: Any, timeout: float | None = None) -> Any:
            self.requests.append(request)
            return rpc(request)

        return call

    def close(self) -> None:
        pass


@pytest.fixture
def channel(monkeypatch: pytest.MonkeyPatch) -> CannedChannel:
    canned = CannedChannel(DescribeKey=describe_key, ListKeys=list_keys)

    def client(endpoint: str, **options: Any) -> Any:
        return KeyStoreClient(endpoint, **options, channel=canned)

    monkeypatch.setattr(kms_module, "KeyStoreClient", client)
    return canned


def describe_key(request: Any) -> Any:
    metadata = pb.KeyMetadata(
        key_id=request.key_id, aws_account_id="local", enabled=False, key_state="PENDING_DELETION"
    )
    metadata.deletion_date.FromSeconds(1_700_000_000)
    return pb.DescribeKeyResponse(key_metadata=metadata)


KEYS = [f"k{i}" for i in range(7)]


def list_keys(request: Any) -> Any:
    """Markers are offsets; the default page is 2 keys."""
    start = int(request.marker or 0)
    end = min(start + (request.limit if request.HasField("limit") else 2), len(KEYS))
    truncated = end < len(KEYS)
    return pb.ListKeysResponse(
        keys=[pb.KeyListEntry(key_id=k) for k in KEYS[start:end]],
        truncated=truncated,
        next_marker=str(end) if truncated else "",
    )


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main(["kms", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_disabled_keys_enabled_is_false_not_missing(
    channel: CannedChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: `jq .enabled` was null for a disabled key (false booleans were dropped)."""
    shown = printed(capsys, "describe-key", "--key-id", "k")["KeyMetadata"]
    assert shown["Enabled"] is False
    assert shown["MultiRegion"] is False
    assert shown["KeyState"] == "PendingDeletion"  # AWS's spelling
    assert shown["AWSAccountId"] == "local"
    assert shown["DeletionDate"] == 1_700_000_000.0  # epoch seconds, as aws-cli 1.x prints them
    assert "CustomKeyStoreId" not in shown


def test_query_and_text_output_of_a_call(channel: CannedChannel, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["describe-key", "--key-id", "k", "--query", "KeyMetadata.[KeyId, Enabled]", "--output", "text"]
    assert main(["kms", *argv]) == 0
    assert capsys.readouterr().out == "k\tFalse\n"


def test_blobs_are_printed_in_base64() -> None:
    assert printable({"CiphertextBlob": b"\x00\xff"}) == {
        "CiphertextBlob": base64.b64encode(b"\x00\xff").decode()
    }


def listed(result: dict[str, Any]) -> list[str]:
    return [entry["KeyId"] for entry in result["Keys"]]


def test_list_calls_are_paged_through_and_merged(
    channel: CannedChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    result = printed(capsys, "list-keys")
    assert listed(result) == KEYS
    assert set(result) == {"Keys"}  # no NextMarker, Truncated or NextToken, as aws-cli prints it
    assert [request.marker for request in channel.requests] == ["", "2", "4", "6"]


def test_page_size_is_the_limit_of_each_call(
    channel: CannedChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    assert listed(printed(capsys, "list-keys", "--page-size", "3")) == KEYS
    assert [request.limit for request in channel.requests] == [3, 3, 3]


def test_no_paginate_prints_one_page_as_sent(
    channel: CannedChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    result = printed(capsys, "list-keys", "--no-paginate")
    assert result == {"Keys": [{"KeyId": "k0"}, {"KeyId": "k1"}], "NextMarker": "2", "Truncated": True}


def test_an_explicit_marker_turns_paging_off(
    channel: CannedChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    assert listed(printed(capsys, "list-keys", "--marker", "4")) == ["k4", "k5"]


def test_max_items_stops_and_the_next_token_resumes_where_it_stopped(
    channel: CannedChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    first = printed(capsys, "list-keys", "--max-items", "3")
    assert listed(first) == KEYS[:3]
    rest = printed(capsys, "list-keys", "--starting-token", first["NextToken"])
    assert listed(rest) == KEYS[3:]
    assert "NextToken" not in rest


def test_max_items_at_a_page_boundary_resumes_at_the_next_page(
    channel: CannedChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    first = printed(capsys, "list-keys", "--max-items", "4")
    assert json.loads(base64.b64decode(first["NextToken"])) == {"Marker": "4"}
    assert "NextToken" not in printed(capsys, "list-keys", "--max-items", "7")


def test_a_starting_token_that_is_not_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kms", "list-keys", "--starting-token", "nonsense!", "--endpoint", "127.0.0.1:9"]) == 2
    assert "--starting-token" in capsys.readouterr().err


# -- imports -------------------------------------------------------------------------------


def test_the_client_commands_import_no_server_module() -> None:
    """`pip install hsmstore` has no python-pkcs11, SQLAlchemy or psycopg (issue 20)."""
    script = (
        "import sys\n"
        "import hsmstore.cli.main, hsmstore.cli.kms\n"
        "hsmstore.cli.main.build_parser(server_commands=False).parse_args(['kms', 'list-keys'])\n"
        "server = {'pkcs11', 'sqlalchemy', 'psycopg', 'alembic'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & server))\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv", [["serve"], ["audit", "verify"], ["db", "upgrade"], ["backup", "--output", "x"]]
)
def test_a_server_command_without_the_server_extra_says_how_to_get_it(argv: list[str]) -> None:
    script = (
        "import sys\n"
        "for name in ('pkcs11', 'sqlalchemy', 'psycopg', 'alembic'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "from hsmstore.cli.main import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 2, shown.stderr
    assert shown.stderr.splitlines() == [
        f"hsmstore {argv[0]} needs the server extra: pip install 'hsmstore[server]'"
    ]


def test_the_kms_cli_works_without_the_server_extra() -> None:
    script = (
        "import sys\n"
        "for name in ('pkcs11', 'sqlalchemy', 'psycopg', 'alembic'):\n"
        "    sys.modules[name] = None\n"
        "from hsmstore.cli.main import main\n"
        "sys.exit(main(['kms', 'encrypt', '--generate-cli-skeleton']))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert "KeyId" in json.loads(shown.stdout)
