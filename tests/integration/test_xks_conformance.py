"""XKS proxy API conformance of a real ``hsmstore serve --xks-listen`` (issue 21, Acceptance).

"An independent XKS client ... written from the spec with botocore's SigV4
signer ... drives every API, field, size limit and error of the spec." The
client is tests/xks_client.py; the expectations below quote the XKS proxy API
spec v1.0.3 (AWS's aws-kms-xksproxy-api-spec), never hsmstore's own reading of it.

Set-up: one server, two key stores (URI prefixes) on two tenants:

* ``/example/prefix``: tenant ``local`` (the dev server's tenant, whose admin
  the gRPC channel acts as), principal ``service/kms-xks`` with an identity
  policy allowing ``kms:*``; two credentials (the spec's rotation: "at least 2
  concurrent credential sets per path prefix").
* ``/globex/xks``: tenant ``globex``: tenant ``local``'s keys named through it
  do not exist (KeyNotFoundException, 404).
* ``/local/no-policy``: tenant ``local``, a principal no policy allows: its key
  operations are AccessDeniedException, yet GetHealthStatus must answer ("MUST
  be excluded from any secondary authorization").

Errors the tests cannot provoke honestly against a healthy dev server:
ThrottlingException (429), InternalException (500), DependencyTimeoutException
(503) and InvalidKeyUsageException (hsmstore keys are all ENCRYPT_DECRYPT).
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, wait_until
from tests.xks_client import (
    KMS_KEY_ARN,
    KMS_PRINCIPAL,
    KeyStoreConfig,
    Reply,
    Sealed,
    XksClient,
    XksCredential,
    b64,
    cdiv,
    crypto_metadata,
    decrypt_body,
    encrypt_body,
    health_metadata,
    key_metadata_metadata,
    new_secret,
    sign,
    unb64,
    write_config,
)

pytestmark = pytest.mark.integration

REGION = "us-east-1"
PREFIX_A, TENANT_A = "/example/prefix", "local"
PREFIX_B, TENANT_B = "/globex/xks", "globex"
PREFIX_C = "/local/no-policy"
PREFIX_ROOT = ""  # the spec's path prefix is optional: https://<server>/kms/xks/v1
PRINCIPAL = "service/kms-xks"
PRINCIPAL_C = "service/xks-without-policy"
# [A-Z2-7]{20,30} (spec, "XKS proxy configuration").
AKID_A1, AKID_A2 = "AKIAXKSEXAMPLE2345ABCDE", "AKIAXKSROTATED2345ABCDE"
AKID_B, AKID_C, AKID_D = "AKIAXKSGLOBEX23456ABCDE", "AKIAXKSNOPOLICY234567AB", "AKIAXKSROOTPREFIX234567"
MIN_PLAINTEXT = 4300  # "The proxy MUST support the ability to process up to 4300 bytes of plaintext"
MAX_AAD = 8192  # "MUST be able to handle AAD values up to 8192 bytes"
MAX_CTM = 20  # "the size of the field MUST NOT exceed 20 bytes"
SKEW = datetime.timedelta(minutes=5)  # Appendix A: requests more than 5 minutes off are refused


def xks_url(server: ServerProcess) -> str:
    if not server.xks_url:
        raise AssertionError("no XKS endpoint line:\n" + "".join(server.output[-40:]))
    return server.xks_url


def principal_arn(tenant: str) -> str:
    return f"arn:hsmstore:iam::{tenant}:{PRINCIPAL}"


ALLOW_ALL = json.dumps({"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})


@dataclass
class Xks:
    """The running server and what the tests use of it."""

    server: ServerProcess
    url: str
    cred_a1: XksCredential
    cred_a2: XksCredential
    cred_b: XksCredential
    cred_c: XksCredential
    cred_d: XksCredential

    @property
    def keys(self) -> pb_grpc.KeyStoreStub:
        return self.server.stub

    @property
    def audit(self) -> pb_grpc.AuditStub:
        return pb_grpc.AuditStub(self.server.channel)

    def client(self, credential: XksCredential | None = None, prefix: str = PREFIX_A) -> XksClient:
        return XksClient(self.url, prefix, credential or self.cred_a1, REGION)

    def new_key(self, description: str = "xks conformance") -> str:
        return str(self.keys.CreateKey(pb.CreateKeyRequest(description=description)).key_metadata.key_id)


def start_xks_server(data_dir: Path, config_dir: Path) -> Xks:
    # The second secret is 64 characters, the spec's maximum (43-64).
    secrets_made = [new_secret(), new_secret(48), new_secret(), new_secret(), new_secret()]
    akids = (AKID_A1, AKID_A2, AKID_B, AKID_C, AKID_D)
    creds = [XksCredential(a, s) for a, s in zip(akids, secrets_made, strict=True)]
    config = write_config(
        config_dir,
        REGION,
        [
            KeyStoreConfig(PREFIX_A, TENANT_A, PRINCIPAL, creds[:2]),
            KeyStoreConfig(PREFIX_B, TENANT_B, PRINCIPAL, creds[2:3]),
            KeyStoreConfig(PREFIX_C, TENANT_A, PRINCIPAL_C, creds[3:4]),
            KeyStoreConfig(PREFIX_ROOT, TENANT_A, PRINCIPAL, creds[4:]),
        ],
    )
    server = ServerProcess(data_dir, ["--xks-listen", "127.0.0.1:0", "--xks-config", str(config)])
    server.start()
    try:
        url = xks_url(server)
        pb_grpc.AdminStub(server.channel).PutIdentityPolicy(
            pb.PutIdentityPolicyRequest(
                principal=principal_arn(TENANT_A), policy_name="xks", policy=ALLOW_ALL
            ),
            timeout=10,
        )
    except BaseException:
        server.stop()
        raise
    return Xks(server, url, *creds)


@pytest.fixture(scope="module")
def xks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xks]:
    root = tmp_path_factory.mktemp("xks")
    running = start_xks_server(root / "data", root / "config")
    try:
        yield running
    finally:
        running.server.stop()


@pytest.fixture
def client(xks: Xks) -> Iterator[XksClient]:
    with xks.client() as made:
        yield made


@pytest.fixture(scope="module")
def key_id(xks: Xks) -> str:
    """An enabled key of tenant ``local`` that no test disables."""
    return xks.new_key()


def ok(reply: Reply) -> Any:
    assert reply.status == 200, reply
    assert isinstance(reply.body, dict), reply
    return reply.body


def assert_error(reply: Reply, status: int, *names: str) -> None:
    """An error of the spec's table: its HTTP status and ``{"errorName": ..., "errorMessage"?: ...}``.

    errorMessage is optional, "under 512 characters" of printable ASCII (spec, "Error codes").
    """
    assert reply.status == status and reply.error_name in names, (status, names, reply)
    message = reply.body.get("errorMessage")
    if message is not None:
        assert isinstance(message, str) and len(message) < 512, reply
        assert all(32 <= ord(c) < 127 for c in message), reply


def seal(client: XksClient, key: str, plaintext: bytes, aad: bytes | None = None, **kwargs: Any) -> Sealed:
    return Sealed.from_response(ok(client.encrypt(key, plaintext, aad=aad, **kwargs)))


def flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# ------------------------------------------------------------------ GetHealthStatus


def test_health_reports_the_proxy_and_an_active_key_manager_fleet(client: XksClient) -> None:
    body = ok(client.get_health_status())
    assert isinstance(body["xksProxyFleetSize"], int) and body["xksProxyFleetSize"] > 0
    for name in ("xksProxyVendor", "xksProxyModel", "ekmVendor"):
        assert isinstance(body[name], str) and body[name], name
    fleet = body["ekmFleetDetails"]
    assert 1 <= len(fleet) <= 10
    for member in fleet:
        assert isinstance(member["id"], str) and isinstance(member["model"], str)
        assert member["healthStatus"] in {"ACTIVE", "DEGRADED", "UNAVAILABLE"}
    assert any(member["healthStatus"] == "ACTIVE" for member in fleet)  # a healthy dev token


@pytest.mark.parametrize(
    "operation", ["KmsHealthCheck", "CreateCustomKeyStore", "ConnectCustomKeyStore", "FutureOp"]
)
def test_health_accepts_any_kms_operation(client: XksClient, operation: str) -> None:
    ok(client.get_health_status(health_metadata(operation)))


def test_health_is_exempt_from_secondary_authorization(xks: Xks, key_id: str) -> None:
    """A principal no policy allows may use no key, yet health answers: the spec's MUST."""
    with xks.client(xks.cred_c, PREFIX_C) as unpolicied:
        assert_error(unpolicied.encrypt(key_id, b"x"), 403, "AccessDeniedException")
        assert_error(unpolicied.get_key_metadata(key_id), 403, "AccessDeniedException")
        ok(unpolicied.get_health_status())


