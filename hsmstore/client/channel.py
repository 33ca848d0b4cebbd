"""Open a channel to an hsmstore server and get a typed KeyStore stub."""

from __future__ import annotations

from pathlib import Path

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc

DEFAULT_ENDPOINT = "127.0.0.1:50051"


def open_channel(
    endpoint: str = DEFAULT_ENDPOINT,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> grpc.Channel:
    """Plaintext for a loopback dev server; TLS (and a client certificate) when files are given."""
    if ca_file is None:
        return grpc.insecure_channel(endpoint)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes(),
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
    )
    return grpc.secure_channel(endpoint, credentials)


def key_store(channel: grpc.Channel) -> pb_grpc.KeyStoreStub:
    return pb_grpc.KeyStoreStub(channel)
