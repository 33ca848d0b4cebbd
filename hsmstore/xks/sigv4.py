"""SigV4 verification of an XKS request (spec Appendix A), with botocore's signer.

Issue 21: "Verify with a well-kept signer (botocore's) rather than your own".
The received request is rebuilt as a botocore ``AWSRequest`` holding only the
headers its ``SignedHeaders`` names, signed again with ``SigV4Auth`` under the
configured secret, service ``kms-xks-proxy``, the configured region and the
request's own ``X-Amz-Date``, and the two signatures are compared in constant
time (``hmac.compare_digest``).

What is checked, each failure AuthenticationFailedException (401):

* an ``Authorization`` header ``AWS4-HMAC-SHA256 Credential=<akid>/<date>/<region>/kms-xks-proxy/aws4_request,
  SignedHeaders=..., Signature=<64 hex>`` whose SignedHeaders include ``host``
  and ``x-amz-date``;
* the access key id is one of the URI prefix's (at most two: rotation);
* the region is the configured one, the service ``kms-xks-proxy``, the scope
  date the ``X-Amz-Date`` day, and the date within 5 minutes of this server's
  clock either way ("Reject requests more than 5 min away");
* a signed ``x-amz-content-sha256`` equals the body's SHA-256 (botocore would
  otherwise take the header's word for the body);
* the signature. Headers botocore never signs (``user-agent``, ``expect``,
  ``x-amzn-trace-id``) cannot be in SignedHeaders: such a request fails.

No message holds the secret, the signature or the Authorization header.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hsmstore.errors import UnauthenticatedException
from hsmstore.sigv4_header import authorization_parameters

SERVICE: Final = "kms-xks-proxy"
ALGORITHM: Final = "AWS4-HMAC-SHA256"
MAX_SKEW: Final = timedelta(minutes=5)
AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
MAX_AUTHORIZATION_CHARS: Final = 4096
_SIGNATURE: Final = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE: Final = re.compile(r"\d{8}T\d{6}Z")
_HEADER_NAME: Final = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


class AuthenticationFailedException(UnauthenticatedException):
    """XKS: "the request was rejected because of a problem with the SigV4 signature" (401)."""

    reason = "AuthenticationFailedException"


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as received: the raw (still percent-encoded) path and query, headers with repeats."""

    method: str
    raw_path: str
    query: str
    headers: Sequence[tuple[str, str]]  # names lower-cased
    body: bytes

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def verify(request: ReceivedRequest, secrets: Mapping[str, str], region: str, now: datetime) -> str:
    """The access key id the request is signed with; AuthenticationFailedException otherwise."""
    authorization = request.values("authorization")
    if len(authorization) != 1 or len(authorization[0]) > MAX_AUTHORIZATION_CHARS:
        raise _failed("the request needs one SigV4 Authorization header")
    algorithm, _, rest = authorization[0].strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _failed(f"the Authorization header must use {ALGORITHM}")
    parameters = authorization_parameters(rest)
    credential = parameters.get("Credential", "").split("/")
    signed_headers = parameters.get("SignedHeaders", "").split(";")
    signature = parameters.get("Signature", "")
    if len(credential) != 5 or not _SIGNATURE.fullmatch(signature):
        raise _failed("the Authorization header needs Credential, SignedHeaders and Signature")
    access_key_id, scope_date, scope_region, service, terminator = credential
    if not all(_HEADER_NAME.fullmatch(name) for name in signed_headers) or not {
        "host",
        "x-amz-date",
    } <= set(signed_headers):
        raise _failed("SignedHeaders must name host and x-amz-date")
    secret = secrets.get(access_key_id)
    if secret is None:
        raise _failed("the access key id is not one of this URI prefix's")
    if service != SERVICE or terminator != "aws4_request":
        raise _failed(f"the credential scope must name the service {SERVICE}")
    if scope_region != region:
        raise _failed(f"the credential scope must name this proxy's region {region}")
    amz_date = _amz_date(request)
    if scope_date != amz_date[:8]:
        raise _failed("the credential scope date is not the X-Amz-Date day")
    signed_at = datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    if abs(signed_at - now.astimezone(UTC)) > MAX_SKEW:
        raise _failed("X-Amz-Date is more than 5 minutes from this proxy's clock")
    content_sha256 = request.values("x-amz-content-sha256")
    if "x-amz-content-sha256" in signed_headers and content_sha256 != [
        hashlib.sha256(request.body).hexdigest()
    ]:
        raise _failed("x-amz-content-sha256 is not the SHA-256 of the body")
    expected = expected_signature(request, signed_headers, amz_date, access_key_id, secret, region)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise _failed("the signature does not match")
    return access_key_id


def expected_signature(
    request: ReceivedRequest,
    signed_headers: Sequence[str],
    amz_date: str,
    access_key_id: str,
    secret: str,
    region: str,
) -> str:
    """botocore's signature of ``request`` with only ``signed_headers``, at ``amz_date``."""
    host = request.values("host")
    url = f"http://{host[0] if host else ''}{request.raw_path}" + (
        f"?{request.query}" if request.query else ""
    )
    rebuilt = AWSRequest(method=request.method, url=url, data=request.body)
    for name in signed_headers:
        for value in request.values(name):
            rebuilt.headers[name] = value  # HTTPHeaders appends: repeats are kept, as signed
    rebuilt.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key_id, secret), SERVICE, region)
    canonical = signer.canonical_request(rebuilt)
    return str(signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt))


def _amz_date(request: ReceivedRequest) -> str:
    values = request.values("x-amz-date")
    if len(values) != 1 or not _AMZ_DATE.fullmatch(values[0].strip()):
        raise _failed("the request needs one X-Amz-Date header (YYYYMMDD'T'HHMMSS'Z')")
    try:
        datetime.strptime(values[0].strip(), AMZ_DATE_FORMAT)
    except ValueError:
        raise _failed("X-Amz-Date is not a date") from None
    return values[0].strip()


def _failed(why: str) -> AuthenticationFailedException:
    return AuthenticationFailedException(f"Authentication failed: {why}")
