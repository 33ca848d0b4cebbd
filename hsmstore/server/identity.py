"""Who is calling: the SPIFFE ID of the TLS client certificate, or the loopback dev admin.

docs/api.md, "Identity, tenants and resource names": a caller is identified
by the SPIFFE ID in the URI SAN of its TLS client certificate,
``spiffe://<trust-domain>/tenant/<tenant>/<kind>/<name>`` with kind ``user``,
``service`` or ``role``; its principal is ``arn:hsmstore:iam::<tenant>:<kind>/<name>``.
The embedded default instead serves "plaintext gRPC on loopback only, every
caller acting as the local administrator of tenant ``local``".

The signatures, the validity period and the client CA are checked by gRPC's
TLS handshake (``server/tls.py`` requires a client certificate); a certificate
that fails them never reaches an RPC. The handshake does not apply every
RFC 5280 path rule, though: a leaf under an intermediate that its CA's
``pathLenConstraint`` forbids passes it (issue 14). So the chain the client
presented is validated again here, with ``cryptography``'s X.509 verifier
against the client CA (RFC 5280, 6.1.4 (l)-(m): "verify that
max_path_length is greater than zero"). What is checked besides is the
identity: exactly one URI SAN (the X.509-SVID rule), a valid SPIFFE ID (the
SPIFFE-ID spec), hsmstore's path shape and the trust domain. Anything else is
``UnauthenticatedException``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from hsmstore.core.identifiers import PRINCIPAL_KINDS, PRINCIPAL_NAME_PATTERN, TENANT_PATTERN
from hsmstore.core.model import Caller, principal_arn
from hsmstore.errors import UnauthenticatedException

if TYPE_CHECKING:
    import grpc

    from hsmstore.server.servicer import CallerResolver

LOCAL_TENANT = "local"
LOCAL_ADMIN = principal_arn(LOCAL_TENANT, "role", "admin")

SPIFFE_SCHEME = "spiffe://"
MAX_SPIFFE_ID_BYTES = 2048  # SPIFFE-ID spec: "URIs ... MUST NOT exceed 2048 bytes"
MAX_TRUST_DOMAIN_LENGTH = 255
_TRUST_DOMAIN_PATTERN = re.compile(r"[a-z0-9._-]+")
_PATH_SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
_SHOWN_LENGTH = 300  # an error message echoes at most this much of the offending identity
DEFAULT_CACHE_ENTRIES = 4096
PEM_CERT_PROPERTY = "x509_pem_cert"  # grpc's auth context: the peer's leaf certificate
# ... and the rest of the chain the peer presented (in grpcio the intermediates, without the leaf)
PEM_CHAIN_PROPERTY = "x509_pem_cert_chain"

_LOCAL_ADMIN_CALLER = Caller(tenant=LOCAL_TENANT, principal=LOCAL_ADMIN, kind="role", name="admin")


def local_admin_caller(context: grpc.ServicerContext) -> Caller:
    """One shared Caller: nothing per request to build on the hot path."""
    return _LOCAL_ADMIN_CALLER


def is_trust_domain(text: str) -> bool:
    """A SPIFFE trust domain name: lowercase letters, digits, ``.``, ``-`` and ``_``."""
    return len(text) <= MAX_TRUST_DOMAIN_LENGTH and _TRUST_DOMAIN_PATTERN.fullmatch(text) is not None


def trust_domain_of(uri: str) -> str | None:
    """The trust domain of a valid SPIFFE ID (``spiffe://example.org/...``), else None."""
    if _spiffe_problem(uri) is not None:
        return None
    return uri[len(SPIFFE_SCHEME) :].partition("/")[0]


def caller_from_spiffe_id(uri: str, trust_domain: str | None = None) -> Caller:
    """The caller a SPIFFE ID names, or UnauthenticatedException saying what is wrong with it.

    ``trust_domain`` (when given) is the only trust domain accepted.
    """
    problem = _spiffe_problem(uri)
    if problem is not None:
        raise UnauthenticatedException(
            f"The client certificate's SPIFFE ID {_shown(uri)} is malformed: {problem}"
        )
    domain, _, path = uri[len(SPIFFE_SCHEME) :].partition("/")
    if trust_domain and domain != trust_domain:
        raise UnauthenticatedException(
            f"The client certificate's SPIFFE ID {_shown(uri)} is not in the trust domain this server accepts"
        )
    segments = path.split("/")
    if len(segments) != 4 or segments[0] != "tenant" or segments[2] not in PRINCIPAL_KINDS:
        raise UnauthenticatedException(
            f"The client certificate's SPIFFE ID {_shown(uri)} is not of the form "
            "spiffe://<trust-domain>/tenant/<tenant>/<user|service|role>/<name>"
        )
    _, tenant, kind, name = segments
    if TENANT_PATTERN.fullmatch(tenant) is None:
        raise UnauthenticatedException(
            f"The client certificate's SPIFFE ID {_shown(uri)} names an invalid tenant: a tenant is 1 to 63 "
            "lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    if PRINCIPAL_NAME_PATTERN.fullmatch(name) is None:
        raise UnauthenticatedException(
            f"The client certificate's SPIFFE ID {_shown(uri)} names an invalid {kind} name: a name is 1 to "
            "128 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return Caller(tenant=tenant, principal=principal_arn(tenant, kind, name), kind=kind, name=name)


def _spiffe_problem(uri: str) -> str | None:
    """Why ``uri`` is not a SPIFFE ID (the SPIFFE-ID spec), or None if it is one."""
    if len(uri.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        return f"it is longer than {MAX_SPIFFE_ID_BYTES} bytes"
    if not uri.startswith(SPIFFE_SCHEME):
        return "the scheme must be spiffe://"
    domain, slash, path = uri[len(SPIFFE_SCHEME) :].partition("/")
    if not is_trust_domain(domain):
        return (
            "the trust domain must be 1 to 255 lowercase letters, digits, '.', '-' or '_' "
            "(no port, user info, query or fragment)"
        )
    if not slash:
        return None  # the trust domain's own ID: valid, though it names no workload
    return next(filter(None, map(_segment_problem, path.split("/"))), None)


def _segment_problem(segment: str) -> str | None:
    if not segment:
        return "a path segment is empty"
    if segment in (".", ".."):
        return "a path segment is '.' or '..'"
    if _PATH_SEGMENT_PATTERN.fullmatch(segment) is None:
        return "a path segment holds a character other than letters, digits, '.', '-' or '_'"
    return None


def _shown(uri: str) -> str:
    """The offending identity as the message quotes it: printable, and cut if long."""
    text = uri if len(uri) <= _SHOWN_LENGTH else uri[:_SHOWN_LENGTH] + "..."
    return ascii(text)


def spiffe_id_of(certificate: x509.Certificate) -> str:
    """The one SPIFFE ID of an X.509-SVID; UnauthenticatedException unless there is exactly one URI SAN.

    SPIFFE X.509-SVID spec: "An X.509 SVID MUST contain exactly one URI SAN".
    """
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError:  # an undecodable extension
        raise UnauthenticatedException(
            "The client certificate's subject alternative names are malformed"
        ) from None
    if not uris:
        raise UnauthenticatedException("The client certificate holds no SPIFFE ID (no URI SAN)")
    if len(uris) > 1:
        raise UnauthenticatedException(
            f"The client certificate holds {len(uris)} URI SANs; an X.509-SVID holds exactly one SPIFFE ID"
        )
    return str(uris[0])


class ChainVerifier:
    """RFC 5280 path validation of a client's chain against the client CA (``cryptography``).

    The CA certificates must meet the CA profile ``cryptography`` applies
    (basicConstraints ``CA:true``, ``keyCertSign``, path length); the leaf's
    own profile is the X.509-SVID rules checked in this module, so the
    end-entity extension policy permits everything.
    """

    def __init__(self, client_ca: bytes) -> None:
        roots = x509.load_pem_x509_certificates(client_ca)  # ValueError when it holds none
        self._store = Store(roots)

    def problem(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], now: datetime
    ) -> str | None:
        """Why no valid path leads from ``leaf`` to the client CA, or None when one does."""
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as error:
            return str(error)
        return None


@dataclass(frozen=True)
class _Resolved:
    """What one client certificate resolves to: a caller or the message of its refusal."""

    caller: Caller | None
    refusal: str
    not_after: float  # POSIX seconds


class CertificateCallers:
    """The caller of a call over mutual TLS, from its client certificate's SPIFFE ID.

    gRPC hands every call the peer's leaf certificate and the rest of the
    chain it presented, as PEM, in its auth context. Each distinct
    certificate (keyed by those bytes: the PEM of the leaf's DER and of its
    intermediates, since a chain's verdict depends on both) is parsed and,
    with ``client_ca``, path-validated once; afterwards a call costs the
    auth-context read and one dict lookup. The cache keeps at most
    ``max_entries`` certificates (the oldest is dropped first); a refusal is
    cached too, so a bad certificate costs no more than a good one. The
    validity end is re-checked on every call, so a certificate that expires
    while its connection stays open stops working.

    Without ``client_ca`` the chain is left to the TLS handshake alone, which
    does not enforce ``pathLenConstraint``; a server passes it (``server/tls.py``).
    """

    def __init__(
        self,
        trust_domain: str | None = None,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.time,
        *,
        client_ca: bytes | None = None,
    ) -> None:
        if trust_domain and not is_trust_domain(trust_domain):
            raise ValueError(f"not a SPIFFE trust domain: {trust_domain!r}")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._trust_domain = trust_domain or None
        self._max_entries = max_entries
        self._clock = clock
        self._chains = ChainVerifier(client_ca) if client_ca else None
        self._resolved: dict[tuple[bytes, bytes], _Resolved] = {}
        self._lock = threading.Lock()

    def __call__(self, context: grpc.ServicerContext) -> Caller:
        properties = context.auth_context()
        leaf = next(iter(properties.get(PEM_CERT_PROPERTY) or ()), None)
        if not leaf:
            raise UnauthenticatedException("The call presented no client certificate")
        chain = next(iter(properties.get(PEM_CHAIN_PROPERTY) or ()), b"") if self._chains else b""
        return self.caller_of_pem(leaf, chain)

    def caller_of_pem(self, pem: bytes, chain_pem: bytes = b"") -> Caller:
        """The caller of leaf ``pem`` presented with ``chain_pem`` (its intermediates, PEM)."""
        key = (pem, chain_pem)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = self._resolve(key)
        if resolved.caller is None:
            raise UnauthenticatedException(resolved.refusal)
        if self._clock() > resolved.not_after:
            raise UnauthenticatedException("The client certificate has expired")
        return resolved.caller

    @property
    def cached(self) -> int:
        return len(self._resolved)

    def _resolve(self, key: tuple[bytes, bytes]) -> _Resolved:
        resolved = self._parse(*key)
        with self._lock:
            while len(self._resolved) >= self._max_entries:
                self._resolved.pop(next(iter(self._resolved)))
            self._resolved[key] = resolved
        return resolved

    def _parse(self, pem: bytes, chain_pem: bytes) -> _Resolved:
        try:
            certificate = x509.load_pem_x509_certificate(pem)
            not_after = certificate.not_valid_after_utc.timestamp()
            chain = x509.load_pem_x509_certificates(chain_pem) if chain_pem else []
        except ValueError:
            return _Resolved(None, "The client certificate cannot be parsed", 0.0)
        if self._chains is not None:
            intermediates = [issuer for issuer in chain if issuer != certificate]
            # The cached verdict holds until the first certificate of the chain expires.
            not_after = min([not_after, *(c.not_valid_after_utc.timestamp() for c in intermediates)])
            problem = self._chains.problem(
                certificate, intermediates, datetime.fromtimestamp(self._clock(), UTC)
            )
            if problem is not None:
                return _Resolved(
                    None,
                    f"The client certificate's chain is not valid under the client CA: {_cut(problem)}",
                    not_after,
                )
        try:
            caller = caller_from_spiffe_id(spiffe_id_of(certificate), self._trust_domain)
        except UnauthenticatedException as refusal:
            return _Resolved(None, refusal.message, not_after)
        return _Resolved(caller, "", not_after)


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_LENGTH else text[:_SHOWN_LENGTH] + "..."


def certificate_caller(trust_domain: str | None = None, *, client_ca: bytes | None = None) -> CallerResolver:
    """The CallerResolver of a mutual-TLS server.

    ``trust_domain``: the only one accepted (None: any); ``client_ca``: the CA
    certificates (PEM) every client chain is path-validated against.
    """
    return CertificateCallers(trust_domain, client_ca=client_ca)
