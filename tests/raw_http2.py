"""Half-open gRPC calls on a raw HTTP/2 connection: HEADERS sent, DATA never (issue 14).

A client that opens calls and never sends their request must not hold a
server worker (docs/api.md). grpcio's client always sends the request, so
such a peer is written by hand here: the connection preface, SETTINGS, and one
HEADERS frame per call (RFC 9113 sections 3.4 and 4; the header block made of
literal fields without indexing, RFC 7541 section 6.2.2). The reader acknowledges
the server's SETTINGS and PINGs, as a live peer does, so the server has no
protocol reason to drop it.

Shared by tests/integration/test_half_open_streams.py (behaviour) and
bench/half_open.py (other callers' latency meanwhile).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
FRAME_HEADER_BYTES = 9
HELD_PATH = "/hsmstore.v1.KeyStore/GenerateRandom"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id (RFC 9113 4.1)."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload


def _hpack_length(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix and the Huffman bit off (RFC 7541 5.1)."""
    if value < 127:
        return bytes([value])
    out, value = bytearray([127]), value - 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def header_block(path: str, authority: str) -> bytes:
    """The request headers of a gRPC call, each a literal without indexing (RFC 7541 6.2.2)."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    block = bytearray()
    for name, value in fields:
        block += (
            b"\x00" + _hpack_length(len(name)) + name.encode() + _hpack_length(len(value)) + value.encode()
        )
    return bytes(block)


class HalfOpenConnection:
    """One plaintext connection holding ``streams`` calls to ``path`` that sent HEADERS and no DATA.

    The reader notes what the server does meanwhile: which streams it ended
    (``ended``: a HEADERS frame with END_STREAM, the call's trailers), that it
    acknowledged our PING (``pinged``, see :meth:`sync`), and a GOAWAY (``goaway``).
    """

    def __init__(self, address: str, streams: int, path: str = HELD_PATH) -> None:
        host, _, port = address.rpartition(":")
        self._socket = socket.create_connection((host, int(port)), timeout=10)
        self._socket.settimeout(None)
        self._lock = threading.Lock()
        self.ended: set[int] = set()
        self.pinged = threading.Event()
        self.goaway = threading.Event()
        self._send(PREFACE + frame(SETTINGS, 0, 0))
        threading.Thread(target=self._read, daemon=True).start()
        block = header_block(path, address)
        self._send(b"".join(frame(HEADERS, END_HEADERS, 2 * n + 1, block) for n in range(streams)))

    def _send(self, data: bytes) -> None:
        with self._lock:
            self._socket.sendall(data)

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := self._socket.recv(65536):
                buffer += chunk
                while len(buffer) >= FRAME_HEADER_BYTES:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < FRAME_HEADER_BYTES + length:
                        break
                    kind, flags = buffer[3], buffer[4]
                    stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    payload = buffer[FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + length]
                    buffer = buffer[FRAME_HEADER_BYTES + length :]
                    self._received(kind, flags, stream_id, payload)

    def _received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            self._send(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._send(frame(PING, ACK, 0, payload))
        elif kind == PING:
            self.pinged.set()
        elif kind == HEADERS and flags & END_STREAM:
            self.ended.add(stream_id)
        elif kind == GOAWAY:
            self.goaway.set()

    def sync(self, timeout: float = 10.0) -> bool:
        """Send a PING and wait for its ACK (RFC 9113 6.7): the server reads frames in the
        order sent, so by then it has read every HEADERS frame sent before."""
        self._send(frame(PING, 0, 0, bytes(8)))
        return self.pinged.wait(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