def test_health_still_needs_sigv4(client: XksClient) -> None:
    assert_error(client.get_health_status(signed=False), 401, "AuthenticationFailedException")


# ------------------------------------------------------------------ GetKeyMetadata


def test_key_metadata_of_an_enabled_key(client: XksClient, key_id: str) -> None:
    body = ok(client.get_key_metadata(key_id))
    assert body["keySpec"] == "AES_256"
    assert {"ENCRYPT", "DECRYPT"} <= set(body["keyUsage"]) and len(body["keyUsage"]) <= 10
    assert set(body["keyUsage"]) <= {"ENCRYPT", "DECRYPT", "SIGN", "VERIFY", "WRAP", "UNWRAP", "DERIVE"}
    assert body["keyStatus"] == "ENABLED"


@pytest.mark.parametrize(
    "optional",
    [
        {},
        {"kmsKeyArn": KMS_KEY_ARN},
        {"awsSourceVpc": "vpc-0123456789abcdef0", "awsSourceVpce": "vpce-0123456789abcdef0"},
        {"kmsKeyArn": KMS_KEY_ARN, "awsSourceVpc": "vpc-1", "awsSourceVpce": "vpce-1"},
    ],
    ids=["required-only", "kmsKeyArn", "vpc", "all"],
)
def test_key_metadata_with_and_without_optional_metadata(
    client: XksClient, key_id: str, optional: dict[str, str]
) -> None:
    assert ok(client.get_key_metadata(key_id, key_metadata_metadata(**optional)))["keyStatus"] == "ENABLED"


@pytest.mark.parametrize("operation", ["CreateKey", "DescribeKey", "FutureOp"])
def test_key_metadata_accepts_any_kms_operation(client: XksClient, key_id: str, operation: str) -> None:
    ok(client.get_key_metadata(key_id, key_metadata_metadata(operation)))


# ------------------------------------------------------------------ Encrypt and Decrypt


@pytest.mark.parametrize("size", [1, 16, 256, MIN_PLAINTEXT])
@pytest.mark.parametrize("aad_size", [None, 1, 33, MAX_AAD], ids=lambda n: f"aad{n}")
def test_encrypt_then_decrypt_round_trips(
    client: XksClient, key_id: str, size: int, aad_size: int | None
) -> None:
    plaintext = secrets.token_bytes(size)
    aad = None if aad_size is None else secrets.token_bytes(aad_size)
    sealed = seal(client, key_id, plaintext, aad)
    assert len(sealed.ciphertext) == len(plaintext)  # "the length of the ciphertext MUST be the same"
    assert len(sealed.iv) in (12, 16)
    assert len(sealed.tag) == 16
    assert sealed.ciphertext_metadata is None or len(sealed.ciphertext_metadata) <= MAX_CTM
    assert ok(client.decrypt(key_id, sealed, aad=aad))["plaintext"] == b64(plaintext)


def test_two_encryptions_of_one_plaintext_use_different_ivs(client: XksClient, key_id: str) -> None:
    first, second = (seal(client, key_id, b"same") for _ in range(2))
    assert first.iv != second.iv and first.ciphertext != second.ciphertext


