"""TLS certificate rotation without a restart: SIGHUP, or the files changing on disk.

Issue 16, Deliver 7: "TLS certificate rotation without restart (reload on
SIGHUP or file change)". The server's credentials are grpc's dynamic SSL
credentials (``grpc.dynamic_ssl_server_credentials``): grpc asks the fetcher
before every TLS handshake whether the certificate configuration changed, so
a connection made after a reload gets the new certificate (and the new client
CA), while a connection already open keeps the session it negotiated and
works on. The fetcher only hands over a configuration prepared earlier; the
files are read and checked off the handshake path, by :class:`ReloadingTls`'s
thread, woken by SIGHUP (``request_reload``) or every ``check_seconds`` to
compare the files' stamps (mtime, size, inode: a Kubernetes secret volume
swaps a symlink, cert-manager rewrites files).

A new set is taken only whole and valid (:func:`read_tls_material`): the
certificate chain parses, the key is the certificate's, the certificate is
valid now, the client CA parses and names the trust domain the server pinned
at start. Anything else, such as a half-written rotation (new certificate, old
key), is refused with one log line naming the file and the old credentials stay;
a later change that completes the set is taken then.

The client CA is used twice: by the handshake (the configuration above) and
by the per-call path validation (``identity.CertificateCallers``). Both switch
together: :meth:`ReloadingTls.caller_of` resolves through the callers built
for the current CA, so after a CA rotation every call, on old connections too,
is validated against the new CA bundle (rotate by adding the new CA to the
bundle first, and removing the old one once no client uses it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmstore.server.identity import certificate_caller
from hsmstore.server.tls import pinned_trust_domain

if TYPE_CHECKING:
    from hsmstore.core.model import Caller
    from hsmstore.server.servicer import CallerResolver

log = logging.getLogger(__name__)

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TlsFilesError(ValueError):
    """A TLS file cannot be used; the message is one line naming the setting and the file."""


@dataclass(frozen=True)
class TlsPaths:
    """The three files a TLS server reads (``tls_cert``, ``tls_key``, ``client_ca``)."""

    cert: Path
    key: Path
    client_ca: Path

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """(mtime, size, inode) per file, following symlinks; a file that cannot be read stamps as zeros."""
        stamps = []
        for path in (self.cert, self.key, self.client_ca):
            try:
                status = path.stat()
            except OSError:
                stamps.append((0, 0, 0))
                continue
            stamps.append((status.st_mtime_ns, status.st_size, status.st_ino))
        return tuple(stamps)


@dataclass(frozen=True)
class TlsMaterial:
    """A checked set of TLS credentials (PEM bytes) and what the logs say about it."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes
    serial: int
    not_after: datetime

    def describe(self) -> str:
        return f"serial {self.serial:x}, valid until {self.not_after:%Y-%m-%d %H:%M:%S} UTC"

    def same_as(self, other: TlsMaterial) -> bool:
        return (self.cert_chain, self.private_key, self.client_ca) == (
            other.cert_chain,
            other.private_key,
            other.client_ca,
        )


