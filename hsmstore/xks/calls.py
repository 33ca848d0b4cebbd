"""One XKS request: its route, its caller (SigV4), the call envelope, the JSON answer.

The XKS end of ``core/calls.py`` (as ``aws_json/dispatch.py`` is the AWS
protocol's): routing (:func:`route`), then, inside the envelope so that every
refusal is audited, the SigV4 check (``sigv4.py``), the spec's JSON members
(``requestMetadata`` first) and the use case (``core/crypto/external.py``).
An unknown path is answered before: 404 InvalidUriPathException, unaudited,
as the spec's route-then-authenticate order has it (and as gRPC answers an
unknown method).

Audit event names (docs/api.md "XKS"): ``XksGetHealthStatus``,
``XksGetKeyMetadata``, ``XksEncrypt``, ``XksDecrypt``. Their
``requestParameters`` hold the URI prefix, the externalKeyId, the access key
id, the algorithms and the whole ``requestMetadata``; never the plaintext,
ciphertext, AAD, IV, tag or ciphertextMetadata.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

from hsmstore.core.calls import Admission, CallEnvelope, CallObserver, CallOrigin, current_caller
from hsmstore.core.crypto.external import ExternalKeyOperations, RequestMetadata
from hsmstore.core.model import Caller
from hsmstore.core.ports import AuditSink
from hsmstore.core.ports.clock import Clock
from hsmstore.errors import KMSError, ValidationException
from hsmstore.xks.config import API_PATH, KeyStoreEntry, XksConfig
from hsmstore.xks.errors import INVALID_URI_PATH, error_body, xks_error_of
from hsmstore.xks.sigv4 import ReceivedRequest, verify

log = logging.getLogger("hsmstore.xks")

MAX_METADATA_MEMBER_CHARS: Final = 4096  # spec: ARNs up to 2048; room for what KMS adds later


class XksOperation(StrEnum):
    """The spec's four APIs, by the audit event name of each."""

    HEALTH = "XksGetHealthStatus"
    METADATA = "XksGetKeyMetadata"
    ENCRYPT = "XksEncrypt"
    DECRYPT = "XksDecrypt"


QUOTA_OPERATIONS: Final[dict[str, str]] = {
    XksOperation.METADATA: "DescribeKey",
    XksOperation.ENCRYPT: "Encrypt",
    XksOperation.DECRYPT: "Decrypt",
}
"""The request quota (core/quotas.py) each XKS call counts against: the KMS operation it does on
the key, so AWS KMS through the proxy and gRPC callers share the tenant's cryptographic quota.
Health has none: AWS KMS polls it, and throttling it would only mark the key store unhealthy."""


def quota_admission(admit: Admission) -> Admission:
    """``admit`` (core/quotas.py ``RequestQuotas.admit``) asked under :data:`QUOTA_OPERATIONS`'s names."""

    def admission(caller: Caller, name: str) -> None:
        if name != XksOperation.HEALTH:
            admit(caller, QUOTA_OPERATIONS.get(name, name))

    return admission


_KEY_OPERATIONS: Final = {
    "metadata": XksOperation.METADATA,
    "encrypt": XksOperation.ENCRYPT,
    "decrypt": XksOperation.DECRYPT,
}
# requestMetadata members the spec makes required, per API.
_REQUIRED_METADATA: Final = {
    XksOperation.HEALTH: ("kmsRequestId", "kmsOperation"),
    XksOperation.METADATA: ("awsPrincipalArn", "kmsOperation", "kmsRequestId"),
    XksOperation.ENCRYPT: ("awsPrincipalArn", "kmsKeyArn", "kmsOperation", "kmsRequestId"),
    XksOperation.DECRYPT: ("awsPrincipalArn", "kmsKeyArn", "kmsOperation", "kmsRequestId"),
}


@dataclass(frozen=True)
class Route:
    operation: XksOperation
    entry: KeyStoreEntry
    external_key_id: str = ""


def route(config: XksConfig, path: str) -> Route | None:
    """``{uri_prefix}/kms/xks/v1/health`` or ``.../keys/{externalKeyId}/{metadata|encrypt|decrypt}``."""
    prefix, found, rest = path.rpartition(API_PATH + "/")
    entry = config.entry(prefix) if found else None
    if entry is None:
        return None
    if rest == "health":
        return Route(XksOperation.HEALTH, entry)
    keys, _, tail = rest.partition("/")
    external_key_id, _, action = tail.partition("/")
    operation = _KEY_OPERATIONS.get(action)
    if keys != "keys" or not external_key_id or operation is None:
        return None
    return Route(operation, entry, external_key_id)


@dataclass(frozen=True)
class Answer:
    status: int
    document: dict[str, Any]

    @property
    def body(self) -> bytes:
        return orjson.dumps(self.document)


def error_answer(error: KMSError) -> Answer:
    name, status = xks_error_of(error)
    return Answer(status, error_body(name, error.message))


def uri_not_found() -> Answer:
    name, status = INVALID_URI_PATH
    return Answer(status, error_body(name, "No XKS API at this URI path"))


@dataclass(frozen=True)
class HealthFacts:
    """What GetHealthStatus says of this proxy besides the tokens."""

    fleet_size: int
    model: str  # "hsmstore <version>"
    ekm_vendor: str


