"""AWS Signature Version 4 verification of one HTTP request (issue 19, Deliver 2), pure code.

The algorithm is AWS's ("Create a signed AWS API request", AWS IAM user guide;
botocore ``auth.SigV4Auth`` is the signer the tests check against):

1. Canonical request: the method; the canonical URI (the path as received,
   dot segments removed, then URI-encoded again except ``/`` and ``~``: "each
   path segment must be URI-encoded twice" for every service but S3); the
   canonical query (each name and value URI-encoded, sorted by name then
   value); the canonical headers (the ``SignedHeaders``, lower case, each
   value trimmed with inner runs of spaces collapsed, repeated headers joined
   by ``,``); the signed headers; the hex SHA-256 of the body as received.
2. String to sign: ``AWS4-HMAC-SHA256``, the ``X-Amz-Date`` timestamp, the
   scope ``<date>/<region>/<service>/aws4_request``, the hex SHA-256 of step 1.
3. Signing key: HMAC-SHA256 chain ``"AWS4" + secret`` -> date -> region ->
   service -> ``aws4_request``; the signature is the hex HMAC of step 2, and is
   compared in constant time (``hmac.compare_digest``).

Choices, with AWS's answers where AWS has one (the error text is AWS's own):

* No ``Authorization`` header: ``MissingAuthenticationTokenException`` ("Missing
  Authentication Token"). Presigned query-string authentication
  (``X-Amz-Signature`` in the query) is not supported: no AWS SDK uses it for
  KMS's ``POST /``; it is refused the same way.
* An ``Authorization`` header that is not a complete SigV4 one:
  ``IncompleteSignatureException`` naming what is missing. The header itself is
  never echoed (AWS echoes it; it holds the signature).
* Service other than ``kms``, a scope terminator other than ``aws4_request``, a
  scope date other than the ``X-Amz-Date`` day, a request date more than 5
  minutes from the server's clock ("Signature expired: ... is now earlier than
  ... - 5 min." / "Signature not yet current: ... + 5 min."), a signature that
  does not match: ``InvalidSignatureException``.
* Region: ANY region is accepted by default (``region=None``), as moto and
  local-kms accept any: drop-in CI jobs sign with whatever ``AWS_DEFAULT_REGION``
  they have, and hsmstore's ARNs name its own ``region`` setting anyway. The
  region is still part of the signature. Given a region, any other is
  ``InvalidSignatureException`` ("Credential should be scoped to a valid region").
* ``X-Amz-Security-Token``: refused with ``UnrecognizedClientException`` ("The
  security token included in the request is invalid"): hsmstore issues no
  session tokens, and silently ignoring a credential is how a misconfigured
  client ends up acting as someone it did not mean to.

No error message holds a secret, a signature or the signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote, unquote

from hsmstore.aws_json.errors import MissingAuthenticationTokenException, UnrecognizedClientException
from hsmstore.errors import KMSError, UnauthenticatedException
from hsmstore.sigv4_header import authorization_parameters

ALGORITHM: Final = "AWS4-HMAC-SHA256"
SERVICE: Final = "kms"
TERMINATOR: Final = "aws4_request"
MAX_SKEW: Final = timedelta(minutes=5)
"""AWS: a request whose date is more than 5 minutes off the server's clock is refused."""
MAX_AUTHORIZATION_CHARS: Final = 8192
AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
_AMZ_DATE_PATTERN: Final = re.compile(r"\d{8}T\d{6}Z")
_SCOPE_DATE_PATTERN: Final = re.compile(r"\d{8}")
_SIGNATURE_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME_PATTERN: Final = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_SPACES: Final = re.compile(r"\s+")


# -- the errors, with AWS's names (the AWS JSON transport answers them as ``__type``) --
# MissingAuthenticationTokenException and UnrecognizedClientException are aws_json/errors.py's;
# these two are UnauthenticatedException to every transport that does not know them by name.


class IncompleteSignatureException(UnauthenticatedException):
    """AWS: "The request signature does not conform to AWS standards"."""

    reason = "IncompleteSignatureException"


