"""The AWS JSON HTTP server's bounds (hsmstore/aws_json/server.py), on loopback with fake use cases.

Keep-alive, the body limit, the whole-request deadline against a slow client,
the connection cap, and a stop that does not wait for idle connections.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hsmstore.aws_json import server as aws_server
from hsmstore.aws_json.server import RunningAwsServer, start_aws_server
from hsmstore.core.use_cases import build_use_cases
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault
from tests.unit.test_aws_dispatch import ADMIN, FixedClock


@pytest.fixture
def running() -> Iterator[RunningAwsServer]:
    use_cases = build_use_cases(TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), FixedClock())
    started = start_aws_server(use_cases, "127.0.0.1:0", authenticate=lambda _request: ADMIN)
    yield started
    started.stop(1.0)


def post(connection: http.client.HTTPConnection, operation: str, body: bytes = b"{}") -> tuple[int, Any]:
    connection.request(
        "POST",
        "/",
        body=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{operation}"},
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def test_requests_share_one_kept_alive_connection(running: RunningAwsServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    assert post(connection, "ListKeys")[0] == 200
    first = connection.sock
    assert post(connection, "GenerateRandom", b'{"NumberOfBytes": 8}')[0] == 200
    assert connection.sock is first
    connection.close()


def test_a_body_over_the_limit_is_refused_413_and_the_connection_closed(running: RunningAwsServer) -> None:
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw:
        raw.sendall(
            f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {aws_server.MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"ValidationException" in answer


def test_a_request_without_content_length_is_refused_411(running: RunningAwsServer) -> None:
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw:
        raw.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 411")


def drips_until_cut(raw: socket.socket, seconds: float) -> bool:
    """Send a header line every 0.1 s (each read is quick, the request never ends); False once the
    server has cut the connection, True if it never did within ``seconds``."""
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            raw.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.1)
    except OSError:  # a reset, or a send into a closed connection
        return False
    return True


def test_a_client_that_drips_its_request_is_cut_at_the_receive_deadline(
    running: RunningAwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aws_server, "RECEIVE_TIMEOUT_SECONDS", 0.5)
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw:
        raw.sendall(b"POST / HTTP/1.1\r\n")
        began = time.monotonic()
        assert not drips_until_cut(raw, seconds=4), "the server kept a dripping request open"
        assert time.monotonic() - began < 4


def test_one_connection_over_the_cap_is_answered_503(
    running: RunningAwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aws_server, "MAX_CONNECTIONS", 1)
    holder = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    assert post(holder, "ListKeys")[0] == 200
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as extra:
        answer = extra.recv(4096)  # answered at once, before any request: no thread is spent on it
    assert answer.startswith(b"HTTP/1.1 503")
    assert b"ServiceUnavailableException" in answer
    holder.close()


def test_a_stop_does_not_wait_for_idle_connections(running: RunningAwsServer) -> None:
    idle = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    assert post(idle, "ListKeys")[0] == 200
    began = time.monotonic()
    assert running.stop(10.0) == 0
    assert time.monotonic() - began < 3
    assert idle.sock is not None
    assert idle.sock.recv(1) == b""  # closed by the server
    idle.close()