class XksCalls:
    """Runs XKS requests on ``operations`` through one call envelope (audit, observers)."""

    def __init__(
        self,
        operations: ExternalKeyOperations,
        config: XksConfig,
        clock: Clock,
        health: HealthFacts,
        audit_sink: AuditSink | None = None,
        audit_fail_open: bool = False,
        observers: Sequence[CallObserver] = (),
        admission: Admission | None = None,
    ) -> None:
        self._operations = operations
        self._config = config
        self._clock = clock
        self._health = health
        self._envelope = CallEnvelope(audit_sink, audit_fail_open, log, observers, admission)
        self._lock = threading.Lock()

    @property
    def config(self) -> XksConfig:
        return self._config

    def replace_config(self, config: XksConfig) -> None:
        """SIGHUP: new credentials and prefixes for the requests that start from now on."""
        with self._lock:
            self._config = config

    def route(self, path: str) -> Route | None:
        return route(self._config, path)

    def answer(self, found: Route, request: ReceivedRequest, source_address: str) -> Answer:
        """The answer to a POST on ``found``'s URI (the caller is checked inside the envelope)."""
        region = self._config.region
        try:
            payload: Any = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            payload = None

        def caller() -> Caller:
            verify(request, found.entry.secrets, region, self._clock.now())
            return found.entry.caller

        origin = CallOrigin(caller, lambda: audit_parameters(found, request, payload), lambda: source_address)
        outcome = self._envelope.run(found.operation.value, origin, lambda: self._run(found, payload))
        if isinstance(outcome, KMSError):
            return error_answer(outcome)
        return Answer(200, outcome)

    def _run(self, found: Route, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ValidationException("The request body must be a JSON object")
        metadata = request_metadata(payload, _REQUIRED_METADATA[found.operation])
        operations, caller, key = self._operations, current_caller(), found.external_key_id
        if found.operation is XksOperation.HEALTH:
            fleet = operations.get_health_status(caller)
            return {
                "xksProxyFleetSize": self._health.fleet_size,
                "xksProxyVendor": "hsmstore",
                "xksProxyModel": self._health.model,
                "ekmVendor": self._health.ekm_vendor,
                "ekmFleetDetails": [
                    {"id": token.id, "model": token.model, "healthStatus": token.health_status}
                    for token in fleet
                ],
            }
        if found.operation is XksOperation.METADATA:
            described = operations.get_key_metadata(caller, key, metadata)
            return {
                "keySpec": described.key_spec,
                "keyUsage": list(described.key_usage),
                "keyStatus": described.key_status,
            }
        algorithm = _text(payload, "encryptionAlgorithm")
        aad = _bytes(payload, "additionalAuthenticatedData", required=False)
        if found.operation is XksOperation.ENCRYPT:
            integrity = payload.get("ciphertextDataIntegrityValueAlgorithm")
            if integrity is not None and not isinstance(integrity, str):
                raise ValidationException("ciphertextDataIntegrityValueAlgorithm must be a string")
            sealed = operations.encrypt(
                caller, key, metadata, _bytes(payload, "plaintext"), algorithm, aad, integrity
            )
            document = {
                "ciphertext": _b64(sealed.ciphertext),
                "initializationVector": _b64(sealed.initialization_vector),
                "authenticationTag": _b64(sealed.authentication_tag),
                "ciphertextMetadata": _b64(sealed.ciphertext_metadata),
            }
            if sealed.integrity_value is not None:
                document["ciphertextDataIntegrityValue"] = sealed.integrity_value
            return document
        plaintext = operations.decrypt(
            caller,
            key,
            metadata,
            _bytes(payload, "ciphertext"),
            _bytes(payload, "initializationVector"),
            _bytes(payload, "authenticationTag"),
            algorithm,
            aad,
            _bytes(payload, "ciphertextMetadata", required=False),
        )
        return {"plaintext": _b64(plaintext)}


def request_metadata(payload: dict[str, Any], required: Sequence[str]) -> RequestMetadata:
    """The ``requestMetadata`` object: required members present, every string member kept."""
    raw = payload.get("requestMetadata")
    if not isinstance(raw, dict):
        raise ValidationException("requestMetadata must be a JSON object")
    missing = [name for name in required if not isinstance(raw.get(name), str)]
    if missing:
        raise ValidationException(f"requestMetadata needs the string member(s) {', '.join(missing)}")
    members = {
        name: value
        for name, value in raw.items()
        if isinstance(name, str) and isinstance(value, str) and len(value) <= MAX_METADATA_MEMBER_CHARS
    }
    return RequestMetadata(members)


def audit_parameters(found: Route, request: ReceivedRequest, payload: Any) -> dict[str, Any]:
    """``requestParameters`` of the call's audit record: never a bytes member."""
    parameters: dict[str, Any] = {"uriPrefix": found.entry.uri_prefix}
    if found.external_key_id:
        parameters["externalKeyId"] = found.external_key_id[:256]
    access_key_id = _access_key_id(request)
    if access_key_id:
        parameters["accessKeyId"] = access_key_id
    if isinstance(payload, dict):
        metadata = payload.get("requestMetadata")
        if isinstance(metadata, dict):
            parameters["requestMetadata"] = {
                str(name)[:128]: value[:MAX_METADATA_MEMBER_CHARS]
                for name, value in metadata.items()
                if isinstance(value, str)
            }
        for name in ("encryptionAlgorithm", "ciphertextDataIntegrityValueAlgorithm"):
            value = payload.get(name)
            if isinstance(value, str):
                parameters[name] = value[:64]
    return parameters


def _access_key_id(request: ReceivedRequest) -> str:
    values = request.values("authorization")
    if not values:
        return ""
    _, _, rest = values[0].partition("Credential=")
    access_key_id = rest.partition("/")[0]
    return access_key_id if access_key_id.isalnum() and len(access_key_id) <= 128 else ""


def _text(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise ValidationException(f"{name} is required (a string)")
    return value


def _bytes(payload: dict[str, Any], name: str, *, required: bool = True) -> bytes:
    value = payload.get(name)
    if value is None and not required:
        return b""
    if not isinstance(value, str):
        raise ValidationException(f"{name} is required (base64)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationException(f"{name} is not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
