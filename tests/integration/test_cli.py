"""`hsmstore kms ...` against a real server: aws-cli's argument forms and output, paging, exit codes.

Issue 20, "The `kms` CLI as aws-cli users expect". The request-level
comparison with aws-cli is tests/unit/test_cli_aws_parity.py; here the server
is real, and so is ``aws kms`` (over ``--aws-listen``) where a test checks that
what one CLI made the other can use.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module, with the AWS JSON endpoint too, for ``aws kms``."""
    with ServerProcess(tmp_path_factory.mktemp("cli"), ["--aws-listen", "127.0.0.1:0"]) as running:
        yield running


def aws(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "aws"), "kms", *args]
    command += ["--endpoint-url", server.aws_url, "--region", "eu-west-1", "--output", "json"]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",  # the dev server's local test key (docs/api.md, "AWS JSON protocol")
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def kms(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSMSTORE_ENDPOINT": server.address}
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", "kms", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_create_encrypt_decrypt_through_the_cli(server: ServerProcess, tmp_path: Path) -> None:
    created = kms(server, "create-key", "--description", "from the cli")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["KeyMetadata"]["KeyId"]

    plaintext_file = tmp_path / "plain.bin"
    plaintext_file.write_bytes(b"\x00\x01binary secret\xff")
    encrypted = kms(
        server,
        "encrypt",
        "--key-id",
        key_id,
        "--plaintext",
        f"fileb://{plaintext_file}",
        "--encryption-context",
        "app=cli",
        "purpose=test",
    )
    assert encrypted.returncode == 0, encrypted.stderr
    blob = base64.b64decode(json.loads(encrypted.stdout)["CiphertextBlob"])
    blob_file = tmp_path / "blob.bin"
    blob_file.write_bytes(blob)

    decrypted = kms(
        server,
        "decrypt",
        "--ciphertext-blob",
        f"fileb://{blob_file}",
        "--encryption-context",
        "purpose=test",
        "app=cli",
    )
    assert decrypted.returncode == 0, decrypted.stderr
    assert base64.b64decode(json.loads(decrypted.stdout)["Plaintext"]) == plaintext_file.read_bytes()


def test_every_key_store_rpc_has_a_cli_command(server: ServerProcess) -> None:
    from hsmstore.cli.kms import SERVICE, command_name

    for method in SERVICE.methods:
        helped = kms(server, command_name(method.name), "--help")
        assert helped.returncode == 0, (method.name, helped.stderr)


def test_service_error_prints_the_reason_and_exits_254(server: ServerProcess) -> None:
    described = kms(server, "describe-key", "--key-id", "alias/does-not-exist")
    assert described.returncode == 254
    assert json.loads(described.stderr)["Error"]["Code"] == "NotFoundException"


def test_generate_random_base64_input_and_output(server: ServerProcess) -> None:
    generated = kms(server, "generate-random", "--number-of-bytes", "24")
    assert generated.returncode == 0, generated.stderr
    assert len(base64.b64decode(json.loads(generated.stdout)["Plaintext"])) == 24


def test_serve_refuses_a_public_listen_address_without_tls(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsmstore.cli.main",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "without TLS" in result.stderr


def test_a_client_certificate_without_its_key_is_one_line_and_exit_2(server: ServerProcess) -> None:
    """The client SDK's own setup error reaches the CLI as a usage error, not a traceback."""
    result = kms(server, "--cert", "client.pem", "list-keys")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hsmstore: a client certificate and its key go together (--cert and --key)"
    ]


# ------------------------------------------------------------------ aws-cli's forms and output


def created_key(server: ServerProcess, *args: str) -> str:
    created = kms(server, "create-key", *args, "--query", "KeyMetadata.KeyId", "--output", "text")
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def test_a_shorthand_context_from_hsmstore_kms_decrypts_with_aws_kms_given_the_same_shorthand(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Issue 20: `--encryption-context app=orders,env=dev` was one pair, so a later decrypt failed."""
    key_id = created_key(server)
    (tmp_path / "plain").write_bytes(b"orders secret")
    encrypted = kms(
        server,
        "encrypt",
        "--key-id",
        key_id,
        "--plaintext",
        f"fileb://{tmp_path / 'plain'}",
        "--encryption-context",
        "app=orders,env=dev",
        "--query",
        "CiphertextBlob",
        "--output",
        "text",
    )
    assert encrypted.returncode == 0, encrypted.stderr
    (tmp_path / "blob").write_bytes(base64.b64decode(encrypted.stdout.strip()))
    decrypted = aws(
        server,
        "decrypt",
        "--ciphertext-blob",
        f"fileb://{tmp_path / 'blob'}",
        "--encryption-context",
        "app=orders,env=dev",
    )
    assert decrypted.returncode == 0, decrypted.stderr
    assert base64.b64decode(json.loads(decrypted.stdout)["Plaintext"]) == b"orders secret"
    one_pair = aws(
        server,
        "decrypt",
        "--ciphertext-blob",
        f"fileb://{tmp_path / 'blob'}",
        "--encryption-context",
        "app=orders",
    )
    assert one_pair.returncode != 0 and "InvalidCiphertextException" in one_pair.stderr


def test_tags_in_shorthand_and_json_are_the_tags_aws_kms_lists(server: ServerProcess) -> None:
    shorthand_key = created_key(server, "--tags", "TagKey=team,TagValue=payments", "TagKey=env,TagValue=dev")
    json_key = created_key(
        server, "--tags", '[{"TagKey": "team", "TagValue": "payments"}, {"TagKey": "env", "TagValue": "dev"}]'
    )
    expected = [{"TagKey": "env", "TagValue": "dev"}, {"TagKey": "team", "TagValue": "payments"}]
    for key_id in (shorthand_key, json_key):
        listed = aws(server, "list-resource-tags", "--key-id", key_id)
        assert listed.returncode == 0, listed.stderr
        assert sorted(json.loads(listed.stdout)["Tags"], key=lambda tag: tag["TagKey"]) == expected


def test_the_output_of_describe_key_is_aws_kms_output(server: ServerProcess) -> None:
    """Same member names, same false booleans, same values, for the same key."""
    key_id = created_key(server, "--description", "compare")
    assert kms(server, "disable-key", "--key-id", key_id).returncode == 0
    ours = json.loads(kms(server, "describe-key", "--key-id", key_id).stdout)["KeyMetadata"]
    theirs = json.loads(aws(server, "describe-key", "--key-id", key_id).stdout)["KeyMetadata"]
    assert ours["Enabled"] is False
    shared = set(ours) & set(theirs)
    assert {
        "KeyId",
        "Arn",
        "Enabled",
        "KeyState",
        "Description",
        "KeyUsage",
        "KeySpec",
        "MultiRegion",
    } <= shared
    assert {name: ours[name] for name in shared} == {name: theirs[name] for name in shared}


def test_list_keys_pages_through_everything(server: ServerProcess) -> None:
    for _ in range(5):
        created_key(server)
    everything = json.loads(aws(server, "list-keys").stdout)["Keys"]
    assert len(everything) >= 5
    paged = kms(server, "list-keys", "--page-size", "2")
    assert paged.returncode == 0, paged.stderr
    assert json.loads(paged.stdout) == {"Keys": everything}


def test_no_paginate_is_one_page_with_its_marker(server: ServerProcess) -> None:
    for _ in range(3):
        created_key(server)
    page = json.loads(kms(server, "list-keys", "--page-size", "2", "--no-paginate").stdout)
    assert len(page["Keys"]) == 2
    assert page["Truncated"] is True and page["NextMarker"]


def test_max_items_prints_a_next_token_that_resumes(server: ServerProcess) -> None:
    for _ in range(3):
        created_key(server)
    everything = json.loads(kms(server, "list-keys").stdout)["Keys"]
    first = json.loads(kms(server, "list-keys", "--max-items", "3", "--page-size", "2").stdout)
    assert first["Keys"] == everything[:3]
    rest = json.loads(kms(server, "list-keys", "--starting-token", first["NextToken"]).stdout)
    assert first["Keys"] + rest["Keys"] == everything
    assert "NextToken" not in rest


def test_global_options_after_the_operation(server: ServerProcess) -> None:
    key_id = created_key(server)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "hsmstore.cli.main", "kms", "describe-key", "--key-id", key_id),
            *("--endpoint", server.address, "--query", "KeyMetadata.KeyId", "--output", "text"),
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "HSMSTORE_ENDPOINT"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{key_id}\n"


def test_text_and_table_output(server: ServerProcess) -> None:
    key_id = created_key(server)
    text = kms(server, "describe-key", "--key-id", key_id, "--output", "text")
    assert text.stdout.splitlines()[0].startswith("KEYMETADATA\t") and "\tTrue\t" in text.stdout
    table = kms(server, "describe-key", "--key-id", key_id, "--output", "table")
    assert "|" in table.stdout and "DescribeKey" in table.stdout.splitlines()[1]
    assert key_id in table.stdout
