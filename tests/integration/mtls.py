"""Mutual TLS for integration tests: a throwaway PKI and real servers that require client certificates.

    pki = Pki(tmp_path / "pki")
    server = pki.server(tmp_path / "data").start()          # --tls-cert/--tls-key/--client-ca
    stub = pb_grpc.KeyStoreStub(pki.channel(server.address, GLOBEX_ADMIN))

``server.stub`` calls as :data:`ACME_ADMIN` unless another ``identity`` is
given. The server certificate names ``localhost``, ``127.0.0.1`` and ``::1``,
so a channel to the address the server prints verifies as is. The CA names
its trust domain (URI SAN ``spiffe://example.org``), so the servers pin it
without ``--trust-domain``; ``Pki(..., ca_names_trust_domain=False)`` makes an
operator-style CA that names none, with which a server needs the flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from hsmstore import certs
from tests.integration.harness import ServerProcess

TRUST_DOMAIN = "example.org"
ACME_ADMIN = f"spiffe://{TRUST_DOMAIN}/tenant/acme/role/admin"
GLOBEX_ADMIN = f"spiffe://{TRUST_DOMAIN}/tenant/globex/role/admin"


class Pki:
    """A CA, a loopback server certificate and client certificates on demand, as files in ``directory``."""

    def __init__(
        self, directory: Path, trust_domain: str = TRUST_DOMAIN, ca_names_trust_domain: bool = True
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.trust_domain = trust_domain
        self.ca = certs.make_ca("hsmstore test CA", trust_domain if ca_names_trust_domain else None)
        self.ca_path = self._write("ca", self.ca)[0]
        server = certs.make_server_cert(self.ca, ["localhost"], ["127.0.0.1", "::1"])
        self.server_cert_path, self.server_key_path = self._write("server", server)
        self._clients: dict[str, tuple[Path, Path]] = {}
        self._count = 0

    # ------------------------------------------------------------ clients

    def client_files(self, spiffe_id: str) -> tuple[Path, Path]:
        """(certificate, key) of a valid client certificate for ``spiffe_id``, issued once."""
        if spiffe_id not in self._clients:
            self._clients[spiffe_id] = self.issue(uris=[spiffe_id])
        return self._clients[spiffe_id]

    def issue(
        self,
        uris: Sequence[str],
        ca: certs.Issued | None = None,
        expired: bool = False,
    ) -> tuple[Path, Path]:
        """Any client certificate, also one that must be refused: no URI, several, malformed,
        expired, or from another ``ca``."""
        now = datetime.now(UTC)
        issued = certs.make_client_cert(
            ca or self.ca,
            uris,
            not_before=now - timedelta(days=3) if expired else None,
            not_after=now - timedelta(days=1) if expired else None,
        )
        self._count += 1
        return self._write(f"client-{self._count}", issued)

    def issue_under_intermediate(self, uris: Sequence[str], root: certs.Issued) -> tuple[Path, Path]:
        """A client certificate under a new intermediate CA of ``root``; its file holds leaf and
        intermediate, the chain a client presents. ``root``'s path length may forbid that intermediate."""
        intermediate = certs.make_intermediate_ca(root)
        cert_path, key_path = self.issue(uris, ca=intermediate)
        cert_path.write_bytes(cert_path.read_bytes() + intermediate.cert_pem)
        return cert_path, key_path

    def write_bundle(self, stem: str, *cas: certs.Issued) -> Path:
        """Several CA certificates in one PEM file, as ``--client-ca`` takes them."""
        path = self.directory / f"{stem}.pem"
        certs.write_pem(path, b"".join(ca.cert_pem for ca in cas))
        return path

    def credentials(
        self, spiffe_id: str | None = None, files: tuple[Path, Path] | None = None
    ) -> grpc.ChannelCredentials:
        """Trust the test CA; present the certificate of ``spiffe_id`` or ``files`` (neither: none)."""
        if spiffe_id is not None:
            files = self.client_files(spiffe_id)
        cert, key = (files[0].read_bytes(), files[1].read_bytes()) if files else (None, None)
        return grpc.ssl_channel_credentials(self.ca_path.read_bytes(), key, cert)

    def channel(self, target: str, spiffe_id: str | None = None) -> grpc.Channel:
        """A mutual-TLS channel to ``target`` as ``spiffe_id`` (None: TLS without a client certificate)."""
        return grpc.secure_channel(target, self.credentials(spiffe_id))

    def files_channel(self, target: str, files: tuple[Path, Path]) -> grpc.Channel:
        return grpc.secure_channel(target, self.credentials(files=files))

    # ------------------------------------------------------------ servers

    @property
    def server_args(self) -> list[str]:
        return self.server_args_with(self.ca_path)

    def server_args_with(self, client_ca: Path) -> list[str]:
        return [
            "--tls-cert",
            str(self.server_cert_path),
            "--tls-key",
            str(self.server_key_path),
            "--client-ca",
            str(client_ca),
        ]

    def server(
        self,
        data_dir: Path,
        identity: str = ACME_ADMIN,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        client_ca: Path | None = None,
    ) -> ServerProcess:
        """A mutual-TLS server (not started yet) on a free loopback port; ``stub`` calls as ``identity``.

        ``client_ca``: the CA file it trusts for clients (default: this PKI's CA).
        """
        return ServerProcess(
            data_dir,
            extra_args=[*self.server_args_with(client_ca or self.ca_path), *extra_args],
            extra_env=dict(extra_env or {}),
            credentials=self.credentials(identity),
        )

    def _write(self, stem: str, issued: certs.Issued) -> tuple[Path, Path]:
        cert_path, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        certs.write_pem(cert_path, issued.cert_pem)
        certs.write_pem(key_path, issued.key_pem, private=True)
        return cert_path, key_path


def start_mtls_server(pki: Pki, data_dir: Path, identity: str = ACME_ADMIN) -> ServerProcess:
    return pki.server(data_dir, identity).start()
