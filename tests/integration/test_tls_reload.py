"""TLS certificate rotation without a restart, on a real mutual-TLS server (issue 16, Deliver 7).

"TLS certificate rotation without restart (reload on SIGHUP or file change)":
after the server's certificate files are replaced, a new connection gets the
new certificate (its serial number is read from a handshake of our own), a
connection opened before keeps working, and a bad new file keeps the old
certificate with one log line (server/tls_reload.py).
"""

from __future__ import annotations

import signal
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from hsmstore import certs
from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, wait_until
from tests.integration.mtls import ACME_ADMIN, Pki

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


def served_serial(pki: Pki, address: str) -> int:
    """The serial number of the certificate the server presents on a new connection."""
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    cert, key = pki.client_files(ACME_ADMIN)
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2"])  # gRPC servers refuse a TLS client without it
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def rotate(pki: Pki, issued: certs.Issued | None = None) -> certs.Issued:
    """Replace the server's key and certificate files with a new certificate from the same CA."""
    issued = issued or certs.make_server_cert(pki.ca, ["localhost"], ["127.0.0.1", "::1"])
    certs.write_pem(pki.server_key_path, issued.key_pem, private=True)
    certs.write_pem(pki.server_cert_path, issued.cert_pem)
    return issued


def answers(channel: grpc.Channel) -> bool:
    response = pb_grpc.KeyStoreStub(channel).GenerateRandom(
        pb.GenerateRandomRequest(number_of_bytes=8), timeout=TIMEOUT
    )
    return len(response.plaintext) == 8


def lines_with(server: ServerProcess, text: str) -> list[str]:
    return [line for line in server.output if text in line]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Its own PKI: the tests rewrite the server's files."""
    return Pki(tmp_path / "pki")


@contextmanager
def started(pki: Pki, data_dir: Path, *args: str) -> Iterator[ServerProcess]:
    server = pki.server(data_dir, extra_args=list(args)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sighup_server(pki: Pki, tmp_path: Path) -> Iterator[ServerProcess]:
    """Reloads on SIGHUP only: no file check runs behind the test's back."""
    with started(pki, tmp_path / "data", "--tls-reload-seconds", "0") as server:
        yield server


def sighup(server: ServerProcess) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)


def test_after_sighup_a_new_connection_gets_the_new_certificate_and_an_open_one_keeps_working(
    pki: Pki, sighup_server: ServerProcess
) -> None:
    server = sighup_server
    assert server.channel is not None
    old = served_serial(pki, server.address)
    assert answers(server.channel)  # the connection opened before the rotation

    new = rotate(pki)
    sighup(server)
    wait_until(lambda: bool(lines_with(server, "TLS reloaded (SIGHUP)")), timeout=TIMEOUT)

    assert served_serial(pki, server.address) == new.certificate.serial_number != old
    assert answers(server.channel), "the open connection stopped working"
    with pki.channel(server.address, ACME_ADMIN) as fresh:
        assert answers(fresh)
    assert server.process is not None and server.process.poll() is None


def test_a_bad_new_key_keeps_the_old_certificate_and_says_so_in_one_line(
    pki: Pki, sighup_server: ServerProcess
) -> None:
    server = sighup_server
    old = served_serial(pki, server.address)
    certs.write_pem(pki.server_cert_path, certs.make_server_cert(pki.ca, ["localhost"]).cert_pem)  # old key

    sighup(server)
    wait_until(lambda: bool(lines_with(server, "TLS reload (SIGHUP) refused")), timeout=TIMEOUT)

    [line] = lines_with(server, "TLS reload (SIGHUP) refused")
    assert f"tls_key {pki.server_key_path} is not the key of the certificate in tls_cert" in line
    assert f"still serving serial {old:x}" in line
    assert served_serial(pki, server.address) == old
    with pki.channel(server.address, ACME_ADMIN) as fresh:
        assert answers(fresh)
    assert "Traceback" not in "".join(server.output)


def test_changed_files_are_picked_up_without_a_signal(pki: Pki, tmp_path: Path) -> None:
    with started(pki, tmp_path / "data", "--tls-reload-seconds", "0.2") as server:
        new = rotate(pki)
        wait_until(
            lambda: served_serial(pki, server.address) == new.certificate.serial_number, timeout=TIMEOUT
        )
        assert lines_with(server, "TLS reloaded (files changed)")


def test_sighup_to_the_parent_of_two_workers_reloads_both(pki: Pki, tmp_path: Path) -> None:
    with started(pki, tmp_path / "data", "--workers", "2", "--tls-reload-seconds", "0") as server:
        new = rotate(pki)
        sighup(server)
        wait_until(lambda: len(lines_with(server, "TLS reloaded (SIGHUP)")) == 2, timeout=TIMEOUT)
        # Separate connections: the kernel spreads them over both workers.
        serials = {served_serial(pki, server.address) for _ in range(20)}
        assert serials == {new.certificate.serial_number}


def test_sighup_without_tls_is_logged_and_the_server_keeps_serving(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        sighup(server)
        wait_until(lambda: bool(lines_with(server, "SIGHUP: nothing to reload")), timeout=TIMEOUT)
        assert server.channel is not None and answers(server.channel)
    finally:
        server.stop()
