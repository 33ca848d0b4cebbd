"""boto3 and ``hsmstore kms`` with asymmetric and HMAC keys against a real server (issue 23).

boto3 needs only ``endpoint_url`` (issue 19); its modelled exceptions
(``kms.exceptions.KMSInvalidSignatureException``) must arrive as such. The CLI
takes aws-cli's forms: ``hsmstore kms sign --key-id K --message fileb://m
--message-type RAW --signing-algorithm ECDSA_SHA_256``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.harness import ServerProcess

pytestmark = pytest.mark.integration

REGION = "us-east-1"
TEST_KEY = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
MESSAGE = b"signed through the AWS protocol"


@pytest.fixture(scope="module")
def aws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("aws-asym"), ["--aws-listen", "127.0.0.1:0"]) as running:
        yield running


@pytest.fixture(scope="module")
def kms(aws_server: ServerProcess) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=aws_server.aws_url,
        region_name=REGION,
        config=Config(retries={"mode": "standard"}),
        **TEST_KEY,
    )


def ecdsa_public(der: bytes) -> ec.EllipticCurvePublicKey:
    public = serialization.load_der_public_key(der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def test_boto3_signs_verifies_and_gets_the_public_key(kms: Any) -> None:
    metadata = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert metadata["KeySpec"] == metadata["CustomerMasterKeySpec"] == "ECC_NIST_P256"
    assert metadata["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    assert "EncryptionAlgorithms" not in metadata and "MacAlgorithms" not in metadata
    key_id = metadata["KeyId"]
    signed = kms.sign(KeyId=key_id, Message=MESSAGE, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")
    assert signed["KeyId"] == metadata["Arn"] and signed["SigningAlgorithm"] == "ECDSA_SHA_256"
    public = kms.get_public_key(KeyId=key_id)
    assert (public["KeySpec"], public["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert public["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    ecdsa_public(public["PublicKey"]).verify(signed["Signature"], MESSAGE, ec.ECDSA(hashes.SHA256()))
    verified = kms.verify(
        KeyId=key_id, Message=MESSAGE, Signature=signed["Signature"], SigningAlgorithm="ECDSA_SHA_256"
    )
    assert verified["SignatureValid"] is True
    foreign = ec.generate_private_key(ec.SECP256R1()).sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
        kms.verify(KeyId=key_id, Message=MESSAGE, Signature=foreign, SigningAlgorithm="ECDSA_SHA_256")
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.sign(KeyId=key_id, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_384")


def test_boto3_generates_and_verifies_macs(kms: Any) -> None:
    metadata = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert metadata["MacAlgorithms"] == ["HMAC_SHA_256"]
    key_id = metadata["KeyId"]
    made = kms.generate_mac(KeyId=key_id, Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")
    assert len(made["Mac"]) == 32 and made["MacAlgorithm"] == "HMAC_SHA_256"
    verified = kms.verify_mac(KeyId=key_id, Message=MESSAGE, MacAlgorithm="HMAC_SHA_256", Mac=made["Mac"])
    assert verified["MacValid"] is True
    flipped = bytes([made["Mac"][0] ^ 1]) + made["Mac"][1:]
    with pytest.raises(kms.exceptions.KMSInvalidMacException):
        kms.verify_mac(KeyId=key_id, Message=MESSAGE, MacAlgorithm="HMAC_SHA_256", Mac=flipped)


def test_boto3_data_key_pairs_match_and_decrypt(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    context = {"app": "issue-23"}
    pair = kms.generate_data_key_pair(KeyId=key_id, KeyPairSpec="ECC_NIST_P384", EncryptionContext=context)
    assert pair["KeyPairSpec"] == "ECC_NIST_P384"
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    signature = private.sign(MESSAGE, ec.ECDSA(hashes.SHA384()))
    ecdsa_public(pair["PublicKey"]).verify(signature, MESSAGE, ec.ECDSA(hashes.SHA384()))
    decrypted = kms.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"], EncryptionContext=context)
    assert decrypted["Plaintext"] == pair["PrivateKeyPlaintext"]
    without = kms.generate_data_key_pair_without_plaintext(KeyId=key_id, KeyPairSpec="RSA_2048")
    assert "PrivateKeyPlaintext" not in without and without["KeyPairSpec"] == "RSA_2048"
    assert serialization.load_der_public_key(without["PublicKey"]).key_size == 2048  # type: ignore[union-attr]


def test_boto3_derives_the_shared_secret_cryptography_derives(kms: Any) -> None:
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_der = peer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    derived = kms.derive_shared_secret(KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=peer_der)
    kms_public = ecdsa_public(kms.get_public_key(KeyId=key_id)["PublicKey"])
    assert derived["SharedSecret"] == peer.exchange(ec.ECDH(), kms_public)
    assert derived["KeyOrigin"] == "AWS_KMS"


def test_boto3_refuses_rotation_of_an_asymmetric_key(kms: Any) -> None:
    key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(kms.exceptions.UnsupportedOperationException):
        kms.enable_key_rotation(KeyId=key_id)


# ------------------------------------------------------------------ hsmstore kms


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSMSTORE_ENDPOINT": server.address}
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", "kms", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def answer(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_the_cli_signs_and_verifies_with_fileb_messages(aws_server: ServerProcess, tmp_path: Path) -> None:
    create = ["create-key", "--key-spec", "ECC_NIST_P256", "--key-usage", "SIGN_VERIFY"]
    created = answer(cli(aws_server, *create))
    key_id = created["KeyMetadata"]["KeyId"]
    assert created["KeyMetadata"]["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    (tmp_path / "m").write_bytes(MESSAGE)
    signed = answer(
        cli(
            aws_server,
            "sign",
            "--key-id",
            key_id,
            "--message",
            f"fileb://{tmp_path / 'm'}",
            "--message-type",
            "RAW",
            "--signing-algorithm",
            "ECDSA_SHA_256",
        )
    )
    signature = base64.b64decode(signed["Signature"])
    (tmp_path / "sig").write_bytes(signature)
    public = answer(cli(aws_server, "get-public-key", "--key-id", key_id))
    ecdsa_public(base64.b64decode(public["PublicKey"])).verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))
    verify = [
        "verify",
        "--key-id",
        key_id,
        "--message",
        f"fileb://{tmp_path / 'm'}",
        "--signature",
        f"fileb://{tmp_path / 'sig'}",
        "--signing-algorithm",
        "ECDSA_SHA_256",
    ]
    assert answer(cli(aws_server, *verify))["SignatureValid"] is True
    (tmp_path / "m").write_bytes(MESSAGE + b"!")
    refused = cli(aws_server, *verify)
    assert refused.returncode == 254
    assert json.loads(refused.stderr)["Error"]["Code"] == "KMSInvalidSignatureException"


def test_the_cli_requires_the_signing_algorithm(aws_server: ServerProcess) -> None:
    done = cli(aws_server, "sign", "--key-id", "k", "--message", "bWVzc2FnZQ==")
    assert done.returncode == 2 and "--signing-algorithm" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_cli_makes_and_checks_a_mac(aws_server: ServerProcess, tmp_path: Path) -> None:
    key_id = answer(cli(aws_server, "create-key", "--key-spec", "HMAC_512"))["KeyMetadata"]["KeyId"]
    (tmp_path / "m").write_bytes(MESSAGE)
    message = f"fileb://{tmp_path / 'm'}"
    generate = ["generate-mac", "--key-id", key_id, "--message", message, "--mac-algorithm", "HMAC_SHA_512"]
    made = answer(cli(aws_server, *generate))
    checked = answer(
        cli(
            aws_server,
            "verify-mac",
            "--key-id",
            key_id,
            "--message",
            message,
            "--mac-algorithm",
            "HMAC_SHA_512",
            "--mac",
            made["Mac"],
        )
    )
    assert checked["MacValid"] is True