@pytest.mark.parametrize("size", [6000, 8192])
def test_plaintext_above_the_minimum_round_trips_or_is_unsupported(
    client: XksClient, key_id: str, size: int
) -> None:
    """Beyond 4300 bytes a proxy may refuse, but only as UnsupportedOperationException (501)."""
    plaintext = secrets.token_bytes(size)
    reply = client.encrypt(key_id, plaintext)
    if reply.status == 200:
        sealed = Sealed.from_response(reply.body)
        assert ok(client.decrypt(key_id, sealed))["plaintext"] == b64(plaintext)
    else:
        assert_error(reply, 501, "UnsupportedOperationException")


def test_huge_plaintext_is_unsupported_operation(client: XksClient, key_id: str) -> None:
    """300 KiB: "a parameter value exceeded the maximum size ... currently supported" is 501."""
    assert_error(client.encrypt(key_id, bytes(300 * 1024)), 501, "UnsupportedOperationException")


@pytest.mark.parametrize("size", [MAX_AAD + 1, 3 * MAX_AAD])
def test_aad_above_8192_bytes_round_trips_or_is_unsupported(
    client: XksClient, key_id: str, size: int
) -> None:
    aad = secrets.token_bytes(size)
    reply = client.encrypt(key_id, b"data", aad=aad)
    if reply.status == 200:
        assert ok(client.decrypt(key_id, Sealed.from_response(reply.body), aad=aad))["plaintext"] == b64(
            b"data"
        )
    else:
        assert_error(reply, 501, "UnsupportedOperationException")


@pytest.mark.parametrize("aad", [None, b"project=nile,department=marketing"], ids=["no-aad", "aad"])
def test_encrypt_returns_the_cdiv_when_asked_and_it_is_correct(
    client: XksClient, key_id: str, aad: bytes | None
) -> None:
    """Appendix C: base64(SHA-256(AAD || CTM || IV || ciphertext || tag)); MUST be present when asked."""
    reply = client.encrypt(key_id, b"Hello World!", aad=aad, want_cdiv=True)
    sealed = Sealed.from_response(ok(reply))
    assert sealed.cdiv is not None, reply
    expected = cdiv(
        aad=aad,
        ciphertext_metadata=sealed.ciphertext_metadata,
        iv=sealed.iv,
        ciphertext=sealed.ciphertext,
        tag=sealed.tag,
    )
    assert sealed.cdiv == expected
    assert ok(client.decrypt(key_id, sealed, aad=aad))["plaintext"] == b64(b"Hello World!")


def test_cdiv_helper_matches_the_spec_example() -> None:
    """The spec's worked example (Encrypt response and Appendix C) as a vector for this client."""
    value = cdiv(
        aad=b"project=nile,department=marketing",
        ciphertext_metadata=unb64("a2V5X3ZlcnNpb249MQ=="),
        iv=unb64("HMrlRw85cAJUd5Ax"),
        ciphertext=unb64("ghxkK1txeDNn3q8Y"),
        tag=unb64("vBxN2ncH1oEkR8WVXpmyYQ=="),
    )
    assert value == "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="


OPTIONAL_CRYPTO_METADATA = [
    {},
    {"kmsViaService": "ebs"},
    {"awsSourceVpc": "vpc-0123456789abcdef0", "awsSourceVpce": "vpce-0123456789abcdef0"},
    {"kmsViaService": "s3", "awsSourceVpc": "vpc-1", "awsSourceVpce": "vpce-1"},
]


@pytest.mark.parametrize("optional", OPTIONAL_CRYPTO_METADATA, ids=["required-only", "via", "vpc", "all"])
def test_encrypt_and_decrypt_with_and_without_optional_metadata(
    client: XksClient, key_id: str, optional: dict[str, str]
) -> None:
    sealed = seal(client, key_id, b"m", metadata=crypto_metadata("GenerateDataKey", **optional))
    decrypted = client.decrypt(key_id, sealed, metadata=crypto_metadata("Decrypt", **optional))
    assert ok(decrypted)["plaintext"] == b64(b"m")


@pytest.mark.parametrize(
    ("encrypt_op", "decrypt_op"),
    [
        ("Encrypt", "Decrypt"),
        ("ReEncrypt", "ReEncrypt"),
        ("GenerateDataKeyWithoutPlaintext", "Decrypt"),
        ("BulkEncrypt", "BulkDecrypt"),
    ],
)
def test_encrypt_and_decrypt_accept_any_kms_operation(
    client: XksClient, key_id: str, encrypt_op: str, decrypt_op: str
) -> None:
    """Spec: "The XKS Proxy MUST NOT reject a request as invalid if it sees a kmsOperation other than
    those listed"."""
    sealed = seal(client, key_id, b"op", metadata=crypto_metadata(encrypt_op))
    ok(client.decrypt(key_id, sealed, metadata=crypto_metadata(decrypt_op)))


def test_unknown_request_fields_are_tolerated(client: XksClient, key_id: str) -> None:
    """KMS may add fields (source identity, attestation, tags): unknown ones must be ignored."""
    extra: dict[str, Any] = {"awsSourceIdentity": "alice", "futureNested": {"a": [1, 2]}, "futureFlag": True}
    metadata = crypto_metadata("Encrypt", **extra)
    body = encrypt_body(b"x", metadata=metadata)
    body["futureTopLevelField"] = "ignored"
    sealed = Sealed.from_response(ok(client.post_json(client.key_path(key_id, "encrypt"), body)))
    decrypt = decrypt_body(sealed, metadata=crypto_metadata("Decrypt", **extra))
    decrypt["futureTopLevelField"] = 7
    assert ok(client.post_json(client.key_path(key_id, "decrypt"), decrypt))["plaintext"] == b64(b"x")
    meta = key_metadata_metadata(**extra)
    ok(client.post_json(client.key_path(key_id, "metadata"), {"requestMetadata": meta, "future": 1}))
    ok(client.post_json(client.path("/health"), {"requestMetadata": health_metadata() | extra, "future": 1}))


