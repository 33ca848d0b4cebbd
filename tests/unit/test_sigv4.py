"""SigV4 verification (aws_json/sigv4.py) and the caller of a signed request (aws_json/access_keys.py).

Requests are signed by botocore's own signer (``botocore.auth.SigV4Auth``), the
one boto3 and the AWS CLI use, so "verifies" means "verifies what AWS SDKs send".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hsmstore import errors
from hsmstore.aws_json.access_keys import LOCAL_ADMIN_CALLER, SigV4Callers, is_loopback
from hsmstore.aws_json.errors import MissingAuthenticationTokenException, UnrecognizedClientException
from hsmstore.aws_json.sigv4 import (
    HttpRequest,
    IncompleteSignatureException,
    InvalidSignatureException,
    check_scope,
    check_signature,
    parse_claim,
)
from hsmstore.core.access_keys import AccessKeys
from hsmstore.core.model import Caller
from tests.fakes.access_keys import FakeAccessKeyRecords, FakeSecretSealer

ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
BODY = b'{"KeyId": "alias/app", "Plaintext": "aGVsbG8="}'
URL = "http://127.0.0.1:4599/"


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.moment = now

    def now(self) -> datetime:
        return self.moment


def signed(
    *,
    body: bytes = BODY,
    url: str = URL,
    access_key_id: str = ACCESS_KEY_ID,
    secret: str = SECRET,
    region: str = "us-east-1",
    service: str = "kms",
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpRequest:
    """A request as botocore signs it and as the server receives it (urllib3 adds Host)."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "TrentService.Encrypt",
            **(headers or {}),
        },
    )
    SigV4Auth(Credentials(access_key_id, secret, token), service, region).add_auth(request)
    parts = urlsplit(url)
    received = [("Host", parts.netloc), *request.headers.items()]
    return HttpRequest("POST", parts.path, parts.query, received, body)


def with_header(request: HttpRequest, name: str, value: str) -> HttpRequest:
    kept = [(key, old) for key, old in request.headers if key.lower() != name.lower()]
    return replace(request, headers=[*kept, (name, value)])


def verify(
    request: HttpRequest, secret: str = SECRET, now: datetime | None = None, region: str | None = None
) -> None:
    claim = parse_claim(request)
    check_scope(claim, now or datetime.now(UTC), region)
    check_signature(request, claim, secret)


def test_botocore_signed_request_verifies() -> None:
    verify(signed())


def test_request_with_path_and_query_verifies_as_botocore_canonicalises_it() -> None:
    verify(signed(url="http://127.0.0.1:4599/a%20b/./c//d/?b=2&a=x%2Fy&a=1", body=b""))


def test_unsigned_header_added_on_the_way_does_not_break_the_signature() -> None:
    verify(with_header(signed(), "User-Agent", "proxy/1.0"))


def test_claim_names_key_scope_and_signed_headers() -> None:
    claim = parse_claim(signed(region="eu-west-3"))
    assert claim.access_key_id == ACCESS_KEY_ID
    assert (claim.region, claim.service, claim.terminator) == ("eu-west-3", "kms", "aws4_request")
    assert "host" in claim.signed_headers and "x-amz-target" in claim.signed_headers


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: replace(r, body=r.body + b" "),
        lambda r: with_header(r, "X-Amz-Target", "TrentService.Decrypt"),
        lambda r: with_header(r, "Host", "127.0.0.1:4600"),
        lambda r: replace(r, method="PUT"),
        lambda r: replace(r, path="/other"),
        lambda r: replace(r, query="a=1"),
    ],
    ids=["body", "signed-header", "host", "method", "path", "query"],
)
def test_tampered_request_is_invalid_signature(tamper: Callable[[HttpRequest], HttpRequest]) -> None:
    with pytest.raises(InvalidSignatureException) as raised:
        verify(tamper(signed()))
    assert raised.value.message.startswith("The request signature we calculated does not match")


def test_wrong_secret_is_invalid_signature_and_no_secret_is_shown() -> None:
    with pytest.raises(InvalidSignatureException) as raised:
        verify(signed(secret="not-the-secret"))
    assert SECRET not in raised.value.message and "not-the-secret" not in raised.value.message
    assert parse_claim(signed()).signature not in raised.value.message


def test_signature_older_than_five_minutes_is_expired() -> None:
    request = signed()
    with pytest.raises(InvalidSignatureException) as raised:
        verify(request, now=datetime.now(UTC) + timedelta(minutes=5, seconds=30))
    assert raised.value.message.startswith("Signature expired: ")
    assert "is now earlier than" in raised.value.message and raised.value.message.endswith("- 5 min.)")


