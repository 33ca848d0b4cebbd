"""Server TLS: always mutual, so every call comes with a client certificate to identify.

Issue 4: "Server TLS and mandatory client certificates whenever the server is
not in the loopback dev mode". gRPC's handshake verifies the client's chain
against ``client_ca`` and its validity period; a client without a certificate,
with an expired one or with one from another CA never gets as far as an RPC
(its call fails with UNAVAILABLE). The chain is path-validated once more and
the identity inside it read per call by ``identity.certificate_caller``.

The trust domain is always pinned with TLS (issue 14): a client CA trusted
for one SPIFFE trust domain must not let in identities of another. Either
``--trust-domain`` names it, or the client CA does: a SPIFFE signing
certificate may carry its trust domain's SPIFFE ID (``spiffe://example.org``)
as a URI SAN, and the CA ``hsmstore certs`` makes does. See
:func:`pinned_trust_domain`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from cryptography import x509

from hsmstore.server.identity import certificate_caller, local_admin_caller, trust_domain_of

if TYPE_CHECKING:
    from hsmstore.server.servicer import CallerResolver


def server_credentials(
    cert_chain: bytes, private_key: bytes, client_ca: bytes | None
) -> grpc.ServerCredentials:
    """TLS server credentials that require a client certificate issued by ``client_ca``."""
    if not client_ca:
        raise ValueError(
            "TLS needs a client CA: hsmstore serves TLS only with client certificates (mutual TLS)"
        )
    return grpc.ssl_server_credentials(
        [(private_key, cert_chain)], root_certificates=client_ca, require_client_auth=True
    )


def caller_resolver(
    tls_on: bool, trust_domain: str | None = None, client_ca: bytes | None = None
) -> CallerResolver:
    """The SPIFFE ID of the client certificate with TLS; the local admin in the loopback dev mode.

    ``client_ca`` (the ``--client-ca`` PEM) turns on the path validation of
    every client chain that the TLS handshake leaves out (``pathLenConstraint``).
    """
    return certificate_caller(trust_domain, client_ca=client_ca) if tls_on else local_admin_caller


def ca_trust_domains(client_ca: bytes) -> list[set[str]]:
    """Per certificate of ``client_ca``, the SPIFFE trust domains its URI SANs name.

    ValueError if ``client_ca`` holds no PEM certificate.
    """
    named: list[set[str]] = []
    for certificate in x509.load_pem_x509_certificates(client_ca):
        try:
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = names.get_values_for_type(x509.UniformResourceIdentifier)
        except (x509.ExtensionNotFound, ValueError):
            uris = []
        named.append({domain for domain in map(trust_domain_of, uris) if domain is not None})
    return named


def pinned_trust_domain(client_ca: bytes, configured: str) -> tuple[str, bool]:
    """The one trust domain a TLS server accepts, and whether it was derived from the CA.

    ``configured`` (``--trust-domain``) wins, but must be one the client CA
    names when it names any. Without it, the trust domain is the one every
    certificate of the client CA names; a CA that names none (an operator's
    own CA may not) or several leaves it to ``--trust-domain``. ValueError
    (one line naming ``--trust-domain``) when neither settles it.
    """
    try:
        per_certificate = ca_trust_domains(client_ca)
    except ValueError:
        raise ValueError("client_ca holds no PEM certificate") from None
    named = set().union(*per_certificate)
    if configured:
        if named and configured not in named:
            raise ValueError(
                f"--trust-domain {configured} is not the trust domain the client CA names "
                f"({', '.join(sorted(named))}): fix --trust-domain or --client-ca"
            )
        return configured, False
    if len(named) == 1 and all(per_certificate):
        return next(iter(named)), True
    found = f"it names {', '.join(sorted(named))} but not in every certificate" if named else "it names none"
    if len(named) > 1:
        found = f"it names several ({', '.join(sorted(named))})"
    raise ValueError(
        "--trust-domain is required with TLS: the client CA does not name one SPIFFE trust domain "
        f"as a spiffe:// URI SAN ({found}); give --trust-domain example.org with the trust domain "
        "of your client certificates"
    )
