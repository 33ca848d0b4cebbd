"""Open a channel to an hsmstore server and get a typed KeyStore stub.

A server that is not the loopback dev server serves mutual TLS only: the client
verifies the server against ``ca_file`` and presents ``cert_file``/``key_file``,
a certificate whose URI SAN is the caller's SPIFFE ID
(``spiffe://<trust-domain>/tenant/<tenant>/<kind>/<name>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.client.errors import ClientSetupError

DEFAULT_ENDPOINT = "127.0.0.1:50051"
# Keepalive within the server's bounds (hsmstore/server/app.py server_options, gRFC A8): a ping
# at most every 5 minutes and only while calls are in flight, so the server never counts a strike.
CLIENT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
)


def open_channel(
    endpoint: str = DEFAULT_ENDPOINT,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    options: Sequence[tuple[str, int]] = (),
) -> grpc.Channel:
    """Plaintext for a loopback dev server; TLS as soon as any file is given.

    ``ca_file`` verifies the server (without it: the system's CAs);
    ``cert_file`` and ``key_file`` go together and make the TLS mutual.
    ``options`` are grpc channel arguments (``KeyStoreClient`` passes ``CLIENT_OPTIONS``).
    Raises ClientSetupError if a file is missing or only one of the pair is given.
    """
    if ca_file is None and cert_file is None and key_file is None:
        return grpc.insecure_channel(endpoint, options=list(options))
    return grpc.secure_channel(
        endpoint, channel_credentials(ca_file, cert_file, key_file), options=list(options)
    )


def channel_credentials(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> grpc.ChannelCredentials:
    if (cert_file is None) != (key_file is None):
        raise ClientSetupError("a client certificate and its key go together (--cert and --key)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA bundle") if ca_file else None,
        private_key=_read(key_file, "client key") if key_file else None,
        certificate_chain=_read(cert_file, "client certificate") if cert_file else None,
    )


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ClientSetupError(f"cannot read the {what} {path}: {error.strerror}") from None


def key_store(channel: grpc.Channel) -> pb_grpc.KeyStoreStub:
    return pb_grpc.KeyStoreStub(channel)