def test_opaque_request_ids_and_2048_character_arns_are_accepted(client: XksClient, key_id: str) -> None:
    """kmsRequestId: "MUST NOT perform any validation on its structure"; ARNs up to 2048 characters."""
    long_arn = "arn:aws:iam::123456789012:role/" + "r" * (2048 - len("arn:aws:iam::123456789012:role/"))
    metadata = crypto_metadata("Encrypt", request_id="not a uuid: #42/é") | {
        "awsPrincipalArn": long_arn,
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/" + "k" * 1900,
    }
    sealed = seal(client, key_id, b"arn", metadata=metadata)
    ok(client.decrypt(key_id, sealed, metadata=metadata | {"kmsOperation": "Decrypt"}))


def test_decrypt_without_the_aad_given_at_encrypt_is_invalid_ciphertext(
    client: XksClient, key_id: str
) -> None:
    sealed = seal(client, key_id, b"p", b"context")
    assert_error(client.decrypt(key_id, sealed), 400, "InvalidCiphertextException")
    assert_error(
        client.decrypt(key_id, seal(client, key_id, b"p"), aad=b"context"), 400, "InvalidCiphertextException"
    )


def test_ciphertext_metadata_moved_into_the_aad_is_invalid_ciphertext(client: XksClient, key_id: str) -> None:
    """The spec's own example of why the lengths are bound: CTM passed as AAD, no CTM, must not decrypt."""
    sealed = seal(client, key_id, b"p")
    if sealed.ciphertext_metadata is None:
        pytest.skip("the server returns no ciphertextMetadata")
    moved = replace(sealed, ciphertext_metadata=None)
    assert_error(
        client.decrypt(key_id, moved, aad=sealed.ciphertext_metadata), 400, "InvalidCiphertextException"
    )


TAMPERS: dict[str, Callable[[Sealed, bytes], tuple[Sealed, bytes]]] = {
    "ciphertext": lambda s, aad: (replace(s, ciphertext=flip(s.ciphertext)), aad),
    "ciphertext-last-byte": lambda s, aad: (replace(s, ciphertext=flip(s.ciphertext, -1)), aad),
    "tag": lambda s, aad: (replace(s, tag=flip(s.tag, 15)), aad),
    "iv": lambda s, aad: (replace(s, iv=flip(s.iv, 3)), aad),
    "aad": lambda s, aad: (s, flip(aad, 5)),
    "ciphertext-metadata": lambda s, aad: (
        replace(s, ciphertext_metadata=flip(s.ciphertext_metadata) if s.ciphertext_metadata else b"\x01"),
        aad,
    ),
    "ciphertext-metadata-dropped-or-added": lambda s, aad: (
        replace(s, ciphertext_metadata=None if s.ciphertext_metadata else b"v"),
        aad,
    ),
    "truncated-ciphertext": lambda s, aad: (replace(s, ciphertext=s.ciphertext[:-1]), aad),
}


@pytest.mark.parametrize("part", list(TAMPERS))
def test_decrypt_with_a_flipped_bit_is_invalid_ciphertext(client: XksClient, key_id: str, part: str) -> None:
    aad = b"project=nile,department=marketing"
    sealed = seal(client, key_id, secrets.token_bytes(64), aad)
    tampered, tampered_aad = TAMPERS[part](sealed, aad)
    assert_error(client.decrypt(key_id, tampered, aad=tampered_aad), 400, "InvalidCiphertextException")


def test_decrypt_with_another_keys_ciphertext_is_invalid_ciphertext(
    xks: Xks, client: XksClient, key_id: str
) -> None:
    sealed = seal(client, key_id, b"mine")
    assert_error(client.decrypt(xks.new_key(), sealed), 400, "InvalidCiphertextException")


def test_a_key_rotated_between_encrypt_and_decrypt_still_decrypts(xks: Xks, client: XksClient) -> None:
    """The ciphertextMetadata may carry the key version (spec: "encode versioning of the key material")."""
    key = xks.new_key("rotated")
    before = seal(client, key, b"old version", b"aad")
    xks.keys.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key), timeout=30)
    after = seal(client, key, b"new version", b"aad")
    assert ok(client.decrypt(key, before, aad=b"aad"))["plaintext"] == b64(b"old version")
    assert ok(client.decrypt(key, after, aad=b"aad"))["plaintext"] == b64(b"new version")
    for sealed in (before, after):
        assert sealed.ciphertext_metadata is None or len(sealed.ciphertext_metadata) <= MAX_CTM


def test_keep_alive_serves_many_requests_on_one_connection(client: XksClient, key_id: str) -> None:
    """HTTP/1.1 keep-alive: KMS reuses connections; the proxy must not close after each answer."""
    ok(client.get_health_status())
    connection = client._connect()
    socket_before = connection.sock
    for _ in range(5):
        ok(client.get_key_metadata(key_id))
    assert connection.sock is socket_before is not None


def test_a_key_store_without_a_path_prefix_serves_under_kms_xks_v1(xks: Xks, key_id: str) -> None:
    with xks.client(xks.cred_d, PREFIX_ROOT) as root:
        assert root.path("/health") == "/kms/xks/v1/health"
        ok(root.get_health_status())
        sealed = seal(root, key_id, b"root prefix")
        assert ok(root.decrypt(key_id, sealed))["plaintext"] == b64(b"root prefix")
        # A credential is bound to its own prefix.
        assert_error(root.get_health_status(credential=xks.cred_a1), 401, "AuthenticationFailedException")


def test_a_128_character_external_key_id_is_looked_up(client: XksClient) -> None:
    """externalKeyId: at most 128 of [A-Za-z0-9._-]; a well-formed unknown one is KeyNotFoundException."""
    assert_error(client.get_key_metadata("k.-_" * 32), 404, "KeyNotFoundException")


def test_header_names_are_case_insensitive(client: XksClient, key_id: str) -> None:
    path = client.key_path(key_id, "metadata")
    body = json.dumps({"requestMetadata": key_metadata_metadata()}).encode()
    headers = {
        name.lower(): value
        for name, value in sign(client.base_url + path, body, client.credential, REGION).items()
    }
    ok(client.send("POST", path, body, headers))


