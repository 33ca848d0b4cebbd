"""server/tls_reload.py: which rotated TLS files are taken, and what grpc's fetcher hands over.

Issue 16, Deliver 7: "TLS certificate rotation without restart"; a bad new
file keeps the old credentials and logs one line. The real handshakes are in
tests/integration/test_tls_reload.py.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from hsmstore import certs
from hsmstore.server.tls_reload import (
    ReloadingTls,
    TlsFilesError,
    TlsPaths,
    read_tls_material,
)

TRUST_DOMAIN = "example.org"


class Files:
    """A CA and a server certificate as files, rewritten by the tests like a rotation would."""

    def __init__(self, directory: Path) -> None:
        self.ca = certs.make_ca("test CA", TRUST_DOMAIN)
        self.paths = TlsPaths(directory / "server.pem", directory / "server.key", directory / "ca.pem")
        certs.write_pem(self.paths.client_ca, self.ca.cert_pem)
        self.server = self.rotate()

    def rotate(self, issued: certs.Issued | None = None) -> certs.Issued:
        issued = issued or certs.make_server_cert(self.ca)
        certs.write_pem(self.paths.key, issued.key_pem, private=True)
        certs.write_pem(self.paths.cert, issued.cert_pem)
        return issued

    def reloading(self) -> ReloadingTls:
        made: list[bytes] = []

        def callers(_domain: str, client_ca: bytes) -> object:
            made.append(client_ca)
            return lambda _context: None

        reloading = ReloadingTls(
            self.paths,
            TRUST_DOMAIN,
            read_tls_material(self.paths, TRUST_DOMAIN),
            make_callers=callers,  # type: ignore[arg-type]
        )
        self.callers_made = made
        return reloading


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def serial(issued: certs.Issued) -> int:
    return issued.certificate.serial_number


def test_valid_files_are_read_with_the_leaf_serial(files: Files) -> None:
    material = read_tls_material(files.paths, TRUST_DOMAIN)
    assert material.serial == serial(files.server)
    assert material.cert_chain == files.server.cert_pem
    assert material.client_ca == files.ca.cert_pem


def test_a_key_that_is_not_the_certificates_is_refused_naming_both_files(files: Files) -> None:
    certs.write_pem(files.paths.key, certs.make_server_cert(files.ca).key_pem, private=True)
    with pytest.raises(TlsFilesError) as refused:
        read_tls_material(files.paths, TRUST_DOMAIN)
    assert str(refused.value) == (
        f"tls_key {files.paths.key} is not the key of the certificate in tls_cert {files.paths.cert}"
    )


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("cert", b"not a certificate", "tls_cert {path} holds no PEM certificate"),
        ("key", b"not a key", "tls_key {path} is not an unencrypted PEM private key"),
        ("client_ca", b"not a CA", "client_ca {path}: client_ca holds no PEM certificate"),
    ],
)
def test_an_unreadable_file_is_refused_in_one_line_naming_it(
    files: Files, which: str, content: bytes, message: str
) -> None:
    path = getattr(files.paths, which)
    path.write_bytes(content)
    with pytest.raises(TlsFilesError) as refused:
        read_tls_material(files.paths, TRUST_DOMAIN)
    assert str(refused.value) == message.format(path=path)
    assert "\n" not in str(refused.value)


def test_a_missing_file_is_refused_with_the_reason(files: Files) -> None:
    files.paths.key.unlink()
    with pytest.raises(TlsFilesError, match=r"^cannot read tls_key .*: No such file or directory$"):
        read_tls_material(files.paths, TRUST_DOMAIN)


def test_an_expired_certificate_is_refused(files: Files) -> None:
    files.rotate(certs.make_server_cert(files.ca, now=datetime.now(UTC) - timedelta(days=60)))
    with pytest.raises(TlsFilesError, match=r"^the certificate in tls_cert .* expired on "):
        read_tls_material(files.paths, TRUST_DOMAIN)


def test_a_client_ca_of_another_trust_domain_is_refused(files: Files) -> None:
    certs.write_pem(files.paths.client_ca, certs.make_ca("other", "other.example").cert_pem)
    with pytest.raises(TlsFilesError, match=r"is not the trust domain the client CA names"):
        read_tls_material(files.paths, TRUST_DOMAIN)


def test_a_reload_hands_the_new_configuration_to_the_next_handshake_once(files: Files) -> None:
    reloading = files.reloading()
    assert reloading._fetch() is None  # nothing new: grpc keeps what it has
    rotated = files.rotate()
    assert reloading.reload("SIGHUP") is True
    assert reloading.current.serial == serial(rotated)
    assert isinstance(reloading._fetch(), grpc.ServerCertificateConfiguration)
    assert reloading._fetch() is None  # handed over once


def test_a_bad_rotation_keeps_the_old_credentials_and_logs_one_line(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    reloading = files.reloading()
    certs.write_pem(files.paths.cert, certs.make_server_cert(files.ca).cert_pem)  # new cert, old key
    with caplog.at_level(logging.ERROR, logger="hsmstore.server.tls_reload"):
        assert reloading.reload("SIGHUP") is False
    assert reloading.current.serial == serial(files.server)
    assert reloading._fetch() is None
    assert [record.getMessage() for record in caplog.records] == [
        f"TLS reload (SIGHUP) refused: tls_key {files.paths.key} is not the key of the certificate in "
        f"tls_cert {files.paths.cert}; still serving {reloading.current.describe()}"
    ]


def test_a_half_done_rotation_is_logged_once_and_taken_when_complete(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    reloading = files.reloading()
    new = certs.make_server_cert(files.ca)
    certs.write_pem(files.paths.cert, new.cert_pem)  # the key follows later
    with caplog.at_level(logging.ERROR, logger="hsmstore.server.tls_reload"):
        assert reloading.reload("files changed") is False
        assert reloading.reload("files changed") is False  # same files: not logged again
    assert len(caplog.records) == 1
    certs.write_pem(files.paths.key, new.key_pem, private=True)
    assert reloading.reload("files changed") is True
    assert reloading.current.serial == serial(new)


def test_unchanged_files_change_nothing(files: Files) -> None:
    reloading = files.reloading()
    assert reloading.reload("SIGHUP") is False
    assert reloading._fetch() is None


def test_a_new_client_ca_makes_new_callers_a_new_server_certificate_does_not(files: Files) -> None:
    reloading = files.reloading()
    assert len(files.callers_made) == 1
    files.rotate()
    assert reloading.reload("SIGHUP") is True
    assert len(files.callers_made) == 1
    bundle = files.ca.cert_pem + certs.make_ca("next CA", TRUST_DOMAIN).cert_pem
    certs.write_pem(files.paths.client_ca, bundle)
    assert reloading.reload("SIGHUP") is True
    assert files.callers_made[-1] == bundle


def test_the_watch_thread_reloads_on_request(files: Files) -> None:
    reloading = files.reloading()
    reloading.start()
    try:
        rotated = files.rotate()
        reloading.request_reload()
        deadline = time.monotonic() + 10
        while reloading.current.serial != serial(rotated) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reloading.current.serial == serial(rotated)
    finally:
        reloading.stop()
