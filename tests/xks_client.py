"""A small AWS KMS External Key Store (XKS) proxy client, from the XKS proxy API spec v1.0.3 (issue 21).

It plays the part of AWS KMS's XKS Proxy Management Fleet: it builds the
spec's JSON requests for the four APIs, signs them with botocore's SigV4
signer (service ``kms-xks-proxy``, the key store's region; spec Appendix A)
and sends them over one HTTP/1.1 keep-alive connection, returning the HTTP
status and the decoded JSON body. Nothing here is taken from hsmstore's own
XKS code: the conformance tests (tests/integration/test_xks_conformance.py)
and bench/xks.py judge the server by this client, and outside conformance
clients will judge it by the spec.

What the spec fixes and this module encodes:

* URIs: ``{uri_prefix}/kms/xks/v1/health`` and
  ``{uri_prefix}/kms/xks/v1/keys/{externalKeyId}/{metadata|encrypt|decrypt}``,
  all POST, ``Content-Type: application/json``.
* ``requestMetadata`` per API (Appendix B): GetHealthStatus carries
  ``kmsRequestId`` and ``kmsOperation``; GetKeyMetadata ``awsPrincipalArn``,
  ``kmsOperation``, ``kmsRequestId`` and optional ``awsSourceVpc``/
  ``awsSourceVpce``/``kmsKeyArn``; Encrypt and Decrypt ``awsPrincipalArn``,
  ``kmsKeyArn``, ``kmsOperation``, ``kmsRequestId`` and optional
  ``awsSourceVpc``/``awsSourceVpce``/``kmsViaService``.
* Binary fields are standard base64 (RFC 4648 section 4).
* CDIV (Appendix C): ``base64(SHA-256(AAD || CTM || IV || ciphertext || tag))``
  over the decoded bytes, an absent field counting as empty.
* SigV4 as KMS signs: ``SignedHeaders=host;x-amz-date`` (the spec's example),
  so ``Content-Type`` is added after signing unless ``sign_content_type``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import json
import secrets
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "kms-xks-proxy"  # spec Appendix A: the SigV4 service name
API_ROOT = "/kms/xks/v1"
AES_GCM = "AES_GCM"  # the one encryptionAlgorithm of spec v1
SHA_256 = "SHA_256"  # the one ciphertextDataIntegrityValueAlgorithm
KMS_PRINCIPAL = "arn:aws:iam::123456789012:user/Alice"  # the spec's examples
KMS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"

# ``hsmstore serve --xks-listen``: printed before its ``listening on`` line (issue 21).

# botocore reads the signing time from a module function: patching it is process-wide,
# so signings at a chosen time take this lock.
_CLOCK_LOCK = threading.Lock()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def cdiv(
    *, aad: bytes | None, ciphertext_metadata: bytes | None, iv: bytes, ciphertext: bytes, tag: bytes
) -> str:
    """The ciphertextDataIntegrityValue of spec Appendix C, base64: SHA-256 over the plain concatenation."""
    digest = hashlib.sha256((aad or b"") + (ciphertext_metadata or b"") + iv + ciphertext + tag)
    return b64(digest.digest())


def new_request_id() -> str:
    return str(uuid.uuid4())


def health_metadata(operation: str = "KmsHealthCheck", request_id: str | None = None) -> dict[str, Any]:
    """GetHealthStatus requestMetadata: kmsRequestId and kmsOperation only (Appendix B)."""
    return {"kmsRequestId": request_id or new_request_id(), "kmsOperation": operation}


def key_metadata_metadata(
    operation: str = "CreateKey", request_id: str | None = None, **optional: Any
) -> dict[str, Any]:
    """GetKeyMetadata requestMetadata; ``optional`` adds awsSourceVpc, awsSourceVpce, kmsKeyArn, ..."""
    return {
        "awsPrincipalArn": KMS_PRINCIPAL,
        "kmsOperation": operation,
        "kmsRequestId": request_id or new_request_id(),
        **optional,
    }


def crypto_metadata(operation: str, request_id: str | None = None, **optional: Any) -> dict[str, Any]:
    """Encrypt/Decrypt requestMetadata; ``optional`` adds awsSourceVpc, awsSourceVpce, kmsViaService, ..."""
    return {
        "awsPrincipalArn": KMS_PRINCIPAL,
        "kmsKeyArn": KMS_KEY_ARN,
        "kmsOperation": operation,
        "kmsRequestId": request_id or new_request_id(),
        **optional,
    }


def encrypt_body(
    plaintext: bytes,
    *,
    aad: bytes | None = None,
    want_cdiv: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "requestMetadata": dict(metadata) if metadata is not None else crypto_metadata("Encrypt"),
        "plaintext": b64(plaintext),
        "encryptionAlgorithm": AES_GCM,
    }
    if aad is not None:
        body["additionalAuthenticatedData"] = b64(aad)
    if want_cdiv:
        body["ciphertextDataIntegrityValueAlgorithm"] = SHA_256
    return body


@dataclass(frozen=True)
class Sealed:
    """An Encrypt response, decoded: what KMS packs into its ciphertext blob."""

    ciphertext: bytes
    iv: bytes
    tag: bytes
    ciphertext_metadata: bytes | None
    cdiv: str | None

    @classmethod
    def from_response(cls, body: Mapping[str, Any]) -> Sealed:
        ctm = body.get("ciphertextMetadata")
        return cls(
            ciphertext=unb64(body["ciphertext"]),
            iv=unb64(body["initializationVector"]),
            tag=unb64(body["authenticationTag"]),
            ciphertext_metadata=None if ctm is None else unb64(ctm),
            cdiv=body.get("ciphertextDataIntegrityValue"),
        )


def decrypt_body(
    sealed: Sealed, *, aad: bytes | None = None, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "requestMetadata": dict(metadata) if metadata is not None else crypto_metadata("Decrypt"),
        "encryptionAlgorithm": AES_GCM,
        "ciphertext": b64(sealed.ciphertext),
        "initializationVector": b64(sealed.iv),
        "authenticationTag": b64(sealed.tag),
    }
    if sealed.ciphertext_metadata is not None:
        body["ciphertextMetadata"] = b64(sealed.ciphertext_metadata)
    if aad is not None:
        body["additionalAuthenticatedData"] = b64(aad)
    return body


@dataclass(frozen=True)
class XksCredential:
    """An XKS proxy credential (not IAM's): access key id [A-Z2-7]{20,30}, secret 43-64 characters."""

    access_key_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or None if the body was not JSON
    raw: bytes = field(repr=False)
    content_type: str = ""

    @property
    def error_name(self) -> str | None:
        return self.body.get("errorName") if isinstance(self.body, dict) else None


@contextlib.contextmanager
def signing_clock(at: datetime.datetime | None) -> Iterator[None]:
    """botocore signs with ``at`` (UTC) instead of now: a stale or future request (spec: +-5 minutes)."""
    if at is None:
        yield
        return
    with _CLOCK_LOCK:
        real = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda *args, **kwargs: at
        try:
            yield
        finally:
            botocore.auth.get_current_datetime = real


def sign(
    url: str,
    body: bytes,
    credential: XksCredential,
    region: str,
    *,
    method: str = "POST",
    service: str = SERVICE,
    at: datetime.datetime | None = None,
    sign_content_type: bool = False,
) -> dict[str, str]:
    """The headers of ``method url`` with ``body``, signed by botocore's SigV4Auth."""
    headers = {"Content-Type": "application/json"} if sign_content_type else {}
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    with signing_clock(at):
        SigV4Auth(Credentials(credential.access_key_id, credential.secret), service, region).add_auth(request)
    signed = dict(request.headers.items())
    signed.setdefault("Content-Type", "application/json")
    return signed


class XksClient:
    """One key store's client: ``base_url`` (``http://host:port``), its URI prefix, credential and region.

    Every call returns a :class:`Reply`; errors are replies too (the tests assert on them).
    ``sign_with`` overrides one signing input per call: another credential, region,
    service or time, the way the spec's authentication failures are made.
    """

    def __init__(
        self, base_url: str, uri_prefix: str, credential: XksCredential, region: str, timeout: float = 30.0
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"XKS base URL must be http://HOST:PORT, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host, self.port = parts.hostname, parts.port
        self.uri_prefix = uri_prefix.rstrip("/")
        self.credential = credential
        self.region = region
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    # ------------------------------------------------------------ paths

    def path(self, suffix: str) -> str:
        return f"{self.uri_prefix}{API_ROOT}{suffix}"

    def key_path(self, key_id: str, operation: str) -> str:
        return self.path(f"/keys/{key_id}/{operation}")

    # ------------------------------------------------------------ wire

    def send(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> Reply:
        """One request on the keep-alive connection; reconnects once if the server closed it."""
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(method, path, body=body, headers=dict(headers))
                response = connection.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            try:
                decoded = json.loads(raw) if raw else None
            except ValueError:
                decoded = None
            return Reply(response.status, decoded, raw, response.getheader("Content-Type") or "")
        raise AssertionError("unreachable")

    def signed_send(
        self,
        path: str,
        body: bytes,
        *,
        method: str = "POST",
        credential: XksCredential | None = None,
        region: str | None = None,
        service: str = SERVICE,
        at: datetime.datetime | None = None,
        sign_content_type: bool = False,
        signed: bool = True,
    ) -> Reply:
        headers = (
            sign(
                self.base_url + path,
                body,
                credential or self.credential,
                region or self.region,
                method=method,
                service=service,
                at=at,
                sign_content_type=sign_content_type,
            )
            if signed
            else {"Content-Type": "application/json"}
        )
        return self.send(method, path, body, headers)

    def post_json(self, path: str, payload: Any, **signing: Any) -> Reply:
        return self.signed_send(path, json.dumps(payload).encode(), **signing)

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> XksClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ the four APIs

    def get_health_status(self, metadata: Mapping[str, Any] | None = None, **signing: Any) -> Reply:
        body = {"requestMetadata": dict(metadata) if metadata is not None else health_metadata()}
        return self.post_json(self.path("/health"), body, **signing)

    def get_key_metadata(
        self, key_id: str, metadata: Mapping[str, Any] | None = None, **signing: Any
    ) -> Reply:
        body = {"requestMetadata": dict(metadata) if metadata is not None else key_metadata_metadata()}
        return self.post_json(self.key_path(key_id, "metadata"), body, **signing)

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        *,
        aad: bytes | None = None,
        want_cdiv: bool = False,
        metadata: Mapping[str, Any] | None = None,
        **signing: Any,
    ) -> Reply:
        body = encrypt_body(plaintext, aad=aad, want_cdiv=want_cdiv, metadata=metadata)
        return self.post_json(self.key_path(key_id, "encrypt"), body, **signing)

    def decrypt(
        self,
        key_id: str,
        sealed: Sealed,
        *,
        aad: bytes | None = None,
        metadata: Mapping[str, Any] | None = None,
        **signing: Any,
    ) -> Reply:
        body = decrypt_body(sealed, aad=aad, metadata=metadata)
        return self.post_json(self.key_path(key_id, "decrypt"), body, **signing)


# ------------------------------------------------------------------ server set-up (tests and bench)


@dataclass(frozen=True)
class KeyStoreConfig:
    """One ``[[key_stores]]`` entry of the XKS TOML (issue 21): a URI prefix on one tenant."""

    uri_prefix: str
    tenant: str
    principal: str  # <kind>/<name>: the hsmstore principal the calls run as
    credentials: Sequence[XksCredential]


def new_secret(random_bytes: int = 32) -> str:
    """A secret of [A-Za-z0-9+/=]: 32 bytes give the spec's ``openssl rand 32 | base64`` (44 chars),
    48 bytes the maximum length, 64 chars."""
    return b64(secrets.token_bytes(random_bytes))


def write_config(directory: Path, region: str, stores: Iterable[KeyStoreConfig]) -> Path:
    """``directory/xks.toml``, each secret in its own 0600 file next to it (as the PIN file is)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f'region = "{region}"']
    for store in stores:
        entries = []
        for credential in store.credentials:
            secret_file = directory / f"xks-{credential.access_key_id.lower()}.secret"
            secret_file.touch(mode=0o600)
            secret_file.chmod(0o600)
            secret_file.write_text(credential.secret + "\n")
            entries.append(
                f'{{ access_key_id = "{credential.access_key_id}", secret_file = "{secret_file.name}" }}'
            )
        lines += [
            "",
            "[[key_stores]]",
            f'uri_prefix = "{store.uri_prefix}"',
            f'tenant = "{store.tenant}"',
            f'principal = "{store.principal}"',
            f"credentials = [ {', '.join(entries)} ]",
        ]
    path = directory / "xks.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