def test_answers_are_json(client: XksClient, key_id: str) -> None:
    """ "All requests and responses ... MUST be sent as JSON ... with a Content-Type of application/json"."""
    for reply in (
        client.get_health_status(),
        client.get_key_metadata(key_id),
        client.get_key_metadata(str(uuid.uuid4())),
        client.get_health_status(signed=False),
    ):
        assert reply.content_type.startswith("application/json"), reply


# ------------------------------------------------------------------ key state, tenancy and policy


def test_a_disabled_key_reports_disabled_and_refuses_encrypt_and_decrypt(xks: Xks, client: XksClient) -> None:
    key = xks.new_key("to disable")
    sealed = seal(client, key, b"before")
    xks.keys.DisableKey(pb.DisableKeyRequest(key_id=key), timeout=10)
    wait_until(lambda: client.get_key_metadata(key).body.get("keyStatus") == "DISABLED", timeout=15)
    assert ok(client.get_key_metadata(key))["keySpec"] == "AES_256"
    assert_error(client.encrypt(key, b"x"), 400, "InvalidStateException")
    assert_error(client.decrypt(key, sealed), 400, "InvalidStateException")
    xks.keys.EnableKey(pb.EnableKeyRequest(key_id=key), timeout=10)
    wait_until(lambda: client.encrypt(key, b"x").status == 200, timeout=15)
    assert ok(client.decrypt(key, sealed))["plaintext"] == b64(b"before")


def test_a_key_pending_deletion_refuses_encrypt(xks: Xks, client: XksClient) -> None:
    key = xks.new_key("to delete")
    xks.keys.ScheduleKeyDeletion(
        pb.ScheduleKeyDeletionRequest(key_id=key, pending_window_in_days=7), timeout=10
    )
    wait_until(lambda: client.encrypt(key, b"x").status != 200, timeout=15)
    assert_error(client.encrypt(key, b"x"), 400, "InvalidStateException")
    metadata = client.get_key_metadata(
        key
    )  # keyStatus is ENABLED or DISABLED; InvalidStateException is "ALL"
    if metadata.status == 200:
        assert metadata.body["keyStatus"] == "DISABLED"
    else:
        assert_error(metadata, 400, "InvalidStateException")


@pytest.mark.parametrize("operation", ["metadata", "encrypt", "decrypt"])
@pytest.mark.parametrize("missing", ["never-created", "uuid"])
def test_an_unknown_key_is_key_not_found(
    client: XksClient, key_id: str, operation: str, missing: str
) -> None:
    unknown = "no-such-key" if missing == "never-created" else str(uuid.uuid4())
    sealed = seal(client, key_id, b"x")
    reply = {
        "metadata": lambda: client.get_key_metadata(unknown),
        "encrypt": lambda: client.encrypt(unknown, b"x"),
        "decrypt": lambda: client.decrypt(unknown, sealed),
    }[operation]()
    assert_error(reply, 404, "KeyNotFoundException")


@pytest.mark.parametrize("operation", ["metadata", "encrypt", "decrypt"])
def test_another_tenants_key_is_key_not_found(
    xks: Xks, client: XksClient, key_id: str, operation: str
) -> None:
    """Key store /globex/xks is tenant globex: tenant local's key does not exist there."""
    sealed = seal(client, key_id, b"x")
    with xks.client(xks.cred_b, PREFIX_B) as globex:
        reply = {
            "metadata": lambda: globex.get_key_metadata(key_id),
            "encrypt": lambda: globex.encrypt(key_id, b"x"),
            "decrypt": lambda: globex.decrypt(key_id, sealed),
        }[operation]()
    assert_error(reply, 404, "KeyNotFoundException")


def denying_policy(kind: str) -> str:
    """A key policy that does not allow the XKS principal: only the tenant's admin, or an explicit deny."""
    admin = {
        "Effect": "Allow",
        "Principal": {"HSM": f"arn:hsmstore:iam::{TENANT_A}:role/admin"},
        "Action": "kms:*",
        "Resource": "*",
    }
    statements: list[dict[str, Any]] = [admin]
    if kind == "explicit-deny":
        root = {
            "Effect": "Allow",
            "Principal": {"HSM": f"arn:hsmstore:iam::{TENANT_A}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
        deny = {
            "Effect": "Deny",
            "Principal": {"HSM": principal_arn(TENANT_A)},
            "Action": "kms:*",
            "Resource": "*",
        }
        statements += [root, deny]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@pytest.mark.parametrize("kind", ["not-allowed", "explicit-deny"])
def test_a_key_policy_denial_is_access_denied(xks: Xks, client: XksClient, kind: str) -> None:
    key = xks.new_key("denied")
    sealed = seal(client, key, b"before the policy")
    xks.keys.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key, policy=denying_policy(kind)), timeout=10)
    wait_until(lambda: client.encrypt(key, b"x").status != 200, timeout=15)
    assert_error(client.encrypt(key, b"x"), 403, "AccessDeniedException")
    assert_error(client.decrypt(key, sealed), 403, "AccessDeniedException")
    assert_error(client.get_key_metadata(key), 403, "AccessDeniedException")
    ok(client.get_health_status())  # health is never subject to it


# ------------------------------------------------------------------ authentication


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


SIGNING_FAULTS: dict[str, Callable[[Xks], dict[str, Any]]] = {
    "another-secret": lambda x: {"credential": XksCredential(AKID_A1, new_secret())},
    "unknown-access-key-id": lambda x: {
        "credential": XksCredential("AKIAXKSUNKNOWN2345ABCD", x.cred_a1.secret)
    },
    "another-key-stores-credential": lambda x: {"credential": x.cred_b},
    "another-region": lambda x: {"region": "eu-west-1"},
    "another-service": lambda x: {"service": "kms"},
    "dated-6-minutes-ago": lambda x: {"at": now() - SKEW - datetime.timedelta(minutes=1)},
    "dated-6-minutes-ahead": lambda x: {"at": now() + SKEW + datetime.timedelta(minutes=1)},
    "unsigned": lambda x: {"signed": False},
}


@pytest.mark.parametrize("fault", list(SIGNING_FAULTS))
@pytest.mark.parametrize("api", ["health", "metadata", "encrypt"])
def test_a_bad_signature_is_authentication_failed(
    xks: Xks, client: XksClient, key_id: str, api: str, fault: str
) -> None:
    signing = SIGNING_FAULTS[fault](xks)
    reply = {
        "health": lambda: client.get_health_status(**signing),
        "metadata": lambda: client.get_key_metadata(key_id, **signing),
        "encrypt": lambda: client.encrypt(key_id, b"x", **signing),
    }[api]()
    assert_error(reply, 401, "AuthenticationFailedException")


def test_a_body_changed_after_signing_is_authentication_failed(client: XksClient, key_id: str) -> None:
    path = client.key_path(key_id, "encrypt")
    signed_body = json.dumps(encrypt_body(b"signed")).encode()
    sent_body = json.dumps(encrypt_body(b"forged")).encode()
    headers = sign(client.base_url + path, signed_body, client.credential, REGION)
    assert_error(client.send("POST", path, sent_body, headers), 401, "AuthenticationFailedException")


def test_a_signature_for_another_path_is_authentication_failed(client: XksClient, key_id: str) -> None:
    body = json.dumps({"requestMetadata": key_metadata_metadata()}).encode()
    headers = sign(
        client.base_url + client.key_path(str(uuid.uuid4()), "metadata"), body, client.credential, REGION
    )
    reply = client.send("POST", client.key_path(key_id, "metadata"), body, headers)
    assert_error(reply, 401, "AuthenticationFailedException")


def test_the_second_credential_of_a_key_store_works(xks: Xks, key_id: str) -> None:
    """Rotation: "at least 2 concurrent credential sets per path prefix"."""
    with xks.client(xks.cred_a2) as rotated:
        ok(rotated.get_health_status())
        ok(rotated.get_key_metadata(key_id))


@pytest.mark.parametrize("minutes", [-4, 4])
def test_a_request_within_the_clock_skew_is_accepted(client: XksClient, key_id: str, minutes: int) -> None:
    ok(client.get_key_metadata(key_id, at=now() + datetime.timedelta(minutes=minutes)))


def test_a_signature_over_more_headers_is_accepted(client: XksClient, key_id: str) -> None:
    """SigV4 lets the signer pick SignedHeaders; a verifier must not insist on host;x-amz-date only."""
    ok(client.get_key_metadata(key_id, sign_content_type=True))


def test_the_same_signed_request_may_be_sent_twice(client: XksClient, key_id: str) -> None:
    """SigV4 has no nonce: within the window each copy is valid (bench/xks.py relies on it)."""
    path = client.key_path(key_id, "encrypt")
    body = json.dumps(encrypt_body(b"again")).encode()
    headers = sign(client.base_url + path, body, client.credential, REGION)
    for _ in range(2):
        ok(client.send("POST", path, body, headers))


# ------------------------------------------------------------------ routing and methods


@pytest.mark.parametrize(
    "suffix", ["/health", "/keys/{key}/metadata", "/keys/{key}/encrypt", "/keys/{key}/decrypt"]
)
def test_get_on_an_api_uri_is_method_not_allowed(client: XksClient, key_id: str, suffix: str) -> None:
    path = client.path(suffix.format(key=key_id))
    assert client.signed_send(path, b"", method="GET").status == 405


@pytest.mark.parametrize(
    "path",
    [
        "/no/such/prefix/kms/xks/v1/health",
        PREFIX_A + "/kms/xks/v2/health",
        PREFIX_A + "/kms/xks/v1/healthz",
        PREFIX_A + "/kms/xks/v1/keys/{key}/rotate",
        PREFIX_A + "/kms/xks/v1/keys/{key}",
        PREFIX_A + "/kms/xks/v1/keys",
        "/",
    ],
)
def test_an_unknown_uri_path_is_invalid_uri_path(client: XksClient, key_id: str, path: str) -> None:
    body = json.dumps({"requestMetadata": health_metadata()}).encode()
    assert_error(client.signed_send(path.format(key=key_id), body), 404, "InvalidUriPathException")


# ------------------------------------------------------------------ validation


def encrypt_without(*path: str) -> dict[str, Any]:
    body = encrypt_body(b"x", aad=b"a")
    target = body
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return body


def encrypt_with(**fields: Any) -> dict[str, Any]:
    return encrypt_body(b"x") | fields


INVALID_ENCRYPT_BODIES: dict[str, bytes] = {
    "not-json": b"{not json",
    "empty-body": b"",
    "json-array": b"[]",
    "json-string": b'"plaintext"',
    "no-requestMetadata": json.dumps(encrypt_without("requestMetadata")).encode(),
    "no-plaintext": json.dumps(encrypt_without("plaintext")).encode(),
    "no-encryptionAlgorithm": json.dumps(encrypt_without("encryptionAlgorithm")).encode(),
    "no-awsPrincipalArn": json.dumps(encrypt_without("requestMetadata", "awsPrincipalArn")).encode(),
    "no-kmsKeyArn": json.dumps(encrypt_without("requestMetadata", "kmsKeyArn")).encode(),
    "no-kmsOperation": json.dumps(encrypt_without("requestMetadata", "kmsOperation")).encode(),
    "no-kmsRequestId": json.dumps(encrypt_without("requestMetadata", "kmsRequestId")).encode(),
    "requestMetadata-not-object": json.dumps(encrypt_with(requestMetadata="x")).encode(),
    "plaintext-bad-base64": json.dumps(encrypt_with(plaintext="not*base64!")).encode(),
    "plaintext-not-string": json.dumps(encrypt_with(plaintext=12)).encode(),
    "aad-bad-base64": json.dumps(encrypt_with(additionalAuthenticatedData="%%%")).encode(),
    "algorithm-aes-cbc": json.dumps(encrypt_with(encryptionAlgorithm="AES_CBC")).encode(),
    "algorithm-lowercase": json.dumps(encrypt_with(encryptionAlgorithm="aes_gcm")).encode(),
    "cdiv-algorithm-md5": json.dumps(encrypt_with(ciphertextDataIntegrityValueAlgorithm="MD5")).encode(),
}


