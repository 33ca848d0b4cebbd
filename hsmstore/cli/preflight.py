"""Checks ``hsmstore serve`` makes before it starts anything: the listen address and the TLS files.

Issue 16: a second ``make run`` on a taken port, or missing TLS files, printed
a traceback and hung. These checks run first, in the serve process, before
the token, the DB or any child process, so such a start fails at once with
exit 5 (config.py ``EXIT_LISTEN``) and one line naming the setting, its source
and the fix.

The port check binds a probe socket *without* ``SO_REUSEPORT``: a server
that holds the port (``--workers`` binds with ``SO_REUSEPORT``, which would let
a second ``--workers`` server share the port silently) makes that bind fail
with ``EADDRINUSE``. ``SO_REUSEADDR`` is set like gRPC sets it, so the
``TIME_WAIT`` connections of a server that just stopped do not count. The
probe is closed before the server binds; a server that takes the port in
between is still caught by gRPC's own bind (cli/serve.py).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmstore.config import ListenSetupError, Settings, refusal

_BIND_PROBLEMS = {
    errno.EADDRINUSE: ("address already in use", "stop what holds the port (another hsmstore serve?) or "),
    errno.EACCES: ("permission denied", "ports below 1024 need privileges: "),
    errno.EADDRNOTAVAIL: ("not an address of this machine", ""),
}


def check_listen_address(settings: Settings) -> None:
    """Fail (exit 5) if the ``listen`` address cannot be bound now; port 0 always can."""
    host, _, port_text = settings.listen.rpartition(":")
    port = int(port_text)
    if port == 0:
        return
    bare = host.strip("[]")
    try:
        addresses = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ListenSetupError(
            refusal(
                settings,
                "listen",
                f"cannot resolve {bare}: {error.strerror}",
                "give an IP address or a name this machine resolves",
            )
        ) from None
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
                probe.listen(1)
            except OSError as error:
                failures.append(error)
    # "localhost" may resolve to ::1 on a host without IPv6: one usable address is enough,
    # as for gRPC, but a taken one never is.
    taken = [failure for failure in failures if failure.errno == errno.EADDRINUSE]
    if taken or (failures and len(failures) == len(addresses)):
        first = (taken or failures)[0]
        problem, fix = _BIND_PROBLEMS.get(first.errno or 0, (first.strerror or str(first), ""))
        raise ListenSetupError(
            refusal(
                settings, "listen", f"cannot listen on {settings.listen}: {problem}", f"{fix}choose another"
            )
        )


def bind_failure(settings: Settings, address: str, error: Exception) -> ListenSetupError:
    """gRPC's own bind failed (the port was taken after the probe): the same line as the probe's."""
    return ListenSetupError(
        refusal(
            settings,
            "listen",
            f"cannot listen on {address}: {str(error).split(';')[0]}",
            "stop what holds the port (another hsmstore serve?) or choose another",
        )
    )


def check_tls_files(settings: Settings) -> None:
    """Fail (exit 5) unless the certificate chain, its key and the client CA can be read, are PEM,
    and the key belongs to the certificate. The files are read again when the server starts."""
    if not settings.tls_enabled:
        return
    cert_pem = _read(settings, "tls_cert", "the server certificate chain (PEM)")
    key_pem = _read(settings, "tls_key", "the server certificate's private key (PEM)")
    ca_pem = _read(settings, "client_ca", "the CA that issues client certificates (PEM)")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise _unusable(
            settings, "tls_cert", "holds no PEM certificate", "give the server's PEM chain"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise _unusable(
            settings, "tls_key", "holds no unencrypted PEM private key", "give the key in PEM, unencrypted"
        ) from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise _unusable(
            settings, "client_ca", "holds no PEM certificate", "give the client CA in PEM"
        ) from None
    der = serialization.Encoding.DER
    info = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(der, info) != key.public_key().public_bytes(der, info):
        raise _unusable(
            settings,
            "tls_key",
            f"is not the key of the first certificate in {settings.tls_cert}",
            "give the matching certificate and key",
        )


def _read(settings: Settings, name: str, what: str) -> bytes:
    path = Path(getattr(settings, name))
    try:
        return path.read_bytes()
    except OSError as error:
        raise ListenSetupError(
            refusal(
                settings,
                name,
                f"cannot read {name} {path}: {error.strerror}",
                f"give the path of {what}, readable by this user",
            )
        ) from None


def _unusable(settings: Settings, name: str, problem: str, fix: str) -> ListenSetupError:
    return ListenSetupError(refusal(settings, name, f"{name} {getattr(settings, name)} {problem}", fix))
