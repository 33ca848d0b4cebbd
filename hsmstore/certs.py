"""Throwaway X.509 certificates for mutual TLS: a CA, a server certificate, client SVIDs.

For trying hsmstore out and for tests (``hsmstore certs``), never for
production, where the certificates come from the operator's PKI (SPIRE, a
corporate CA, ...). Keys are EC P-256; every function here is pure (no files)
except :func:`write_pem` and :func:`load_issued`, and imports only
``cryptography``, so tests can also make the certificates that must be refused:
expired ones, ones from another CA, ones without, with a malformed or with two
SPIFFE IDs.

A client certificate follows the SPIFFE X.509-SVID profile: the SPIFFE ID in a
URI SAN, ``CA:false``, key usage ``digitalSignature`` and the ``clientAuth``
extended key usage. The CA names its trust domain the way a SPIFFE trust
bundle does, its SPIFFE ID ``spiffe://<trust-domain>`` as a URI SAN; that is
where ``hsmstore serve`` takes the trust domain from when ``--trust-domain``
is not given (server/tls.py). It signs leaves only (``pathLenConstraint`` 0).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 30
BACKDATE = timedelta(minutes=5)  # tolerate a little clock skew between the machines


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    common_name: str = "hsmstore throwaway CA",
    trust_domain: str | None = None,
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
    path_length: int | None = 0,
) -> Issued:
    """A self-signed CA (``CA:true``, ``keyCertSign``); with a trust domain, its SPIFFE ID as URI SAN.

    ``path_length``: how many intermediates may follow it (0: it signs leaves only; None: any).
    """
    key = new_key()
    start = (now or datetime.now(UTC)) - BACKDATE
    end = start + BACKDATE + timedelta(days=days)
    builder = _builder(common_name, key, None, start, end, ca=True, path_length=path_length)
    if trust_domain:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
    return Issued(builder.sign(key, hashes.SHA256()), key)


def make_intermediate_ca(
    ca: Issued,
    common_name: str = "hsmstore throwaway intermediate CA",
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
    path_length: int | None = 0,
) -> Issued:
    """An intermediate CA under ``ca``, unchecked: tests also make one that ``ca``'s path length forbids."""
    key = new_key()
    start = (now or datetime.now(UTC)) - BACKDATE
    end = start + BACKDATE + timedelta(days=days)
    builder = _builder(common_name, key, ca, start, end, ca=True, path_length=path_length)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def make_server_cert(
    ca: Issued,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
) -> Issued:
    """A server certificate with DNS and IP SANs and the ``serverAuth`` extended key usage."""
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    if not names:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    start = (now or datetime.now(UTC)) - BACKDATE
    return _leaf(
        ca,
        common_name,
        names,
        ExtendedKeyUsageOID.SERVER_AUTH,
        start,
        start + BACKDATE + timedelta(days=days),
    )


def make_client_cert(
    ca: Issued,
    uris: Sequence[str],
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    common_name: str = "hsmstore client",
) -> Issued:
    """A client certificate (``clientAuth``) with each of ``uris`` as a URI SAN, unchecked.

    One valid SPIFFE ID makes an X.509-SVID; tests pass none, a malformed one
    or two, and ``not_before``/``not_after`` in the past for an expired one.
    """
    start = not_before or (now or datetime.now(UTC)) - BACKDATE
    end = not_after or start + BACKDATE + timedelta(days=days)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
    return _leaf(ca, common_name, names, ExtendedKeyUsageOID.CLIENT_AUTH, start, end)


def _leaf(
    ca: Issued,
    common_name: str,
    names: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    not_before: datetime,
    not_after: datetime,
) -> Issued:
    key = new_key()
    builder = _builder(common_name, key, ca, not_before, not_after, ca=False, path_length=None)
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _builder(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issued | None,
    not_before: datetime,
    not_after: datetime,
    *,
    ca: bool,
    path_length: int | None,
) -> x509.CertificateBuilder:
    """What every certificate here has: names, validity, basic constraints, key usage, key ids.

    ``issuer`` None: self-signed (no authority key id).
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_key_usage(signs_certificates=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    return builder


def write_pem(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` atomically; a private key is readable by its owner only (0600) from the start."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.fchmod(descriptor, 0o600 if private else 0o644)
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Read a certificate and its EC private key back; ValueError if they do not belong together."""
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    return Issued(certificate, key)


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """digitalSignature for every certificate; keyCertSign and cRLSign for a CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )
