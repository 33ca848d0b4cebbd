"""Issue 22's first acceptance line: the import procedure AWS documents, with ``openssl`` only, end
to end through ``hsmstore kms`` (real subprocesses, a real server and SoftHSM2 token), for every
wrapping algorithm the SoftHSM2 profile offers; then the blob Encrypt returned is decrypted
**outside hsmstore** with ``cryptography``'s AESGCM, ``material.bin`` and the documented blob v1
layout (docs/api.md, "Ciphertext blob v1"): the imported material, and only it, is in use.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from tests.integration.byok import SOFTHSM2_LACKS, SOFTHSM2_OFFERS, decrypt_outside
from tests.integration.harness import ServerProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]

CONTEXT = {"app": "escrow", "env": "test"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("byok-openssl")) as running:
        yield running


def run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def openssl(*args: str, cwd: Path) -> None:
    done = run("openssl", *args, cwd=cwd)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def kms(server: ServerProcess, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSMSTORE_ENDPOINT": server.address}
    return run(sys.executable, "-m", "hsmstore.cli.main", "kms", *args, cwd=cwd, env=env)


def kms_ok(server: ServerProcess, cwd: Path, *args: str) -> str:
    done = kms(server, cwd, *args)
    assert done.returncode == 0, f"hsmstore kms {' '.join(args)}: {done.stderr}"
    return done.stdout


def wrap_with_openssl(algorithm: str, work: Path) -> None:
    """``wrapped.bin`` from ``material.bin`` and ``pub.der``, as AWS's documentation does it."""
    oaep_sha1 = ("-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1")
    encrypt = ("pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", "pub.der")
    if algorithm == "RSAES_OAEP_SHA_1":
        openssl(*encrypt, "-in", "material.bin", "-out", "wrapped.bin", *oaep_sha1, cwd=work)
        return
    assert algorithm == "RSA_AES_KEY_WRAP_SHA_1"
    openssl("rand", "-out", "aes.bin", "32", cwd=work)
    aes_hex = (work / "aes.bin").read_bytes().hex()  # what `xxd -p -c 64 aes.bin` prints
    openssl(
        *("enc", "-id-aes256-wrap-pad", "-K", aes_hex, "-iv", "A65959A6"),
        *("-in", "material.bin", "-out", "material.wrapped"),
        cwd=work,
    )
    openssl(*encrypt, "-in", "aes.bin", "-out", "aes.wrapped", *oaep_sha1, cwd=work)
    (work / "wrapped.bin").write_bytes(
        (work / "aes.wrapped").read_bytes() + (work / "material.wrapped").read_bytes()
    )


@pytest.mark.parametrize("algorithm", SOFTHSM2_OFFERS)
def test_material_imported_with_openssl_is_the_aes_gcm_key_of_the_blobs_encrypt_returns(
    server: ServerProcess, tmp_path: Path, algorithm: str
) -> None:
    work = tmp_path
    openssl("rand", "-out", "material.bin", "32", cwd=work)
    material = (work / "material.bin").read_bytes()

    key_id = kms_ok(
        server, work, "create-key", "--origin", "EXTERNAL", "--query", "KeyMetadata.KeyId", "--output", "text"
    ).strip()
    described = json.loads(kms_ok(server, work, "describe-key", "--key-id", key_id))["KeyMetadata"]
    assert (described["Origin"], described["KeyState"]) == ("EXTERNAL", "PendingImport")

    params = json.loads(
        kms_ok(
            server,
            work,
            *("get-parameters-for-import", "--key-id", key_id),
            *("--wrapping-algorithm", algorithm, "--wrapping-key-spec", "RSA_2048"),
        )
    )
    (work / "pub.der").write_bytes(base64.b64decode(params["PublicKey"]))
    (work / "token.bin").write_bytes(base64.b64decode(params["ImportToken"]))
    wrap_with_openssl(algorithm, work)

    kms_ok(
        server,
        work,
        *("import-key-material", "--key-id", key_id, "--import-token", "fileb://token.bin"),
        *("--encrypted-key-material", "fileb://wrapped.bin"),
        *("--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE"),
    )
    described = json.loads(kms_ok(server, work, "describe-key", "--key-id", key_id))["KeyMetadata"]
    assert described["KeyState"] == "Enabled"
    assert described["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"

    (work / "secret.txt").write_bytes(b"the escrow copy opens this")
    encrypted = json.loads(
        kms_ok(
            server,
            work,
            *("encrypt", "--key-id", key_id, "--plaintext", "fileb://secret.txt"),
            *("--encryption-context", "app=escrow,env=test"),
        )
    )
    blob = base64.b64decode(encrypted["CiphertextBlob"])

    assert decrypt_outside(blob, material, key_id, CONTEXT) == b"the escrow copy opens this"
    with pytest.raises(InvalidTag):  # any other 32 bytes do not open it: only the imported material
        decrypt_outside(blob, os.urandom(32), key_id, CONTEXT)


def test_the_public_key_and_token_come_from_one_call_as_text(server: ServerProcess, tmp_path: Path) -> None:
    """The README's form: ``--query '[PublicKey,ImportToken]' --output text`` is one line, two fields."""
    key_id = kms_ok(
        server,
        tmp_path,
        "create-key",
        "--origin",
        "EXTERNAL",
        "--query",
        "KeyMetadata.KeyId",
        "--output",
        "text",
    ).strip()
    line = kms_ok(
        server,
        tmp_path,
        *("get-parameters-for-import", "--key-id", key_id, "--wrapping-algorithm", "RSAES_OAEP_SHA_1"),
        *("--wrapping-key-spec", "RSA_2048", "--query", "[PublicKey,ImportToken]", "--output", "text"),
    )
    public_key, token = line.split()
    (tmp_path / "pub.der").write_bytes(base64.b64decode(public_key))
    openssl("pkey", "-pubin", "-inform", "DER", "-in", "pub.der", "-noout", cwd=tmp_path)
    assert base64.b64decode(token)


@pytest.mark.parametrize("algorithm", SOFTHSM2_LACKS)
def test_sha_256_wrapping_is_unsupported_on_softhsm2_and_names_what_it_offers(
    server: ServerProcess, tmp_path: Path, algorithm: str
) -> None:
    key_id = kms_ok(
        server,
        tmp_path,
        "create-key",
        "--origin",
        "EXTERNAL",
        "--query",
        "KeyMetadata.KeyId",
        "--output",
        "text",
    ).strip()
    done = kms(
        server,
        tmp_path,
        *("get-parameters-for-import", "--key-id", key_id),
        *("--wrapping-algorithm", algorithm, "--wrapping-key-spec", "RSA_2048"),
    )
    assert done.returncode == 254, done.stdout
    error = json.loads(done.stderr)["Error"]
    assert error["Code"] == "UnsupportedOperationException"
    assert "RSAES_OAEP_SHA_1" in error["Message"], error
