"""Who a SigV4-signed request speaks for (issue 19, Deliver 2): the AWS transport's caller.

:meth:`SigV4Callers.caller_of` is what the AWS JSON server hands the call
envelope as ``CallOrigin.caller`` (core/calls.py): it raises AWS's
authentication errors (``aws_json/sigv4.py``), which the envelope answers and
audits as an unidentified caller, like the gRPC transport's identity failures.

Order of the checks: the ``Authorization`` header is parsed
(Missing/IncompleteSignature, a session token is Unrecognized), the scope and
date are checked against this server's clock (InvalidSignature, "Signature
expired"), the access key is looked up (UnrecognizedClient for an unknown,
inactive or revoked one), and last the signature (InvalidSignature). The
secret comes from ``core/access_keys.py`` (cached unsealed in memory, bounded;
see there).

The embedded default: "The embedded default accepts a documented local test
key for tenant ``local`` only on loopback, so ``AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test`` works out of the box for CI". Access key id
``test`` with secret ``test`` is the local administrator of tenant ``local``
(the gRPC embedded default's caller: "every caller acting as the local
administrator of tenant ``local``") only when the server runs the embedded
default (``local_test_key``: the AWS port serves plaintext, which it only does
on loopback) AND this request's peer is a loopback address. Anywhere else
``test`` is an unknown key: UnrecognizedClientException.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

from hsmstore.aws_json.errors import UnrecognizedClientException
from hsmstore.aws_json.sigv4 import (
    UNRECOGNIZED_CLIENT_MESSAGE,
    HttpRequest,
    check_scope,
    check_signature,
    parse_claim,
)
from hsmstore.core.access_keys import AccessKeys, SigningIdentity
from hsmstore.core.access_keys_model import ACCESS_KEY_ID_PATTERN
from hsmstore.core.model import Caller, principal_arn
from hsmstore.core.ports.clock import Clock

LOCAL_TEST_ACCESS_KEY_ID: Final = "test"
LOCAL_TEST_SECRET_ACCESS_KEY: Final = "test"  # noqa: S105 - documented, public, loopback-only
LOCAL_TENANT: Final = "local"
LOCAL_ADMIN_CALLER: Final = Caller(
    tenant=LOCAL_TENANT, principal=principal_arn(LOCAL_TENANT, "role", "admin"), kind="role", name="admin"
)
_LOCAL_TEST_IDENTITY: Final = SigningIdentity(LOCAL_ADMIN_CALLER, LOCAL_TEST_SECRET_ACCESS_KEY)


def is_loopback(host: str) -> bool:
    """Whether a peer address (``127.0.0.1``, ``::1``, ``::ffff:127.0.0.1``) is a loopback one."""
    try:
        address = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class ReceivedRequest(Protocol):
    """What the HTTP server hands over (``aws_json/server.py`` ``SignedRequest``): raw path and
    query, the headers (repeats kept when given as pairs), the body, the peer's address."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str] | Sequence[tuple[str, str]]: ...
    @property
    def body(self) -> bytes: ...
    @property
    def peer_host(self) -> str: ...


class SigV4Callers:
    """Resolves the caller of a signed request; safe to share between threads.

    ``region``: the only region a signature may be scoped to, or None for any
    (the default; sigv4.py explains why). ``local_test_key``: the server runs
    the embedded default (module doc).
    """

    def __init__(
        self,
        access_keys: AccessKeys | None,
        clock: Clock,
        *,
        region: str | None = None,
        local_test_key: bool = False,
    ) -> None:
        self._access_keys = access_keys
        self._clock = clock
        self._region = region
        self._local_test_key = local_test_key

    def __call__(self, received: ReceivedRequest) -> Caller:
        """The server's ``Authenticate`` (aws_json/server.py): :meth:`caller_of` of a received request."""
        headers = received.headers
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        request = HttpRequest(received.method, received.path, received.query, pairs, received.body)
        return self.caller_of(request, received.peer_host)

    def caller_of(self, request: HttpRequest, peer_host: str) -> Caller:
        """The caller ``request`` is signed for; one of sigv4.py's AWS errors otherwise."""
        claim = parse_claim(request)
        check_scope(claim, self._clock.now(), self._region)
        identity = self._identity(claim.access_key_id, peer_host)
        if identity is None:
            raise UnrecognizedClientException(UNRECOGNIZED_CLIENT_MESSAGE)
        check_signature(request, claim, identity.secret)
        if identity is not _LOCAL_TEST_IDENTITY and self._access_keys is not None:
            self._access_keys.note_used(claim.access_key_id)
        return identity.caller

    def _identity(self, access_key_id: str, peer_host: str) -> SigningIdentity | None:
        if access_key_id == LOCAL_TEST_ACCESS_KEY_ID:
            return _LOCAL_TEST_IDENTITY if self._local_test_key and is_loopback(peer_host) else None
        if self._access_keys is None or ACCESS_KEY_ID_PATTERN.fullmatch(access_key_id) is None:
            return None  # never a key of ours: no DB lookup
        return self._access_keys.signing_identity(access_key_id)
