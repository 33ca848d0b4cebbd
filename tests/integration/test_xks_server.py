"""Smoke test of ``hsmstore serve --xks-listen`` (issue 21): a real server, a key made over gRPC,
XKS Encrypt/Decrypt signed with botocore's SigV4Auth; the exhaustive spec suite is
test_xks_conformance.py.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess

pytestmark = pytest.mark.integration

REGION = "us-east-1"
PREFIX = "/example/prefix"
ACCESS_KEY_ID = "AKIAXKSEXAMPLE2345ABCDE"
SECRET = base64.b64encode(os.urandom(32)).decode()
METADATA = {
    "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
    "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "kmsOperation": "Encrypt",
    "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
}


def write_config(folder: Path) -> Path:
    secret_file = folder / "xks-a.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    config = folder / "xks.toml"
    config.write_text(
        f'region = "{REGION}"\n[[key_stores]]\nuri_prefix = "{PREFIX}"\ntenant = "local"\n'
        f'principal = "service/kms-xks"\n'
        f'credentials = [{{ access_key_id = "{ACCESS_KEY_ID}", secret_file = "xks-a.secret" }}]\n'
    )
    return config


@pytest.fixture(scope="module")
def xks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    folder = tmp_path_factory.mktemp("xks")
    config = write_config(folder)
    server = ServerProcess(folder / "data", ["--xks-listen", "127.0.0.1:0", "--xks-config", str(config)])
    with server:
        url = server.xks_url
        pb_grpc.AdminStub(server.channel).PutIdentityPolicy(
            pb.PutIdentityPolicyRequest(
                principal="arn:hsmstore:iam::local:service/kms-xks",
                policy_name="xks",
                policy=json.dumps({"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}),
            )
        )
        yield server, url


def call(url: str, path: str, body: dict[str, Any], secret: str = SECRET) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    request = AWSRequest(
        method="POST", url=url + path, data=data, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(ACCESS_KEY_ID, secret), "kms-xks-proxy", REGION).add_auth(request)
    status, answer = send(url, "POST", path, data, dict(request.headers.items()))
    return status, json.loads(answer)


def send(
    url: str, method: str, path: str, data: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    connection = HTTPConnection(urlsplit(url).netloc, timeout=10)
    try:
        connection.request(method, path, body=data or None, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_encrypt_then_decrypt_round_trips_and_a_disabled_key_is_invalid_state(
    xks_server: tuple[ServerProcess, str],
) -> None:
    server, url = xks_server
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    keys = f"{PREFIX}/kms/xks/v1/keys/{key_id}"
    plaintext = os.urandom(4300)
    status, sealed = call(
        url,
        f"{keys}/encrypt",
        {
            "requestMetadata": METADATA,
            "plaintext": b64(plaintext),
            "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": b64(b"project=nile"),
            "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
        },
    )
    assert status == 200, sealed
    assert len(base64.b64decode(sealed["initializationVector"])) == 12
    assert "ciphertextDataIntegrityValue" in sealed
    decrypt = {
        "requestMetadata": {**METADATA, "kmsOperation": "Decrypt"},
        "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": b64(b"project=nile"),
        **{name: sealed[name] for name in ("ciphertext", "initializationVector", "authenticationTag")},
        "ciphertextMetadata": sealed["ciphertextMetadata"],
    }
    status, opened = call(url, f"{keys}/decrypt", decrypt)
    assert (status, base64.b64decode(opened["plaintext"])) == (200, plaintext)

    status, refused = call(url, f"{keys}/decrypt", {**decrypt, "additionalAuthenticatedData": b64(b"other")})
    assert (status, refused["errorName"]) == (400, "InvalidCiphertextException")

    server.stub.DisableKey(pb.DisableKeyRequest(key_id=key_id))
    status, refused = call(url, f"{keys}/decrypt", decrypt)
    assert (status, refused["errorName"]) == (400, "InvalidStateException")
    status, described = call(url, f"{keys}/metadata", {"requestMetadata": METADATA})
    assert (status, described["keyStatus"]) == (200, "DISABLED")


def test_a_signature_from_another_secret_is_refused(xks_server: tuple[ServerProcess, str]) -> None:
    _, url = xks_server
    other = base64.b64encode(os.urandom(32)).decode()
    status, refused = call(url, f"{PREFIX}/kms/xks/v1/health", {"requestMetadata": METADATA}, secret=other)
    assert (status, refused["errorName"]) == (401, "AuthenticationFailedException")


def test_health_names_the_default_token_active(xks_server: tuple[ServerProcess, str]) -> None:
    _, url = xks_server
    status, health = call(url, f"{PREFIX}/kms/xks/v1/health", {"requestMetadata": METADATA})
    assert status == 200, health
    assert health["xksProxyVendor"] == "hsmstore"
    assert health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"


def test_ping_answers_without_authentication(xks_server: tuple[ServerProcess, str]) -> None:
    _, url = xks_server
    assert send(url, "GET", "/ping")[0] == 200