def read_tls_material(paths: TlsPaths, trust_domain: str, now: datetime | None = None) -> TlsMaterial:
    """Read and check the three files; :class:`TlsFilesError` (one line) if they cannot serve.

    ``trust_domain`` is the one the server pinned: a client CA that names
    another would let in identities of a trust domain the server never accepted.
    """
    now = now or datetime.now(UTC)
    cert_chain = _read("tls_cert", paths.cert)
    private_key = _read("tls_key", paths.key)
    client_ca = _read("client_ca", paths.client_ca)
    try:
        leaf = x509.load_pem_x509_certificates(cert_chain)[0]
    except ValueError:
        raise TlsFilesError(f"tls_cert {paths.cert} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError):
        raise TlsFilesError(f"tls_key {paths.key} is not an unencrypted PEM private key") from None
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise TlsFilesError(f"tls_key {paths.key} is not the key of the certificate in tls_cert {paths.cert}")
    if now > leaf.not_valid_after_utc:
        raise TlsFilesError(
            f"the certificate in tls_cert {paths.cert} expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now < leaf.not_valid_before_utc:
        raise TlsFilesError(
            f"the certificate in tls_cert {paths.cert} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    try:
        pinned_trust_domain(client_ca, trust_domain)
    except ValueError as error:
        raise TlsFilesError(f"client_ca {paths.client_ca}: {error}") from None
    return TlsMaterial(cert_chain, private_key, client_ca, leaf.serial_number, leaf.not_valid_after_utc)


def material_from_bytes(cert_chain: bytes, private_key: bytes, client_ca: bytes) -> TlsMaterial:
    """The material a server started with, as given (grpc itself refuses a bad pair at start)."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_chain)[0]
        serial, not_after = leaf.serial_number, leaf.not_valid_after_utc
    except ValueError:
        serial, not_after = 0, datetime.min.replace(tzinfo=UTC)
    return TlsMaterial(cert_chain, private_key, client_ca, serial, not_after)


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFilesError(f"cannot read {setting} {path}: {error.strerror}") from None


def certificate_configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.cert_chain)], root_certificates=material.client_ca
    )


class ReloadingTls:
    """Server credentials and callers that follow the TLS files (see the module docstring).

    One instance serves one ``add_secure_port`` (grpc keeps one security
    connector per port, and the fetcher hands each new configuration over once).
    """

    def __init__(
        self,
        paths: TlsPaths,
        trust_domain: str,
        initial: TlsMaterial,
        check_seconds: float = 0.0,
        make_callers: Callable[[str, bytes], CallerResolver] | None = None,
    ) -> None:
        self._paths = paths
        self._trust_domain = trust_domain
        self._check_seconds = check_seconds
        self._make_callers = make_callers or _spiffe_callers
        self._current = initial
        self._callers = self._make_callers(trust_domain, initial.client_ca)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()
        self._stamp = paths.stamp()
        self._refused_stamp: tuple[tuple[int, int, int], ...] | None = None
        self._wake = threading.Event()
        self._reload_requested = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> TlsMaterial:
        return self._current

    def credentials(self) -> grpc.ServerCredentials:
        """Mutual-TLS credentials that take the newest checked configuration at each handshake."""
        return grpc.dynamic_ssl_server_credentials(
            certificate_configuration(self._current), self._fetch, require_client_authentication=True
        )

    def caller_of(self, context: grpc.ServicerContext) -> Caller:
        """The CallerResolver: the client certificate's caller, validated against the current client CA."""
        return self._callers(context)

    def start(self) -> None:
        """Start the thread that reloads on request and, with ``check_seconds``, on a file change."""
        self._thread = threading.Thread(target=self._watch, name="tls-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def request_reload(self) -> None:
        """Ask for a reload (safe in a signal handler: it only sets an event)."""
        self._reload_requested = True
        self._wake.set()

    def reload(self, why: str) -> bool:
        """Read the files now; take them if they are whole and valid. True when the credentials changed."""
        stamp = self._paths.stamp()
        try:
            material = read_tls_material(self._paths, self._trust_domain)
        except TlsFilesError as error:
            if why != "files changed" or stamp != self._refused_stamp:
                log.error(
                    "TLS reload (%s) refused: %s; still serving %s", why, error, self._current.describe()
                )
            self._refused_stamp = stamp
            return False
        self._stamp, self._refused_stamp = stamp, None
        if material.same_as(self._current):
            if why != "files changed":
                log.info("TLS reload (%s): the files are unchanged (%s)", why, material.describe())
            return False
        old = self._current
        callers = (
            self._callers
            if material.client_ca == old.client_ca
            else self._make_callers(self._trust_domain, material.client_ca)
        )
        with self._lock:
            self._current, self._callers = material, callers
            self._pending = certificate_configuration(material)
        ca_note = "" if material.client_ca == old.client_ca else " and a new client CA"
        log.info(
            "TLS reloaded (%s): %s%s, was %s; new connections get it, open ones keep theirs",
            why,
            material.describe(),
            ca_note,
            old.describe(),
        )
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's certificate_configuration_fetcher: runs before every handshake; never blocks or raises."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def _watch(self) -> None:
        timeout = self._check_seconds if self._check_seconds > 0 else None
        while True:
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload("SIGHUP")
                elif self._paths.stamp() != self._stamp:
                    self.reload("files changed")
            except Exception:  # the thread must outlive any surprise; the old credentials stay
                log.exception("TLS reload failed; still serving %s", self._current.describe())


def _spiffe_callers(trust_domain: str, client_ca: bytes) -> CallerResolver:
    return certificate_caller(trust_domain or None, client_ca=client_ca)
