"""Throwaway certificates (hsmstore/certs.py) and ``hsmstore certs`` (cli/certs.py)."""

from __future__ import annotations

import ipaddress
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsmstore import certs
from hsmstore.cli.certs import CertsError, write_certificates
from hsmstore.cli.main import main
from hsmstore.server.tls import pinned_trust_domain

ACME = "spiffe://example.org/tenant/acme/role/admin"


E = TypeVar("E", bound=x509.ExtensionType)


def extension(certificate: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return certificate.extensions.get_extension_for_class(kind)


def test_the_ca_is_a_p256_ca_naming_its_trust_domain() -> None:
    ca = certs.make_ca(trust_domain="example.org", days=10)
    constraints = extension(ca.certificate, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert extension(ca.certificate, x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.key.curve, ec.SECP256R1)
    sans = extension(ca.certificate, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    ca.certificate.verify_directly_issued_by(ca.certificate)
    lifetime = ca.certificate.not_valid_after_utc - ca.certificate.not_valid_before_utc
    assert timedelta(days=10) <= lifetime <= timedelta(days=10, minutes=10)


def test_the_ca_signs_leaves_only_unless_given_a_path_length() -> None:
    assert extension(certs.make_ca().certificate, x509.BasicConstraints).value.path_length == 0
    root = certs.make_ca(path_length=None)
    assert extension(root.certificate, x509.BasicConstraints).value.path_length is None
    intermediate = certs.make_intermediate_ca(root, "issuing CA")
    intermediate.certificate.verify_directly_issued_by(root.certificate)
    constraints = extension(intermediate.certificate, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert extension(intermediate.certificate, x509.KeyUsage).value.key_cert_sign
    certs.make_client_cert(intermediate, [ACME]).certificate.verify_directly_issued_by(
        intermediate.certificate
    )


def test_the_server_certificate_has_dns_and_ip_sans_and_server_auth() -> None:
    ca = certs.make_ca()
    server = certs.make_server_cert(ca, ["localhost", "kms.internal"], ["127.0.0.1", "::1"])
    server.certificate.verify_directly_issued_by(ca.certificate)
    sans = extension(server.certificate, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "kms.internal"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(extension(server.certificate, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert not extension(server.certificate, x509.BasicConstraints).value.ca
    with pytest.raises(ValueError, match="at least one"):
        certs.make_server_cert(ca, [], [])


def test_a_client_certificate_is_an_x509_svid() -> None:
    ca = certs.make_ca()
    client = certs.make_client_cert(ca, [ACME])
    client.certificate.verify_directly_issued_by(ca.certificate)
    sans = extension(client.certificate, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [ACME]
    assert list(extension(client.certificate, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    usage = extension(client.certificate, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert not extension(client.certificate, x509.BasicConstraints).value.ca


def test_the_certificates_that_must_be_refused_can_be_made() -> None:
    ca, other = certs.make_ca(), certs.make_ca()
    now = datetime.now(UTC)
    expired = certs.make_client_cert(
        ca, [ACME], not_before=now - timedelta(days=3), not_after=now - timedelta(days=1)
    )
    assert expired.certificate.not_valid_after_utc < now
    foreign = certs.make_client_cert(other, [ACME])
    with pytest.raises(InvalidSignature):
        foreign.certificate.verify_directly_issued_by(ca.certificate)
    bare = certs.make_client_cert(ca, [])
    with pytest.raises(x509.ExtensionNotFound):
        extension(bare.certificate, x509.SubjectAlternativeName)
    two = certs.make_client_cert(ca, [ACME, "spiffe://example.org/tenant/globex/role/admin"])
    assert len(extension(two.certificate, x509.SubjectAlternativeName).value) == 2


def test_keys_are_written_0600_and_read_back(tmp_path: Path) -> None:
    ca = certs.make_ca()
    certs.write_pem(tmp_path / "ca.key", ca.key_pem, private=True)
    certs.write_pem(tmp_path / "ca.pem", ca.cert_pem)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.pem").stat().st_mode) == 0o644
    loaded = certs.load_issued(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert loaded.certificate == ca.certificate
    certs.write_pem(tmp_path / "other.key", certs.make_ca().key_pem, private=True)
    with pytest.raises(ValueError, match="is not the key of"):
        certs.load_issued(tmp_path / "ca.pem", tmp_path / "other.key")


# ------------------------------------------------------------------ hsmstore certs


def test_hsmstore_certs_writes_everything_and_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    assert main(["certs", "--out", str(out), "--client", ACME, "--client", "globex/service/billing"]) == 0
    printed = json.loads(capsys.readouterr().out)
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(
        [
            "ca.pem",
            "ca.key",
            "server.pem",
            "server.key",
            "client-acme-role-admin.pem",
            "client-acme-role-admin.key",
            "client-globex-service-billing.pem",
            "client-globex-service-billing.key",
        ]
    )
    for key in out.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert printed["ca"] == {"cert": str(out / "ca.pem"), "key": str(out / "ca.key"), "reused": False}
    assert printed["server"]["dns_names"] == ["localhost"]
    assert printed["server"]["ip_addresses"] == ["127.0.0.1", "::1"]
    assert [(c["spiffe_id"], c["principal"]) for c in printed["clients"]] == [
        (ACME, "arn:hsmstore:iam::acme:role/admin"),
        ("spiffe://example.org/tenant/globex/service/billing", "arn:hsmstore:iam::globex:service/billing"),
    ]
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    client = x509.load_pem_x509_certificate((out / "client-globex-service-billing.pem").read_bytes())
    client.verify_directly_issued_by(ca)


def test_an_existing_ca_is_reused_and_replaced_only_with_force(tmp_path: Path) -> None:
    first = write_certificates(tmp_path, clients=["acme/role/admin"])
    ca_key = (tmp_path / "ca.key").read_bytes()
    again = write_certificates(tmp_path, clients=["acme/user/alice"], server_names=["kms.local"])
    assert again["ca"]["reused"] and not first["ca"]["reused"]
    assert (tmp_path / "ca.key").read_bytes() == ca_key
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate(
        (tmp_path / "client-acme-user-alice.pem").read_bytes()
    ).verify_directly_issued_by(ca)
    forced = write_certificates(tmp_path, force=True)
    assert not forced["ca"]["reused"]
    assert (tmp_path / "ca.key").read_bytes() != ca_key


def test_a_ca_key_without_its_certificate_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_bytes(b"precious")
    with pytest.raises(CertsError, match="--force"):
        write_certificates(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == b"precious"
    assert main(["certs", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "ca.key").read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"clients": ["spiffe://example.org/tenant/acme/robot/x"]}, "--client"),
        ({"clients": ["Acme/role/admin"]}, "invalid tenant"),
        ({"clients": [ACME], "trust_domain": "other.org"}, "trust domain"),
        ({"trust_domain": "spiffe://example.org"}, "trust domain"),
        ({"days": 0}, "--days"),
        ({"server_ips": ["localhost"]}, "--server-ip"),
    ],
)
def test_bad_requests_write_nothing(tmp_path: Path, kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(CertsError, match=problem):
        write_certificates(tmp_path / "pki", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "pki" / "ca.key").exists()


def test_short_client_names_take_the_trust_domain(tmp_path: Path) -> None:
    written = write_certificates(tmp_path, trust_domain="corp.test", clients=["acme/role/admin"])
    assert written["clients"][0]["spiffe_id"] == "spiffe://corp.test/tenant/acme/role/admin"
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    sans = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://corp.test"]


def test_the_ca_hsmstore_certs_writes_names_the_trust_domain_serve_pins(tmp_path: Path) -> None:
    write_certificates(tmp_path, trust_domain="corp.test", clients=["acme/role/admin"])
    assert pinned_trust_domain((tmp_path / "ca.pem").read_bytes(), "") == ("corp.test", True)


def test_a_reused_ca_keeps_the_trust_domain_it_names(tmp_path: Path) -> None:
    write_certificates(tmp_path, trust_domain="corp.test")
    again = write_certificates(tmp_path, clients=["acme/role/admin"])
    assert again["ca"]["reused"] is True
    assert [c["spiffe_id"] for c in again["clients"]] == ["spiffe://corp.test/tenant/acme/role/admin"]
    with pytest.raises(CertsError, match=r"names the trust domain corp\.test, not other\.org"):
        write_certificates(tmp_path, trust_domain="other.org", clients=["acme/role/admin"])
    with pytest.raises(CertsError, match="trust domain"):
        write_certificates(tmp_path, clients=["spiffe://other.org/tenant/acme/role/admin"])
    assert sorted(path.name for path in tmp_path.glob("client-*")) == [
        "client-acme-role-admin.key",
        "client-acme-role-admin.pem",
    ]