@pytest.mark.parametrize("case", list(INVALID_ENCRYPT_BODIES))
def test_an_invalid_encrypt_request_is_validation_exception(
    client: XksClient, key_id: str, case: str
) -> None:
    reply = client.signed_send(client.key_path(key_id, "encrypt"), INVALID_ENCRYPT_BODIES[case])
    assert_error(reply, 400, "ValidationException")


@pytest.mark.parametrize("missing", ["awsPrincipalArn", "kmsOperation", "kmsRequestId"])
def test_key_metadata_without_a_required_metadata_field_is_validation_exception(
    client: XksClient, key_id: str, missing: str
) -> None:
    metadata = key_metadata_metadata()
    del metadata[missing]
    assert_error(client.get_key_metadata(key_id, metadata), 400, "ValidationException")


def test_key_metadata_with_bad_json_is_validation_exception(client: XksClient, key_id: str) -> None:
    assert_error(client.signed_send(client.key_path(key_id, "metadata"), b"{"), 400, "ValidationException")


DECRYPT_FIELD_FAULTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no-requestMetadata": lambda b: b.pop("requestMetadata"),
    "no-kmsKeyArn": lambda b: b["requestMetadata"].pop("kmsKeyArn"),
    "no-encryptionAlgorithm": lambda b: b.pop("encryptionAlgorithm"),
    "algorithm-aes-cbc": lambda b: b.update(encryptionAlgorithm="AES_CBC"),
    "ciphertext-bad-base64": lambda b: b.update(ciphertext="***"),
    "iv-bad-base64": lambda b: b.update(initializationVector="@@"),
    "tag-bad-base64": lambda b: b.update(authenticationTag="!"),
}
# The spec's InvalidCiphertextException covers a ciphertext, IV or tag "missing, or otherwise invalid";
# its ValidationException "input parameters are invalid": either 400 is the spec's.
DECRYPT_SHAPE_FAULTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no-ciphertext": lambda b: b.pop("ciphertext"),
    "no-iv": lambda b: b.pop("initializationVector"),
    "no-tag": lambda b: b.pop("authenticationTag"),
    "iv-8-bytes": lambda b: b.update(initializationVector=b64(bytes(8))),
    "iv-17-bytes": lambda b: b.update(initializationVector=b64(bytes(17))),
    "tag-12-bytes": lambda b: b.update(authenticationTag=b64(bytes(12))),
    "ctm-21-bytes": lambda b: b.update(ciphertextMetadata=b64(bytes(21))),
    "empty-ciphertext": lambda b: b.update(ciphertext=""),
}


def decrypt_request(client: XksClient, key_id: str) -> dict[str, Any]:
    return decrypt_body(seal(client, key_id, b"payload", b"aad"), aad=b"aad")


@pytest.mark.parametrize("case", list(DECRYPT_FIELD_FAULTS))
def test_an_invalid_decrypt_request_is_validation_exception(
    client: XksClient, key_id: str, case: str
) -> None:
    body = decrypt_request(client, key_id)
    DECRYPT_FIELD_FAULTS[case](body)
    assert_error(client.post_json(client.key_path(key_id, "decrypt"), body), 400, "ValidationException")


@pytest.mark.parametrize("case", list(DECRYPT_SHAPE_FAULTS))
def test_a_malformed_decrypt_input_is_refused_with_400(client: XksClient, key_id: str, case: str) -> None:
    body = decrypt_request(client, key_id)
    DECRYPT_SHAPE_FAULTS[case](body)
    reply = client.post_json(client.key_path(key_id, "decrypt"), body)
    assert_error(reply, 400, "ValidationException", "InvalidCiphertextException")


# ------------------------------------------------------------------ audit


