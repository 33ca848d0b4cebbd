"""``pip install hsmstore`` without extras is the client only, and it works (issue 20, acceptance).

A fresh venv gets the package without extras: no python-pkcs11, SQLAlchemy,
psycopg or alembic; the client SDK, ``hsmstore kms`` and ``hsmstore status``
work against a real server run from the main venv; ``hsmstore serve`` and
``hsmstore encrypt`` say which extra they need. Then ``aws-encryption-sdk-cli``
(4.3.0, which pins aws-encryption-sdk ~=3.1, so it cannot share a venv with
``hsmstore[esdk]``'s 4.x) goes into the same venv, loads hsmstore's master key
provider through its entry point, and exchanges files with ``hsmstore
encrypt``/``decrypt`` of the main venv in both directions.

The package is built from a copy of the sources (pyproject.toml, README.md,
hsmstore/) so the build writes nothing into the working tree. Skipped only when
a venv cannot be made on this machine; packages come from PyPI (or pip's cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from hsmstore.client import KeyStoreClient
from tests.integration.harness import ServerProcess

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("python-pkcs11", "sqlalchemy", "psycopg", "psycopg-binary", "alembic", "grpcio-reflection")
HSMSTORE = [sys.executable, "-m", "hsmstore.cli.main"]
ESDK_CLI = "aws-encryption-sdk-cli==4.3.0"


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-only")
    try:
        venv.EnvBuilder(with_pip=True).create(root / "venv")
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot make a venv here: {error}")
    source = root / "src"
    shutil.copytree(REPO / "hsmstore", source / "hsmstore", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    installed = run(
        [str(root / "venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(source)]
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return root / "venv" / "bin"


def installed_names(bin_dir: Path) -> set[str]:
    listed = run([str(bin_dir / "pip"), "list", "--format=freeze", "--disable-pip-version-check"])
    return {line.split("==")[0].lower() for line in listed.stdout.splitlines()}


def test_a_plain_install_pulls_no_server_dependency(client_venv: Path) -> None:
    names = installed_names(client_venv)
    assert "hsmstore" in names
    assert names.isdisjoint(SERVER_ONLY), names & set(SERVER_ONLY)
    assert {"grpcio", "protobuf", "grpcio-status"} <= names


def test_the_client_sdk_works_without_the_server_extra(client_venv: Path, server: ServerProcess) -> None:
    script = (
        "import sys\n"
        "from hsmstore.client import KeyStoreClient, NotFoundException\n"
        "with KeyStoreClient(sys.argv[1]) as c:\n"
        "    key = c.create_key(description='client only').key_metadata\n"
        "    context = {'a': 'b'}; kid = key.key_id\n"
        "    blob = c.encrypt(key_id=kid, plaintext=b'hi', encryption_context=context).ciphertext_blob\n"
        "    assert c.decrypt(ciphertext_blob=blob, encryption_context=context).plaintext == b'hi'\n"
        "    try:\n"
        "        c.describe_key(key_id='alias/none')\n"
        "    except NotFoundException:\n"
        "        print('typed error ok')\n"
    )
    done = run([str(client_venv / "python"), "-c", script, server.address])
    assert done.returncode == 0, done.stderr
    assert "typed error ok" in done.stdout


def test_kms_and_status_commands_work_without_the_server_extra(
    client_venv: Path, server: ServerProcess
) -> None:
    listed = run([str(client_venv / "hsmstore"), "kms", "list-keys", "--endpoint", server.address])
    assert listed.returncode == 0, listed.stderr
    status = run([str(client_venv / "hsmstore"), "status", "--target", server.address])
    assert status.returncode == 0, status.stderr


def test_serve_says_it_needs_the_server_extra(client_venv: Path) -> None:
    done = run([str(client_venv / "hsmstore"), "serve"])
    assert done.returncode == 2
    assert done.stderr.strip() == "hsmstore serve needs the server extra: pip install 'hsmstore[server]'"


def test_encrypt_says_it_needs_the_esdk_extra(client_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    done = run(
        [
            str(client_venv / "hsmstore"),
            "encrypt",
            "--key-id",
            "k",
            "--input",
            str(tmp_path / "plain"),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "hsmstore encrypt needs the esdk extra: pip install 'hsmstore[esdk]'"


@pytest.fixture(scope="module")
def esdk_cli(client_venv: Path) -> Path:
    installed = run([str(client_venv / "pip"), "install", "-q", "--disable-pip-version-check", ESDK_CLI])
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert installed_names(client_venv).isdisjoint(SERVER_ONLY)
    return client_venv / "aws-encryption-cli"


@pytest.fixture(scope="module")
def key_arn(server: ServerProcess) -> str:
    with KeyStoreClient(server.address) as client:
        made = client.create_key(description="aws-encryption-cli").key_metadata
        assert made is not None
        return made.arn


def wrapping_keys(server: ServerProcess, key_arn: str) -> list[str]:
    return ["--wrapping-keys", "provider=hsmstore", f"key={key_arn}", f"endpoint={server.address}"]


def test_aws_encryption_cli_decrypts_what_hsmstore_encrypt_made(
    esdk_cli: Path, server: ServerProcess, key_arn: str, tmp_path: Path
) -> None:
    (tmp_path / "plain").write_bytes(os.urandom(200_000))
    made = run(
        [
            *HSMSTORE,
            "encrypt",
            "--key-id",
            key_arn,
            "--input",
            str(tmp_path / "plain"),
            "--output",
            str(tmp_path / "plain.enc"),
            "--endpoint",
            server.address,
            "--encryption-context",
            "app=orders",
        ]
    )
    assert made.returncode == 0, made.stderr
    opened = run(
        [
            str(esdk_cli),
            "--decrypt",
            "--input",
            str(tmp_path / "plain.enc"),
            "--output",
            str(tmp_path / "out"),
            *wrapping_keys(server, key_arn),
            "--encryption-context",
            "app=orders",
            "--metadata-output",
            os.devnull,
        ]
    )
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "out").read_bytes() == (tmp_path / "plain").read_bytes()


def test_hsmstore_decrypt_reads_what_aws_encryption_cli_made(
    esdk_cli: Path, server: ServerProcess, key_arn: str, tmp_path: Path
) -> None:
    (tmp_path / "plain").write_bytes(os.urandom(200_000))
    made = run(
        [
            str(esdk_cli),
            "--encrypt",
            "--input",
            str(tmp_path / "plain"),
            "--output",
            str(tmp_path / "plain.enc"),
            *wrapping_keys(server, key_arn),
            "--encryption-context",
            "app=orders",
            "--metadata-output",
            os.devnull,
        ]
    )
    assert made.returncode == 0, made.stderr
    opened = run(
        [
            *HSMSTORE,
            "decrypt",
            "--input",
            str(tmp_path / "plain.enc"),
            "--output",
            str(tmp_path / "out"),
            "--endpoint",
            server.address,
            "--encryption-context",
            "app=orders",
        ]
    )
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "out").read_bytes() == (tmp_path / "plain").read_bytes()