def test_signature_dated_more_than_five_minutes_ahead_is_not_yet_current() -> None:
    with pytest.raises(InvalidSignatureException) as raised:
        verify(signed(), now=datetime.now(UTC) - timedelta(minutes=6))
    assert raised.value.message.startswith("Signature not yet current: ")


def test_signature_within_the_skew_verifies() -> None:
    verify(signed(), now=datetime.now(UTC) + timedelta(minutes=4))


def test_tampered_date_header_is_invalid_signature() -> None:
    request = signed()
    amz_date = request.header("X-Amz-Date")
    assert amz_date is not None
    moved = amz_date[:-3] + ("00Z" if amz_date[-3:] != "00Z" else "01Z")
    with pytest.raises(InvalidSignatureException):
        verify(with_header(request, "X-Amz-Date", moved))


def test_other_service_in_scope_is_invalid_signature() -> None:
    with pytest.raises(InvalidSignatureException) as raised:
        verify(signed(service="dynamodb"))
    assert raised.value.message == "Credential should be scoped to correct service: 'kms'."


def test_any_region_verifies_by_default_and_only_the_configured_one_when_required() -> None:
    verify(signed(region="ap-south-1"))
    verify(signed(region="local"), region="local")
    with pytest.raises(InvalidSignatureException) as raised:
        verify(signed(region="us-east-1"), region="local")
    assert raised.value.message.startswith("Credential should be scoped to a valid region")


def test_region_of_scope_is_signed() -> None:
    request = signed(region="us-east-1")
    authorization = request.header("Authorization") or ""
    moved = with_header(request, "Authorization", authorization.replace("/us-east-1/", "/us-west-2/"))
    with pytest.raises(InvalidSignatureException):
        verify(moved)


def test_scope_date_other_than_request_day_is_invalid_signature() -> None:
    request = signed()
    authorization = request.header("Authorization") or ""
    claim = parse_claim(request)
    moved = authorization.replace(f"/{claim.scope_date}/", "/19990101/")
    with pytest.raises(InvalidSignatureException) as raised:
        verify(with_header(request, "Authorization", moved))
    assert raised.value.message.startswith("Date in Credential scope does not match")


def test_no_authorization_is_missing_authentication_token() -> None:
    request = signed()
    bare = replace(request, headers=[(k, v) for k, v in request.headers if k.lower() != "authorization"])
    with pytest.raises(MissingAuthenticationTokenException) as raised:
        parse_claim(bare)
    assert raised.value.message == "Missing Authentication Token"


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        ("Basic dXNlcjpwYXNz", "Unsupported AWS 'algorithm'"),
        ("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=" + "0" * 64, "requires 'Credential' parameter"),
        (
            "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/kms/aws4_request, SignedHeaders=host",
            "'Signature'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIA/us-east-1/kms, SignedHeaders=host, Signature=ab",
            "5 slash-delimited",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/kms/aws4_request, SignedHeaders=x-amz-date, "
            "Signature=ab",
            "'Host' must be a 'SignedHeader'",
        ),
    ],
    ids=["not-sigv4", "no-credential", "no-signature", "short-credential", "host-unsigned"],
)
def test_malformed_authorization_is_incomplete_signature(authorization: str, says: str) -> None:
    with pytest.raises(IncompleteSignatureException) as raised:
        parse_claim(with_header(signed(), "Authorization", authorization))
    assert says in raised.value.message
    assert authorization not in raised.value.message


def test_request_without_any_date_is_incomplete_signature() -> None:
    request = signed()
    undated = replace(request, headers=[(k, v) for k, v in request.headers if k.lower() != "x-amz-date"])
    with pytest.raises(IncompleteSignatureException) as raised:
        parse_claim(undated)
    assert "'X-Amz-Date' or a 'Date' header" in raised.value.message


def test_session_token_is_refused_as_unrecognized_client() -> None:
    with pytest.raises(UnrecognizedClientException) as raised:
        parse_claim(signed(token="FwoGZXIvYXdzEXAMPLE"))
    assert raised.value.message.startswith("The security token included in the request is invalid.")
    assert "FwoGZXIvYXdzEXAMPLE" not in raised.value.message


