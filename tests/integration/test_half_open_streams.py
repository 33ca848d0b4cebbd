"""Half-open streams through a real server: calls that never send their request hold no worker (issue 14).

A raw HTTP/2 connection sends the preface, SETTINGS and one HEADERS frame per
call for ``/hsmstore.v1.KeyStore/GenerateRandom``, and never any DATA. The
server must keep answering other callers and health checks meanwhile, and end
each such stream after its receive deadline with an audited ValidationException.
Deadlines here are generous (a frozen server never answers at all): these are
behaviours, not timings.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, wait_until

pytestmark = pytest.mark.integration

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, SETTINGS, PING = 0x1, 0x4, 0x6
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
HELD_PATH = "/hsmstore.v1.KeyStore/GenerateRandom"
ANSWER_TIMEOUT = 5.0
RECEIVE_DEADLINE_SECONDS = 10.0  # server/app.py RECEIVE_TIMEOUT_SECONDS
SETTLE_SECONDS = 0.5


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """An HTTP/2 frame (RFC 9113 4.1)."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload


def literal(name: str, value: str) -> bytes:
    """A header field literal without indexing, no Huffman (RFC 7541 6.2.2); short strings only."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class HalfOpen:
    """One connection holding ``streams`` calls that sent HEADERS and no DATA.

    A reader thread acknowledges SETTINGS and PINGs (a live peer) and notes
    which streams the server ended (a HEADERS frame with END_STREAM: the trailers).
    """

    def __init__(self, address: str, streams: int) -> None:
        host, _, port = address.rpartition(":")
        self.socket = socket.create_connection((host, int(port)), timeout=10)
        self.socket.settimeout(None)
        self.ended: set[int] = set()
        self.pinged = threading.Event()
        self._lock = threading.Lock()
        self._send(PREFACE + frame(SETTINGS, 0, 0))
        threading.Thread(target=self._read, daemon=True).start()
        block = b"".join(
            literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", HELD_PATH),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        self._send(b"".join(frame(HEADERS, END_HEADERS, 2 * n + 1, block) for n in range(streams)))

    def _send(self, data: bytes) -> None:
        with self._lock:
            self.socket.sendall(data)

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := self.socket.recv(65536):
                buffer += chunk
                while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                    length = int.from_bytes(buffer[:3], "big")
                    kind, flags = buffer[3], buffer[4]
                    stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
                    if kind == SETTINGS and not flags & ACK:
                        self._send(frame(SETTINGS, ACK, 0))
                    elif kind == PING and not flags & ACK:
                        self._send(frame(PING, ACK, 0, payload))
                    elif kind == PING:
                        self.pinged.set()
                    elif kind == HEADERS and flags & END_STREAM:
                        self.ended.add(stream_id)

    def settle(self) -> None:
        """Wait until the server has read every HEADERS frame (it answers a PING sent after them
        in order), then a moment more for the calls to reach the server's handlers."""
        self._send(frame(PING, 0, 0, bytes(8)))
        assert self.pinged.wait(10)
        time.sleep(SETTLE_SECONDS)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        self.socket.close()


@contextlib.contextmanager
def half_open(server: ServerProcess, streams: int) -> Iterator[HalfOpen]:
    held = HalfOpen(server.address, streams)
    held.settle()
    try:
        yield held
    finally:
        held.close()


def health_status(channel: grpc.Channel) -> int:
    answer = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=ANSWER_TIMEOUT
    )
    return int(answer.status)


def other_caller_is_served(server: ServerProcess) -> bool:
    """A GenerateRandom and a health check from another connection both answer."""
    with grpc.insecure_channel(server.address) as channel:
        random = pb_grpc.KeyStoreStub(channel).GenerateRandom(
            pb.GenerateRandomRequest(number_of_bytes=16), timeout=ANSWER_TIMEOUT
        )
        return (
            len(random.plaintext) == 16 and health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        )


def test_two_half_open_streams_leave_other_callers_and_health_answering(server: ServerProcess) -> None:
    with half_open(server, 2):
        for _ in range(3):
            assert other_caller_is_served(server)


def test_fifty_half_open_streams_leave_other_callers_and_health_answering(server: ServerProcess) -> None:
    with half_open(server, 50):
        for _ in range(5):
            assert other_caller_is_served(server)


def test_many_half_open_connections_leave_other_callers_answering(server: ServerProcess) -> None:
    with contextlib.ExitStack() as held:
        for _ in range(10):
            held.enter_context(half_open(server, 10))
        assert other_caller_is_served(server)


def test_a_call_whose_request_never_arrives_is_ended_as_validation_and_audited(server: ServerProcess) -> None:
    with half_open(server, 1) as held:
        wait_until(lambda: 1 in held.ended, timeout=RECEIVE_DEADLINE_SECONDS + 15)

    def refused_call_recorded() -> bool:
        page = pb_grpc.AuditStub(server.channel).LookupEvents(
            pb.LookupEventsRequest(
                lookup_attributes=[
                    pb.LookupAttribute(attribute_key="EventName", attribute_value="GenerateRandom")
                ]
            ),
            timeout=ANSWER_TIMEOUT,
        )
        records = [json.loads(event.cloud_trail_event) for event in page.events]
        return any(
            record.get("errorCode") == "ValidationException"
            and "no request message" in record["errorMessage"]
            for record in records
        )

    wait_until(refused_call_recorded)
    assert other_caller_is_served(server)
