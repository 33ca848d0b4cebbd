"""Server TLS: always mutual, so every call comes with a client certificate to identify.

Issue 4: "Server TLS and mandatory client certificates whenever the server is
not in the loopback dev mode". gRPC's handshake verifies the client's chain
against ``client_ca`` and its validity period; a client without a certificate,
with an expired one or with one from another CA never gets as far as an RPC
(its call fails with UNAVAILABLE). The identity inside a certificate that
passed is read per call by ``identity.certificate_caller``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from hsmstore.server.identity import certificate_caller, local_admin_caller

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


def caller_resolver(tls_on: bool, trust_domain: str | None = None) -> CallerResolver:
    """The SPIFFE ID of the client certificate with TLS; the local admin in the loopback dev mode."""
    return certificate_caller(trust_domain) if tls_on else local_admin_caller
