"""`hsmstore kms ...` against a real server: JSON out, fileb:// in, AWS CLI exit codes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import ServerProcess

pytestmark = pytest.mark.integration


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
    key_id = json.loads(created.stdout)["key_metadata"]["key_id"]

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
    blob = base64.b64decode(json.loads(encrypted.stdout)["ciphertext_blob"])
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
    assert base64.b64decode(json.loads(decrypted.stdout)["plaintext"]) == plaintext_file.read_bytes()


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
    assert len(base64.b64decode(json.loads(generated.stdout)["plaintext"])) == 24


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