def test_every_auth_error_is_an_unauthenticated_kms_error_with_aws_name() -> None:
    for error_class, name in (
        (MissingAuthenticationTokenException, "MissingAuthenticationTokenException"),
        (IncompleteSignatureException, "IncompleteSignatureException"),
        (UnrecognizedClientException, "UnrecognizedClientException"),
        (InvalidSignatureException, "InvalidSignatureException"),
    ):
        assert issubclass(error_class, errors.KMSError)
        assert error_class.reason == name
    # the two only this transport raises are Unauthenticated to any other (server/errors.py)
    assert issubclass(IncompleteSignatureException, errors.UnauthenticatedException)
    assert issubclass(InvalidSignatureException, errors.UnauthenticatedException)


# -- the caller of a signed request (aws_json/access_keys.py) --------------------------


@pytest.fixture
def keys() -> AccessKeys:
    return AccessKeys(FakeAccessKeyRecords(), FakeSecretSealer(), FixedClock(datetime.now(UTC)))


def callers(keys: AccessKeys | None, **kwargs: Any) -> SigV4Callers:
    return SigV4Callers(keys, FixedClock(datetime.now(UTC)), **kwargs)


def test_created_access_key_signs_as_its_principal(keys: AccessKeys) -> None:
    created = keys.create("user/ci", tenant="team-a")
    caller = callers(keys).caller_of(
        signed(access_key_id=created.access_key_id, secret=created.secret_access_key), "10.0.0.7"
    )
    assert caller == Caller(
        tenant="team-a", principal="arn:hsmstore:iam::team-a:user/ci", kind="user", name="ci"
    )


def test_unknown_access_key_is_unrecognized_client(keys: AccessKeys) -> None:
    with pytest.raises(UnrecognizedClientException) as raised:
        callers(keys).caller_of(signed(access_key_id="AKIAAAAAAAAAAAAAAAAA"), "127.0.0.1")
    assert raised.value.message == "The security token included in the request is invalid."


def test_wrong_secret_for_a_known_key_is_invalid_signature(keys: AccessKeys) -> None:
    created = keys.create("user/ci")
    with pytest.raises(InvalidSignatureException):
        callers(keys).caller_of(signed(access_key_id=created.access_key_id, secret="guess"), "127.0.0.1")


def test_revoked_access_key_is_unrecognized_client(keys: AccessKeys) -> None:
    created = keys.create("service/billing")
    resolver = callers(keys)
    request = signed(access_key_id=created.access_key_id, secret=created.secret_access_key)
    assert resolver.caller_of(request, "127.0.0.1").name == "billing"
    keys.revoke(created.access_key_id)
    with pytest.raises(UnrecognizedClientException):
        resolver.caller_of(request, "127.0.0.1")


def test_local_test_key_is_local_admin_on_loopback_under_the_embedded_default() -> None:
    request = signed(access_key_id="test", secret="test")
    resolver = callers(None, local_test_key=True)
    assert resolver.caller_of(request, "127.0.0.1") == LOCAL_ADMIN_CALLER
    assert resolver.caller_of(request, "::1") == LOCAL_ADMIN_CALLER
    assert LOCAL_ADMIN_CALLER.principal == "arn:hsmstore:iam::local:role/admin"


@pytest.mark.parametrize(
    ("local_test_key", "peer"),
    [(True, "10.1.2.3"), (True, "192.168.0.5"), (False, "127.0.0.1")],
    ids=["remote-peer", "lan-peer", "not-embedded-default"],
)
def test_local_test_key_is_unknown_off_loopback_or_without_the_embedded_default(
    keys: AccessKeys, local_test_key: bool, peer: str
) -> None:
    with pytest.raises(UnrecognizedClientException):
        callers(keys, local_test_key=local_test_key).caller_of(
            signed(access_key_id="test", secret="test"), peer
        )


def test_local_test_key_with_another_secret_is_invalid_signature() -> None:
    with pytest.raises(InvalidSignatureException):
        callers(None, local_test_key=True).caller_of(signed(access_key_id="test", secret="nope"), "127.0.0.1")


def test_expired_signature_of_a_known_key_is_refused_before_any_lookup(keys: AccessKeys) -> None:
    records = FakeAccessKeyRecords()
    access_keys = AccessKeys(records, FakeSecretSealer(), FixedClock(datetime.now(UTC)))
    created = access_keys.create("user/ci")
    late = SigV4Callers(access_keys, FixedClock(datetime.now(UTC) + timedelta(minutes=10)))
    with pytest.raises(InvalidSignatureException) as raised:
        late.caller_of(signed(access_key_id=created.access_key_id, secret=created.secret_access_key), "::1")
    assert raised.value.message.startswith("Signature expired")
    assert records.lookups == 0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
     ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("localhost", False), ("", False)],
)  # fmt: skip
def test_loopback_peers(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