class InvalidSignatureException(UnauthenticatedException):
    """AWS: the signature does not match, or its scope or date is not acceptable."""

    reason = "InvalidSignatureException"


AUTH_ERRORS: Final[tuple[type[KMSError], ...]] = (
    MissingAuthenticationTokenException,
    IncompleteSignatureException,
    UnrecognizedClientException,
    InvalidSignatureException,
)

UNRECOGNIZED_CLIENT_MESSAGE: Final = "The security token included in the request is invalid."
SIGNATURE_MISMATCH_MESSAGE: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)


@dataclass(frozen=True)
class HttpRequest:
    """One request as the transport received it.

    ``path`` and ``query`` are the raw, still percent-encoded target parts
    (never decoded: the canonical URI is computed from the bytes the client
    signed). ``headers`` keep repeats and any case.
    """

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None


@dataclass(frozen=True)
class SignatureClaim:
    """What the ``Authorization`` header claims: the key, the scope, the signed headers, the signature."""

    access_key_id: str
    scope_date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str  # the request's timestamp, YYYYMMDD'T'HHMMSS'Z'

    @property
    def scope(self) -> str:
        return f"{self.scope_date}/{self.region}/{self.service}/{self.terminator}"


def parse_claim(request: HttpRequest) -> SignatureClaim:
    """The request's SigV4 claim, or the error AWS answers a missing or malformed one with."""
    if request.header("x-amz-security-token") is not None:
        raise UnrecognizedClientException(
            f"{UNRECOGNIZED_CLIENT_MESSAGE} hsmstore issues no session tokens: unset AWS_SESSION_TOKEN"
        )
    authorization = request.header("authorization")
    if authorization is None or not authorization.strip():
        raise MissingAuthenticationTokenException("Missing Authentication Token")
    if len(authorization) > MAX_AUTHORIZATION_CHARS:
        raise IncompleteSignatureException(
            f"The Authorization header is longer than {MAX_AUTHORIZATION_CHARS} characters"
        )
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignatureException(
            f"Unsupported AWS 'algorithm': only {ALGORITHM} (Signature Version 4) is accepted"
        )
    parameters = authorization_parameters(rest)
    missing = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not parameters.get(name)
    ]
    amz_date = _request_date(request)
    if amz_date is None:
        missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    if missing or amz_date is None:
        raise IncompleteSignatureException(" ".join(missing))
    credential = parameters["Credential"].split("/")
    if len(credential) != 5 or not all(credential):
        raise IncompleteSignatureException(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term"
        )
    access_key_id, scope_date, region, service, terminator = credential
    signed_headers = tuple(parameters["SignedHeaders"].split(";"))
    if not all(_HEADER_NAME_PATTERN.fullmatch(name) for name in signed_headers):
        raise IncompleteSignatureException("SignedHeaders must be lower-case header names separated by ';'")
    if "host" not in signed_headers:
        raise IncompleteSignatureException("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    return SignatureClaim(
        access_key_id=access_key_id,
        scope_date=scope_date,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=signed_headers,
        signature=parameters["Signature"],
        amz_date=amz_date,
    )


