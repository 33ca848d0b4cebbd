"""The XKS endpoint over TLS and mutual TLS (issue 21; spec "Authentication": TLS 1.2 or later,
and with mTLS "the XKS proxy MUST allow configuring the subject name of the client certificate").

A real ``hsmstore serve --xks-listen`` with ``--xks-tls-*``; the client is ``http.client`` over
the standard ``ssl`` module, signing with botocore's SigV4 like AWS KMS.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hsmstore import certs
from hsmstore.xks.server import certificate_names
from tests.integration.harness import ServerProcess

REGION = "us-east-1"
PREFIX = "/tls/prefix"
ACCESS_KEY_ID = "AKIAXKSTLSEXAMPLE2345"
SECRET = "dGxzLXRlc3Qtc2VjcmV0LW9mLWF0LWxlYXN0LTQzLWNoYXJzLWxvbmc="
KMS_NAME = f"cks.kms.{REGION}.amazonaws.com"
HEALTH = {
    "requestMetadata": {
        "kmsRequestId": "c1a4e8b6-4f7e-4a55-9a55-1c1bd4c0a001",
        "kmsOperation": "KmsHealthCheck",
    }
}


def _client_cert(ca: certs.Issued, name: str, folder: Path) -> tuple[Path, Path]:
    issued = certs.make_client_cert(ca, [], common_name=name)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    certs.write_pem(cert, issued.cert_pem)
    certs.write_pem(key, issued.key_pem, private=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path_factory.mktemp("xks-tls")
    ca = certs.make_ca("xks test CA")
    server_cert = certs.make_server_cert(ca)
    certs.write_pem(folder / "ca.pem", ca.cert_pem)
    certs.write_pem(folder / "server.pem", server_cert.cert_pem)
    certs.write_pem(folder / "server.key", server_cert.key_pem, private=True)
    (folder / "xks.secret").write_text(SECRET + "\n")
    (folder / "xks.secret").chmod(0o600)
    (folder / "xks.toml").write_text(
        f'region = "{REGION}"\n[[key_stores]]\nuri_prefix = "{PREFIX}"\ntenant = "local"\n'
        f'principal = "service/kms-xks"\n'
        f'credentials = [{{ access_key_id = "{ACCESS_KEY_ID}", secret_file = "xks.secret" }}]\n'
    )
    for name in (KMS_NAME, "someone-else.example.com"):
        _client_cert(ca, name, folder)
    flags = [
        "--xks-listen", "127.0.0.1:0", "--xks-config", str(folder / "xks.toml"),
        "--xks-tls-cert", str(folder / "server.pem"), "--xks-tls-key", str(folder / "server.key"),
        "--xks-tls-client-ca", str(folder / "ca.pem"), "--xks-tls-client-name", KMS_NAME,
    ]  # fmt: skip
    with ServerProcess(folder / "data", flags) as server:
        yield server, folder


def _health(server: ServerProcess, folder: Path, client: str | None) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    if client is not None:
        context.load_cert_chain(str(folder / f"{client}.pem"), str(folder / f"{client}.key"))
    url = server.xks_url
    path = f"{PREFIX}/kms/xks/v1/health"
    body = json.dumps(HEALTH).encode()
    request = AWSRequest(
        method="POST", url=url + path, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET), "kms-xks-proxy", REGION).add_auth(request)
    host_port = url.removeprefix("https://")
    connection = http.client.HTTPSConnection(host_port, context=context, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=dict(request.headers.items()))
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def test_the_endpoint_line_says_https(tls_server: tuple[ServerProcess, Path]) -> None:
    server, _ = tls_server
    assert server.xks_url.startswith("https://127.0.0.1:")


def test_a_client_certificate_with_the_configured_name_is_served(
    tls_server: tuple[ServerProcess, Path],
) -> None:
    status, answer = _health(*tls_server, KMS_NAME)
    assert status == 200, answer
    assert answer["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"


def test_a_client_certificate_with_another_name_is_refused(tls_server: tuple[ServerProcess, Path]) -> None:
    """Same CA, another subject: the connection is closed before any request is answered."""
    with pytest.raises((ConnectionError, http.client.HTTPException, ssl.SSLError)):
        _health(*tls_server, "someone-else.example.com")
    server, _ = tls_server
    assert any(f"does not name {KMS_NAME}" in line for line in server.output), "".join(server.output[-20:])


def test_a_client_without_a_certificate_is_refused(tls_server: tuple[ServerProcess, Path]) -> None:
    with pytest.raises((ConnectionError, ssl.SSLError, http.client.HTTPException)):
        _health(*tls_server, None)


def _handshake(server: ServerProcess, folder: Path, newest: ssl.TLSVersion) -> str:
    """A TLS handshake offering versions up to ``newest``, with OpenSSL's security level lowered:
    at the default level OpenSSL 3 will not offer TLS 1.1 at all, and the refusal below would
    be the client's own. The version agreed on; SSLError if the server refuses."""
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    context.load_cert_chain(str(folder / f"{KMS_NAME}.pem"), str(folder / f"{KMS_NAME}.key"))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = newest
    connection = http.client.HTTPSConnection(
        server.xks_url.removeprefix("https://"), context=context, timeout=10
    )
    try:
        connection.connect()
        assert connection.sock is not None
        return str(connection.sock.version())  # type: ignore[attr-defined]
    finally:
        connection.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_older_than_1_2_is_refused(tls_server: tuple[ServerProcess, Path]) -> None:
    """The same client that agrees on TLS 1.2 is refused when it offers TLS 1.1 at most: the
    refusal is the server's minimum, not the client's settings."""
    assert _handshake(*tls_server, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        _handshake(*tls_server, ssl.TLSVersion.TLSv1_1)


def test_certificate_names_are_the_common_names_and_dns_alternative_names() -> None:
    peer = {
        "subject": ((("countryName", "US"),), (("commonName", KMS_NAME),)),
        "subjectAltName": (("DNS", "alt.example.com"), ("URI", "spiffe://x/y")),
    }
    assert certificate_names(peer) == {KMS_NAME, "alt.example.com"}
    assert certificate_names(None) == set()
