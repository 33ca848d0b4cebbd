"""The XKS HTTP server: uvicorn (httptools, uvloop) running a small ASGI app in a thread of `serve`.

Why uvicorn (docs/xks.md "Server"): a well-kept ASGI server whose HTTP/1.1
parser is httptools (llhttp, Node's parser, in C), with keep-alive, TLS from
the standard ``ssl`` module and a uvloop event loop; no hand-written parser.
The spec asks for HTTP/1.1 ("the proxy must be able to fall back to 1.1");
uvicorn's HTTP/2 needs another package, so hsmstore serves HTTP/1.1 only.

The event loop only reads and writes: each call (SigV4, the gate, the token,
the audit record's fsync) runs on a small thread pool, so a slow token never
stalls the loop. Order of the checks (spec; docs/xks.md "Errors"):

1. ``GET /ping`` (no authentication: the load balancer's health check) -> 200;
2. a path that is no XKS API of a configured URI prefix -> 404
   InvalidUriPathException, before any authentication;
3. any method but POST on an API path -> 405 ("A GET on any of their URIs MUST get 405");
4. a body over :data:`MAX_BODY_BYTES` -> 501 UnsupportedOperationException (spec: "a parameter
   value exceeded the maximum size that is currently supported"), unread, the connection closed;
5. more than :data:`MAX_PENDING_CALLS` calls waiting for a thread -> 429 ThrottlingException
   (answered at once, so an overload never exceeds KMS's 250 ms budget silently);
6. the call (``calls.py``): SigV4 -> 401, JSON -> 400, then the use case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import uvicorn

from hsmstore.errors import ThrottlingException, UnsupportedOperationException
from hsmstore.xks.calls import Answer, XksCalls, error_answer, uri_not_found
from hsmstore.xks.errors import error_body
from hsmstore.xks.sigv4 import ReceivedRequest

log = logging.getLogger("hsmstore.xks")

MAX_BODY_BYTES: Final = 64 * 1024  # 8,192 bytes base64-encoded twice over, with room to spare
MAX_PENDING_CALLS: Final = 256
CALL_THREADS: Final = 8
IDLE_TIMEOUT_SECONDS: Final = 60  # a kept-alive connection without a request
MAX_CONNECTIONS: Final = 1000  # uvicorn answers 503 beyond it
START_TIMEOUT_SECONDS: Final = 10.0
PING_PATH: Final = "/ping"
CONTENT_TYPE: Final = b"application/json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class XksApp:
    """The ASGI application: routing, bounds, and the call on the thread pool."""

    def __init__(self, calls: XksCalls, threads: int = CALL_THREADS) -> None:
        self.calls = calls
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="xks-call")
        self._pending = 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else is served
        path: str = scope["path"]
        method: str = scope["method"]
        if path == PING_PATH:
            if method in ("GET", "HEAD"):
                await _send(send, 200, b"pong", b"text/plain")
            else:
                await _send_answer(send, _not_allowed("GET"), allow=b"GET, HEAD")
            return
        found = self.calls.route(path)
        if found is None:
            await _send_answer(send, uri_not_found())
            return
        if method != "POST":
            await _send_answer(send, _not_allowed("POST"), allow=b"POST")
            return
        body = await _read_body(scope, receive)
        if body is None:
            too_large = UnsupportedOperationException(
                f"The request body is larger than the {MAX_BODY_BYTES} bytes hsmstore supports"
            )
            await _send_answer(send, error_answer(too_large), close=True)
            return
        if self._pending >= MAX_PENDING_CALLS:
            await _send_answer(send, error_answer(ThrottlingException("Too many calls in progress; retry")))
            return
        raw_path = scope.get("raw_path") or path.encode()
        request = ReceivedRequest(
            method=method,
            raw_path=raw_path.decode("latin-1"),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=tuple(
                (name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope["headers"]
            ),
            body=body,
        )
        self._pending += 1
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.calls.answer, found, request, _source(scope)
            )
        finally:
            self._pending -= 1
        await _send_answer(send, answer)


def _not_allowed(allowed: str) -> Answer:
    return Answer(405, error_body("ValidationException", f"Method not allowed: use {allowed}"))


async def _read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The whole body, or None once it is over :data:`MAX_BODY_BYTES` (the rest is not read)."""
    for name, value in scope["headers"]:
        if name.lower() == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # the client went away; the answer goes nowhere
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _source(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


async def _send_answer(send: Send, answer: Answer, *, allow: bytes = b"", close: bool = False) -> None:
    extra = [(b"allow", allow)] if allow else []
    if close:
        extra.append((b"connection", b"close"))
    await _send(send, answer.status, answer.body, CONTENT_TYPE, extra)


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def xks_tls_context(cert_chain: str, private_key: str, client_ca: str = "") -> ssl.SSLContext:
    """TLS 1.2 or later (spec); with ``client_ca`` a client certificate is required (mTLS).

    Reloading (SIGHUP) loads the files again into this same context: new
    handshakes use them, open connections keep theirs.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_chain, private_key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class RunningXksServer:
    """The XKS port of one serving process."""

    server: uvicorn.Server
    app: XksApp
    host: str
    port: int
    tls: ssl.SSLContext | None
    thread: threading.Thread

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{shown}:{self.port}"

    def stop(self, grace: float) -> None:
        """Stop accepting; calls in flight get ``grace`` seconds to finish."""
        self.server.config.timeout_graceful_shutdown = max(1, round(grace))
        self.server.should_exit = True
        self.thread.join(grace + 5)
        self.app.close()


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def certificate_names(peer_certificate: Mapping[str, Any] | None) -> set[str]:
    """The subject common names and DNS subject alternative names of a peer certificate
    (``ssl.SSLSocket.getpeercert()``'s form); empty without one."""
    if not peer_certificate:
        return set()
    names = {
        value for rdn in peer_certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    }
    names |= {value for kind, value in peer_certificate.get("subjectAltName", ()) if kind == "DNS"}
    return names


def _client_name_checking_protocol(client_name: str) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol, closing any connection whose client certificate lacks ``client_name``.

    The spec (Authentication): with mTLS, "the XKS proxy MUST allow configuring the subject name of
    the client certificate" and refuse others; AWS KMS presents ``cks.kms.<region>.amazonaws.com``.
    The CA check alone would admit any certificate that CA ever issued.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class ClientNameCheckingProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if client_name not in certificate_names(transport.get_extra_info("peercert")):
                log.warning("XKS: refused a TLS client whose certificate does not name %s", client_name)
                transport.close()

    return ClientNameCheckingProtocol


def start_xks_server(
    calls: XksCalls,
    listen: str,
    *,
    reuse_port: bool = False,
    tls: ssl.SSLContext | None = None,
    client_name: str = "",
) -> RunningXksServer:
    """Serve the XKS API on ``listen`` (HOST:PORT, port 0 picks one); OSError if it cannot bind.

    ``client_name``: with mTLS, the name the client certificate must carry (:func:`certificate_names`).
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    sock = bind_socket(host, int(port), reuse_port)
    app = XksApp(calls)
    config = uvicorn.Config(
        app,
        http=_client_name_checking_protocol(client_name) if client_name else "httptools",
        loop=_loop_name(),
        lifespan="off",
        log_config=None,
        access_log=False,  # every call has its access line from the call envelope's observer
        server_header=False,
        timeout_keep_alive=IDLE_TIMEOUT_SECONDS,
        limit_concurrency=MAX_CONNECTIONS,
    )
    config.load()
    config.ssl = tls  # ours: TLS 1.2+, mTLS when a client CA is given (xks_tls_context)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no start/stop chatter per worker
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="xks", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            with contextlib.suppress(OSError):
                sock.close()
            app.close()
            raise OSError(f"the XKS server did not start on {listen}")
        time.sleep(0.01)
    return RunningXksServer(server, app, host, int(sock.getsockname()[1]), tls, thread)


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
