"""The XKS transport on fakes (hsmstore/xks/): routing, methods, SigV4, JSON, error bodies, audit.

The ASGI app is driven directly (no socket); requests are signed with botocore's SigV4Auth.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hsmstore import errors
from hsmstore.core.model import Caller, principal_arn
from hsmstore.core.use_cases import build_use_cases
from hsmstore.xks.calls import HealthFacts, XksCalls
from hsmstore.xks.config import KeyStoreEntry, XksConfig
from hsmstore.xks.errors import printable, xks_error_of
from hsmstore.xks.server import MAX_BODY_BYTES, XksApp
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

REGION = "us-east-1"
PREFIX = "/example/prefix"
AKID = "AKIAXKSEXAMPLE2345ABCDE"
SECRET = base64.b64encode(os.urandom(32)).decode()
ADMIN = Caller("acme", principal_arn("acme", "role", "admin"), kind="role", name="admin")
METADATA = {
    "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
    "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k",
    "kmsOperation": "Encrypt",
    "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
}


class Clock:
    def __init__(self, offset: timedelta = timedelta()) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class RecordingSink:
    def __init__(self) -> None:
        self.records: list[Mapping[str, Any]] = []

    def record(self, record: Mapping[str, Any]) -> None:
        self.records.append(record)


class World:
    def __init__(self, offset: timedelta = timedelta()) -> None:
        use_cases = build_use_cases(TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), Clock())
        assert use_cases.external is not None
        self.key_id = use_cases.creation.create_key(ADMIN).key.key_id
        self.use_cases = use_cases
        entry = KeyStoreEntry(PREFIX, "acme", "role/admin", {AKID: SECRET})
        self.sink = RecordingSink()
        self.calls = XksCalls(
            use_cases.external,
            XksConfig(REGION, {PREFIX: entry}),
            Clock(offset),
            HealthFacts(1, "hsmstore test", "SoftHSM2"),
            audit_sink=self.sink,
        )
        self.app = XksApp(self.calls, threads=2)

    def request(
        self,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        *,
        method: str = "POST",
        secret: str | None = SECRET,
        region: str = REGION,
        extra_headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        url = f"http://xks.example.com{path}"
        headers = {"Content-Type": "application/json", "Host": "xks.example.com", **(extra_headers or {})}
        if secret is not None:
            signed = AWSRequest(method=method, url=url, data=data, headers=headers)
            SigV4Auth(Credentials(AKID, secret), "kms-xks-proxy", region).add_auth(signed)
            headers = dict(signed.headers.items())
        return asyncio.run(self._send(method, path, data, headers))

    async def _send(
        self, method: str, path: str, data: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
            "client": ("127.0.0.1", 5000),
        }
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": data, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        status = sent[0]["status"]
        response_headers = {name.decode(): value.decode() for name, value in sent[0]["headers"]}
        body = sent[1]["body"]
        document = json.loads(body) if response_headers["content-type"] == "application/json" else {}
        return status, document, response_headers


@pytest.fixture
def world() -> World:
    return World()


def keys_path(key_id: str, action: str) -> str:
    return f"{PREFIX}/kms/xks/v1/keys/{key_id}/{action}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_signed_encrypt_then_decrypt_round_trips(world: World) -> None:
    status, sealed, _ = world.request(
        keys_path(world.key_id, "encrypt"),
        {"requestMetadata": METADATA, "plaintext": b64(b"hello"), "encryptionAlgorithm": "AES_GCM"},
    )
    assert status == 200, sealed
    status, opened, _ = world.request(
        keys_path(world.key_id, "decrypt"),
        {
            "requestMetadata": {**METADATA, "kmsOperation": "Decrypt"},
            "encryptionAlgorithm": "AES_GCM",
            **{k: sealed[k] for k in ("ciphertext", "initializationVector", "authenticationTag")},
            "ciphertextMetadata": sealed["ciphertextMetadata"],
        },
    )
    assert (status, base64.b64decode(opened["plaintext"])) == (200, b"hello")


def test_unknown_members_are_tolerated_and_an_unknown_kms_operation_accepted(world: World) -> None:
    status, _, _ = world.request(
        keys_path(world.key_id, "metadata"),
        {"requestMetadata": {**METADATA, "kmsOperation": "SomeFutureOperation", "newField": "x"}, "extra": 1},
    )
    assert status == 200


def test_an_unknown_path_is_invalid_uri_path_before_authentication(world: World) -> None:
    for path in (
        "/other/kms/xks/v1/health",
        f"{PREFIX}/kms/xks/v1/keys/k/sign",
        f"{PREFIX}/kms/xks/v2/health",
    ):
        status, answer, _ = world.request(path, {"requestMetadata": METADATA}, secret=None)
        assert (status, answer["errorName"]) == (404, "InvalidUriPathException")
    assert world.sink.records == []


def test_get_on_an_api_path_is_405(world: World) -> None:
    status, answer, headers = world.request(keys_path(world.key_id, "metadata"), method="GET", secret=None)
    assert status == 405 and answer["errorName"] and headers["allow"] == "POST"


def test_ping_answers_without_authentication(world: World) -> None:
    assert world.request("/ping", method="GET", secret=None)[0] == 200


@pytest.mark.parametrize(
    ("secret", "region", "offset"),
    [
        ("other-" + SECRET[6:], REGION, timedelta()),
        (SECRET, "eu-west-1", timedelta()),
        (SECRET, REGION, timedelta(minutes=6)),
        (SECRET, REGION, timedelta(minutes=-6)),
        (None, REGION, timedelta()),
    ],
    ids=["another-secret", "another-region", "stale", "from-the-future", "unsigned"],
)
def test_a_bad_signature_is_authentication_failed_and_audited(
    secret: str | None, region: str, offset: timedelta
) -> None:
    world = World(offset)
    status, answer, _ = world.request(
        f"{PREFIX}/kms/xks/v1/health", {"requestMetadata": METADATA}, secret=secret, region=region
    )
    assert (status, answer["errorName"]) == (401, "AuthenticationFailedException")
    (record,) = world.sink.records
    assert record["eventName"] == "XksGetHealthStatus"
    assert record["errorCode"] == "AuthenticationFailedException"


def test_a_tampered_body_fails_the_signature(world: World) -> None:
    body = json.dumps({"requestMetadata": METADATA}).encode()
    signed = AWSRequest(
        method="POST", url=f"http://h{PREFIX}/kms/xks/v1/health", data=body, headers={"Host": "h"}
    )
    SigV4Auth(Credentials(AKID, SECRET), "kms-xks-proxy", REGION).add_auth(signed)
    tampered = body.replace(b"Alice", b"Mallory")
    status, answer, _ = asyncio.run(
        world._send("POST", f"{PREFIX}/kms/xks/v1/health", tampered, dict(signed.headers.items()))
    )
    assert (status, answer["errorName"]) == (401, "AuthenticationFailedException")


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", json.dumps({"requestMetadata": {"kmsOperation": "Encrypt"}}).encode()],
    ids=["not-json", "not-an-object", "metadata-incomplete"],
)
def test_a_malformed_body_is_a_validation_error(world: World, body: bytes) -> None:
    status, answer, _ = world.request(keys_path(world.key_id, "metadata"), body)
    assert (status, answer["errorName"]) == (400, "ValidationException")


def test_bad_base64_is_a_validation_error(world: World) -> None:
    status, answer, _ = world.request(
        keys_path(world.key_id, "encrypt"),
        {"requestMetadata": METADATA, "plaintext": "***", "encryptionAlgorithm": "AES_GCM"},
    )
    assert (status, answer["errorName"]) == (400, "ValidationException")


def test_a_body_over_the_bound_is_unsupported_and_closes_the_connection(world: World) -> None:
    status, answer, headers = world.request(keys_path(world.key_id, "encrypt"), b"x" * (MAX_BODY_BYTES + 1))
    assert (status, answer["errorName"], headers.get("connection")) == (
        501,
        "UnsupportedOperationException",
        "close",
    )


def test_an_unknown_key_is_key_not_found(world: World) -> None:
    status, answer, _ = world.request(
        keys_path("1234abcd-12ab-34cd-56ef-1234567890ab", "metadata"), {"requestMetadata": METADATA}
    )
    assert (status, answer["errorName"]) == (404, "KeyNotFoundException")


def test_a_disabled_key_is_invalid_state(world: World) -> None:
    world.use_cases.keys.disable_key(ADMIN, world.key_id)
    status, answer, _ = world.request(
        keys_path(world.key_id, "encrypt"),
        {"requestMetadata": METADATA, "plaintext": b64(b"x"), "encryptionAlgorithm": "AES_GCM"},
    )
    assert (status, answer["errorName"]) == (400, "InvalidStateException")


def test_the_audit_record_holds_the_request_metadata_and_never_the_plaintext(world: World) -> None:
    secret_text = b"attack at dawn"
    world.request(
        keys_path(world.key_id, "encrypt"),
        {"requestMetadata": METADATA, "plaintext": b64(secret_text), "encryptionAlgorithm": "AES_GCM"},
    )
    (record,) = world.sink.records
    assert record["eventName"] == "XksEncrypt"
    assert record["requestParameters"]["requestMetadata"] == METADATA
    assert record["requestParameters"]["accessKeyId"] == AKID
    dumped = json.dumps(record)
    assert b64(secret_text) not in dumped and "attack" not in dumped


def test_health_answers_the_spec_shape(world: World) -> None:
    status, health, _ = world.request(
        f"{PREFIX}/kms/xks/v1/health",
        {"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}},
    )
    assert status == 200
    assert health["xksProxyFleetSize"] == 1 and health["xksProxyVendor"] == "hsmstore"
    assert health["ekmFleetDetails"] == [
        {"id": "default", "model": "PKCS#11 token", "healthStatus": "ACTIVE"}
    ]


@pytest.mark.parametrize(
    ("error", "name", "status"),
    [
        (errors.UnauthenticatedException("x"), "AuthenticationFailedException", 401),
        (errors.AccessDeniedException("x"), "AccessDeniedException", 403),
        (errors.NotFoundException("x"), "KeyNotFoundException", 404),
        (errors.DisabledException("x"), "InvalidStateException", 400),
        (errors.KMSInvalidStateException("x"), "InvalidStateException", 400),
        (errors.InvalidCiphertextException("x"), "InvalidCiphertextException", 400),
        (errors.InvalidKeyUsageException("x"), "InvalidKeyUsageException", 400),
        (errors.ValidationException("x"), "ValidationException", 400),
        (errors.UnsupportedOperationException("x"), "UnsupportedOperationException", 501),
        (errors.ThrottlingException("x"), "ThrottlingException", 429),
        (errors.DependencyTimeoutException("x"), "DependencyTimeoutException", 503),
        (errors.DependencyUnavailableException("x"), "InternalException", 500),
        (errors.KMSInternalException("x"), "InternalException", 500),
        (errors.LimitExceededException("x"), "InternalException", 500),
    ],
)
def test_each_hsmstore_error_has_its_spec_name_and_status(
    error: errors.KMSError, name: str, status: int
) -> None:
    assert xks_error_of(error) == (name, status)


def test_error_messages_are_printable_ascii_under_512_characters() -> None:
    text = printable("caf\u00e9\n" + "x" * 1000)
    assert len(text) < 512 and all(" " <= char <= "~" for char in text)


def test_a_replaced_config_takes_the_new_credentials_at_once(world: World) -> None:
    """SIGHUP reads the file again (cli/xks_endpoint.py reload_xks): rotation without a restart."""
    rotated = base64.b64encode(os.urandom(32)).decode()
    entry = KeyStoreEntry(PREFIX, "acme", "role/admin", {AKID: rotated})
    world.calls.replace_config(XksConfig(REGION, {PREFIX: entry}))
    health = f"{PREFIX}/kms/xks/v1/health"
    body = {"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}}
    assert world.request(health, body)[0] == 401
    assert world.request(health, body, secret=rotated)[0] == 200


def test_xks_calls_count_against_the_kms_operation_they_do_and_health_against_none() -> None:
    from hsmstore.core.model import Caller
    from hsmstore.xks.calls import quota_admission

    asked: list[str] = []
    admission = quota_admission(lambda caller, operation: asked.append(operation))
    caller = Caller("local", "arn:hsmstore:iam::local:service/kms-xks")
    for name in ("XksEncrypt", "XksDecrypt", "XksGetKeyMetadata", "XksGetHealthStatus"):
        admission(caller, name)
    assert asked == ["Encrypt", "Decrypt", "DescribeKey"]