def audit_records(xks: Xks, since: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """Tenant local's trail through LookupEvents (the channel is its admin), every page from ``since``."""
    records: list[dict[str, Any]] = []
    token = ""
    request = pb.LookupEventsRequest(max_results=50)
    if since is not None:
        request.start_time.FromDatetime(since)
    while True:
        request.next_token = token
        page = xks.audit.LookupEvents(request, timeout=10)
        records += [json.loads(event.cloud_trail_event) for event in page.events]
        token = page.next_token
        if not token:
            return records


def records_with(records: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [record for record in records if text in json.dumps(record)]


def test_each_call_is_audited_once_with_its_request_metadata_and_no_plaintext(
    xks: Xks, client: XksClient, key_id: str
) -> None:
    since = now() - datetime.timedelta(seconds=5)
    plaintext = b"audit-me-" + secrets.token_hex(8).encode()
    ids = {api: f"xks-audit-{api}-{uuid.uuid4()}" for api in ("metadata", "encrypt", "decrypt", "health")}
    via = {"kmsViaService": "ebs", "awsSourceVpc": "vpc-audit"}
    ok(client.get_key_metadata(key_id, key_metadata_metadata(request_id=ids["metadata"])))
    sealed = seal(client, key_id, plaintext, metadata=crypto_metadata("Encrypt", ids["encrypt"], **via))
    ok(client.decrypt(key_id, sealed, metadata=crypto_metadata("Decrypt", ids["decrypt"], **via)))
    ok(client.get_health_status(health_metadata(request_id=ids["health"])))
    key_calls = ("metadata", "encrypt", "decrypt")
    wait_until(
        lambda: all(records_with(audit_records(xks, since), ids[api]) for api in key_calls), timeout=20
    )
    records = audit_records(xks, since)
    for api in key_calls:
        found = records_with(records, ids[api])
        assert len(found) == 1, (api, found)
        text = json.dumps(found[0])
        assert KMS_PRINCIPAL in text  # the full requestMetadata, awsPrincipalArn included
        if api != "metadata":
            assert KMS_KEY_ARN in text and "vpc-audit" in text and "ebs" in text
        assert key_id in text
        for secret in (b64(plaintext), plaintext.decode(), xks.cred_a1.secret):
            assert secret not in text
    print(
        "XKS audit event names:", sorted({records_with(records, ids[a])[0]["eventName"] for a in key_calls})
    )


def hsmstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


def test_refused_calls_are_audited(tmp_path: Path) -> None:
    """Acceptance: another secret, a replay outside the skew, another tenant's key: "refused and audited"."""
    own = start_xks_server(tmp_path / "data", tmp_path / "config")
    try:
        key = own.new_key("refusals")
        ids = {name: f"xks-refused-{name}-{uuid.uuid4()}" for name in ("secret", "stale", "tenant", "denied")}
        with own.client() as client, own.client(own.cred_b, PREFIX_B) as globex:
            wrong = XksCredential(AKID_A1, new_secret())
            stale = now() - datetime.timedelta(minutes=6)
            assert (
                client.encrypt(
                    key, b"x", metadata=crypto_metadata("Encrypt", ids["secret"]), credential=wrong
                ).status
                == 401
            )
            assert (
                client.encrypt(key, b"x", metadata=crypto_metadata("Encrypt", ids["stale"]), at=stale).status
                == 401
            )
            assert globex.encrypt(key, b"x", metadata=crypto_metadata("Encrypt", ids["tenant"])).status == 404
            own.keys.PutKeyPolicy(
                pb.PutKeyPolicyRequest(key_id=key, policy=denying_policy("not-allowed")), timeout=10
            )
            wait_until(lambda: client.encrypt(key, b"x").status == 403, timeout=15)
            assert client.encrypt(key, b"x", metadata=crypto_metadata("Encrypt", ids["denied"])).status == 403
            flush_id = f"xks-flush-{uuid.uuid4()}"
            ok(client.encrypt(own.new_key("after"), b"flush", metadata=crypto_metadata("Encrypt", flush_id)))
        wait_until(
            lambda: bool(records_with(audit_records(own), flush_id)), timeout=20
        )  # the refusals are in too
    finally:
        own.server.stop()
    exported = hsmstore_cli("audit", "export", "--format", "jsonl", "--data-dir", str(tmp_path / "data"))
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    text_of = {name: records_with(records, request_id) for name, request_id in ids.items()}
    # A refused signature's body is unauthenticated, yet the record keeps its requestMetadata:
    # the kmsRequestId finds each refusal.
    print("XKS refusals:", {n: [(r["eventName"], r.get("errorCode")) for r in text_of[n]] for n in ids})
    for name, error in (
        ("secret", "AuthenticationFailed"),
        ("stale", "AuthenticationFailed"),
        ("tenant", "NotFound"),
        ("denied", "AccessDenied"),
    ):
        assert len(text_of[name]) == 1, (name, records[-10:])
        assert error in str(text_of[name][0].get("errorCode")), text_of[name]
    for record in records:
        assert own.cred_a1.secret not in json.dumps(record)


# ------------------------------------------------------------------ the token's real state

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
HEALTH_CACHE_SECONDS = 60  # spec: a background deep check may be cached "at most 1 minute old"


def test_health_reports_a_token_outage_and_the_recovery(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The token's directory renamed away (as test_token_outage.py does; as uid 65534, since root
    ignores permissions): health stops reporting ACTIVE, key calls fail with a server-side error of
    the spec (InternalException 500 or DependencyTimeoutException 503), and both recover."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("running as root needs util-linux's setpriv to drop to an unprivileged uid")
    base = Path(tempfile.mkdtemp(prefix="hsmstore-xks-outage-"))  # under /tmp, traversable by uid 65534
    base.chmod(0o755)
    data_dir, config_dir = base / "data", base / "config"
    data_dir.mkdir()
    credential = XksCredential(AKID_A1, new_secret())
    config = write_config(config_dir, REGION, [KeyStoreConfig(PREFIX_A, TENANT_A, PRINCIPAL, [credential])])
    if os.geteuid() == 0:
        for path in (data_dir, config_dir, *config_dir.iterdir()):
            os.chown(path, NOBODY, NOBODY)
    server = ServerProcess(
        data_dir,
        ["--xks-listen", "127.0.0.1:0", "--xks-config", str(config)],
        command_prefix=AS_NOBODY if os.geteuid() == 0 else (),
    )
    tokens = data_dir / "softhsm" / "tokens"
    try:
        server.start()
        pb_grpc.AdminStub(server.channel).PutIdentityPolicy(
            pb.PutIdentityPolicyRequest(
                principal=principal_arn(TENANT_A), policy_name="xks", policy=ALLOW_ALL
            )
        )
        key = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        with XksClient(xks_url(server), PREFIX_A, credential, REGION) as client:
            sealed = seal(client, key, b"before")
            assert active(client.get_health_status())
            away = tokens.with_name("tokens.away")
            tokens.rename(away)
            try:
                reply = client.encrypt(key, b"x")
                assert_error(reply, reply.status, "InternalException", "DependencyTimeoutException")
                assert reply.status in (500, 503), reply
                print("XKS Encrypt during a token outage:", reply.status, reply.body)
                wait_until(lambda: not active(client.get_health_status()), HEALTH_CACHE_SECONDS + 15)
                unhealthy = client.get_health_status()
                print("XKS health during a token outage:", unhealthy.status, unhealthy.body)
                if unhealthy.status == 200:
                    statuses = {member["healthStatus"] for member in unhealthy.body["ekmFleetDetails"]}
                    assert statuses <= {"UNAVAILABLE", "DEGRADED"}, unhealthy
                else:
                    assert_error(
                        unhealthy, unhealthy.status, "InternalException", "DependencyTimeoutException"
                    )
            finally:
                away.rename(tokens)
            wait_until(lambda: client.decrypt(key, sealed).status == 200, 15)
            wait_until(lambda: active(client.get_health_status()), HEALTH_CACHE_SECONDS + 15)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def active(reply: Reply) -> bool:
    return reply.status == 200 and any(m["healthStatus"] == "ACTIVE" for m in reply.body["ekmFleetDetails"])