def check_scope(claim: SignatureClaim, now: datetime, region: str | None = None) -> None:
    """The scope names kms, this server's region (if one is required) and the request's day,
    and the request date is within :data:`MAX_SKEW` of ``now``; else InvalidSignatureException."""
    if claim.service != SERVICE:
        raise InvalidSignatureException(f"Credential should be scoped to correct service: '{SERVICE}'.")
    if claim.terminator != TERMINATOR:
        raise InvalidSignatureException(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not {_shown(claim.terminator)}."
        )
    if region is not None and claim.region != region:
        raise InvalidSignatureException(
            f"Credential should be scoped to a valid region, not {_shown(claim.region)}. "
            f"This server's region is '{region}'."
        )
    if not _SCOPE_DATE_PATTERN.fullmatch(claim.scope_date) or claim.scope_date != claim.amz_date[:8]:
        raise InvalidSignatureException(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"{_shown(claim.scope_date)} != '{claim.amz_date[:8]}', from '{claim.amz_date}'."
        )
    signed_at = datetime.strptime(claim.amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    now = now.astimezone(UTC)
    if signed_at < now - MAX_SKEW:
        raise InvalidSignatureException(
            f"Signature expired: {claim.amz_date} is now earlier than "
            f"{_amz(now - MAX_SKEW)} ({_amz(now)} - 5 min.)"
        )
    if signed_at > now + MAX_SKEW:
        raise InvalidSignatureException(
            f"Signature not yet current: {claim.amz_date} is still later than "
            f"{_amz(now + MAX_SKEW)} ({_amz(now)} + 5 min.)"
        )


def check_signature(request: HttpRequest, claim: SignatureClaim, secret: str) -> None:
    """InvalidSignatureException unless ``claim.signature`` is the request's signature under ``secret``."""
    expected = signature_of(request, claim, secret)
    if not hmac.compare_digest(
        expected.encode(), claim.signature.encode()
    ) or not _SIGNATURE_PATTERN.fullmatch(claim.signature):
        raise InvalidSignatureException(SIGNATURE_MISMATCH_MESSAGE)


def signature_of(request: HttpRequest, claim: SignatureClaim, secret: str) -> str:
    """The hex signature of ``request`` with ``claim``'s date, scope and signed headers."""
    string_to_sign = "\n".join(
        (
            ALGORITHM,
            claim.amz_date,
            claim.scope,
            hashlib.sha256(canonical_request(request, claim.signed_headers).encode("utf-8")).hexdigest(),
        )
    )
    key = signing_key(secret, claim.scope_date, claim.region, claim.service)
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def signing_key(secret: str, scope_date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode("utf-8")
    for part in (scope_date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def canonical_request(request: HttpRequest, signed_headers: Sequence[str]) -> str:
    return "\n".join(
        (
            request.method.upper(),
            canonical_uri(request.path),
            canonical_query(request.query),
            "".join(
                f"{name}:{canonical_header_value(request.header_values(name))}\n" for name in signed_headers
            ),
            ";".join(signed_headers),
            hashlib.sha256(request.body).hexdigest(),
        )
    )


def canonical_uri(raw_path: str) -> str:
    """The path as sent, without dot segments and empty segments, URI-encoded once more.

    RFC 3986 5.2.4 "Remove Dot Segments", and AWS services also drop
    consecutive slashes (botocore ``utils.remove_dot_segments``).
    """
    if not raw_path:
        return "/"
    kept: list[str] = []
    for segment in raw_path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    first = "/" if raw_path.startswith("/") else ""
    last = "/" if raw_path.endswith("/") and kept else ""
    return quote(first + "/".join(kept) + last, safe="/~")


def canonical_query(raw_query: str) -> str:
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&") if raw_query else ():
        name, _, value = part.partition("=")
        pairs.append((_uri_encode(unquote(name)), _uri_encode(unquote(value))))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_header_value(values: Iterable[str]) -> str:
    return ",".join(_SPACES.sub(" ", value.strip()) for value in values)


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def _request_date(request: HttpRequest) -> str | None:
    """``X-Amz-Date`` (basic ISO 8601), else the ``Date`` header in that form; None if neither is usable."""
    amz_date = request.header("x-amz-date")
    if amz_date is not None:
        return amz_date.strip() if _is_amz_date(amz_date.strip()) else None
    date = request.header("date")
    if date is None:
        return None
    try:
        parsed = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    return _amz(parsed) if parsed.tzinfo is not None else None


def _is_amz_date(text: str) -> bool:
    if not _AMZ_DATE_PATTERN.fullmatch(text):
        return False
    try:
        datetime.strptime(text, AMZ_DATE_FORMAT)
    except ValueError:
        return False
    return True


def _amz(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(AMZ_DATE_FORMAT)


def _shown(text: str) -> str:
    """A client-supplied scope part as a message quotes it: printable and short."""
    return ascii(text[:64])
