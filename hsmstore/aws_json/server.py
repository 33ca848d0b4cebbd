"""The AWS JSON 1.1 HTTP server: ``POST /``, ``X-Amz-Target: TrentService.<Operation>``, JSON bodies.

Standard library only (``http.server``): the protocol is one POST route with
small JSON bodies, and HTTP/1.1 keep-alive is all AWS SDKs ask of it, so no
dependency is added (issue 19: the server must not need botocore).

Bounds, the same as the gRPC port's (docs/api.md "AWS JSON protocol",
server/app.py ``server_options``):

* a request body over ``MAX_BODY_BYTES`` (256 KiB) is refused (413) before a
  byte of it is read, and the connection closed;
* a request must arrive whole within ``RECEIVE_TIMEOUT_SECONDS`` (10 s) of its
  first byte, and a kept-alive connection may wait ``IDLE_TIMEOUT_SECONDS``
  for its next request: a slow or half-open client holds its thread no longer
  (the :class:`_Watch` thread cuts the connection);
* at most ``MAX_CONNECTIONS`` connections at once; one more is answered 503
  and closed, without a thread.

Authentication is one function (:data:`Authenticate`), given by the composition
root: SigV4 verification with access keys (``access_keys.py`` ``SigV4Callers``,
bootstrap.py ``aws_authenticator``), which also takes the documented local test
key on loopback under the embedded default.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hsmstore.aws_json.dispatch import Answer, AwsCalls, error_answer
from hsmstore.core.calls import CallObserver
from hsmstore.core.model import Caller
from hsmstore.core.ports import AuditSink
from hsmstore.core.use_cases import UseCases
from hsmstore.errors import ValidationException

log = logging.getLogger("hsmstore.aws_json")

MAX_BODY_BYTES = 256 * 1024  # as gRPC's MAX_RECEIVE_MESSAGE_BYTES (server/app.py says why)
RECEIVE_TIMEOUT_SECONDS = 10.0  # as gRPC's receive deadline
IDLE_TIMEOUT_SECONDS = 60.0  # a kept-alive connection without a request
MAX_CONNECTIONS = 256
WATCH_INTERVAL_SECONDS = 0.5
CONTENT_TYPE = "application/x-amz-json-1.1"


@dataclass(frozen=True)
class SignedRequest:
    """What SigV4 verification needs of one request, and where it came from."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]  # as received: names as sent, repeats kept
    body: bytes
    peer_host: str


# Who is calling, or a KMSError (UnrecognizedClientException, InvalidSignatureException, ...);
# the call envelope audits a refusal as an unidentified caller.
Authenticate = Callable[[SignedRequest], Caller]


class _Watch:
    """Every connection's deadline; a thread cuts (shuts down) the socket of one past it.

    A connection is ``idle`` (waiting for a request: ``IDLE_TIMEOUT_SECONDS``),
    ``receiving`` (its request started: ``RECEIVE_TIMEOUT_SECONDS``) or
    ``busy`` (its call runs: no deadline; the use case has its own bounds).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float | None] = {}
        self._stopping = False
        self._done = threading.Event()
        threading.Thread(target=self._run, name="aws-json-watch", daemon=True).start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._deadlines)

    def add(self, connection: socket.socket) -> None:
        self.idle(connection)

    def idle(self, connection: socket.socket) -> None:
        self._set(connection, IDLE_TIMEOUT_SECONDS)
        if self._stopping:
            _cut(connection)

    def receiving(self, connection: socket.socket) -> None:
        self._set(connection, RECEIVE_TIMEOUT_SECONDS)

    def busy(self, connection: socket.socket) -> None:
        self._set(connection, None)

    def remove(self, connection: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(connection, None)

    def _set(self, connection: socket.socket, seconds: float | None) -> None:
        with self._lock:
            self._deadlines[connection] = None if seconds is None else time.monotonic() + seconds

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self, grace: float) -> int:
        """Cut idle connections now, busy ones once their call is answered or after ``grace``; how
        many were still busy then."""
        self._stopping = True
        deadline = time.monotonic() + grace
        while True:
            with self._lock:
                busy = [conn for conn, until in self._deadlines.items() if until is None]
                idle = [conn for conn, until in self._deadlines.items() if until is not None]
            for connection in idle:
                _cut(connection)
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        for connection in busy:
            _cut(connection)
        self._done.set()
        return len(busy)

    def _run(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_SECONDS):
            now = time.monotonic()
            with self._lock:
                late = [conn for conn, until in self._deadlines.items() if until is not None and until < now]
            for connection in late:
                _cut(connection)


def _cut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class AwsJsonHandler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, one POST at a time."""

    protocol_version = "HTTP/1.1"
    server_version = "hsmstore"
    sys_version = ""
    timeout = RECEIVE_TIMEOUT_SECONDS  # any single read; the whole request is _Watch's
    wbufsize = 64 * 1024  # head and body leave in one write (flushed after each request)
    server: AwsJsonServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            self.server.watch.receiving(self.connection)
            self.connection.do_handshake()  # here, on this thread: never on the accept loop

    def handle_one_request(self) -> None:
        watch = self.server.watch
        watch.idle(self.connection)
        self.connection.settimeout(IDLE_TIMEOUT_SECONDS)
        try:
            if not self.rfile.peek(1):  # type: ignore[attr-defined]
                self.close_connection = True
                return
        except OSError:
            self.close_connection = True
            return
        watch.receiving(self.connection)
        self.connection.settimeout(RECEIVE_TIMEOUT_SECONDS)
        super().handle_one_request()

    def do_POST(self) -> None:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self._refuse(411, "The request needs a Content-Length header")
            return
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self._refuse(413, f"The request body is larger than {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return
        self.server.watch.busy(self.connection)
        host, port = self.client_address[:2]
        request = SignedRequest(
            method="POST",
            path=self.path.partition("?")[0],
            query=self.path.partition("?")[2],
            headers=tuple(self.headers.items()),
            body=body,
            peer_host=host,
        )
        family = "ipv6" if ":" in host else "ipv4"
        source = f"{family}:[{host}]:{port}" if family == "ipv6" else f"{family}:{host}:{port}"
        answer = self.server.calls.answer(
            self.headers.get("X-Amz-Target", ""), body, lambda: self.server.authenticate(request), source
        )
        self._send(answer)

    def _refuse(self, status: int, message: str) -> None:
        """A request refused before it is read: answered, and the connection closed."""
        self.close_connection = True
        answer = error_answer(ValidationException(message))
        self._send(Answer(status, answer.document))

    def _send(self, answer: Answer) -> None:
        body = answer.body
        self.send_response(answer.status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        if answer.request_id:
            self.send_header("x-amzn-RequestId", answer.request_id)
        if self.close_connection or self.server.watch.stopping:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Protocol noise (timeouts, bad request lines) at debug; every call has its access line."""
        log.debug("%s: " + format, self.address_string(), *args)


class AwsJsonServer(ThreadingHTTPServer):
    """A thread per connection, at most ``MAX_CONNECTIONS``; SO_REUSEPORT for ``--workers``."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        calls: AwsCalls,
        authenticate: Authenticate,
        reuse_port: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.calls = calls
        self.authenticate = authenticate
        self.watch = _Watch()
        self.tls = tls
        self._reuse_port = reuse_port
        super().__init__(address, AwsJsonHandler, bind_and_activate=False)
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def server_bind(self) -> None:
        """Bind without ``HTTPServer.server_bind``'s reverse DNS lookup of the host (``getfqdn``)."""
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self._reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        if self.tls is not None:
            connection = self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if len(self.watch) >= MAX_CONNECTIONS or self.watch.stopping:
            _answer_busy(request)
            self.shutdown_request(request)
            return
        self.watch.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.watch.remove(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke (reset, cut by _Watch, a TLS handshake that failed): one debug line."""
        log.debug("AWS JSON connection from %s ended with an error", client_address, exc_info=True)


def _answer_busy(connection: socket.socket) -> None:
    if isinstance(connection, ssl.SSLSocket):
        return  # no handshake on the accept loop: closed without an answer
    body = b'{"__type":"ServiceUnavailableException","message":"Too many connections; retry"}'
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(OSError, ValueError):
        connection.settimeout(1.0)
        connection.sendall(head + body)


@dataclass
class RunningAwsServer:
    """The AWS JSON port of one serving process."""

    server: AwsJsonServer
    port: int
    thread: threading.Thread

    def replace_tls(self, context: ssl.SSLContext) -> None:
        """New connections use ``context`` (SIGHUP: the TLS files again); open ones keep theirs."""
        self.server.tls = context

    def stop(self, grace: float) -> int:
        """Stop accepting, let calls in flight finish within ``grace``; how many were cut."""
        self.server.shutdown()  # the accept loop ends; the listening socket closes below
        self.server.server_close()
        cut = self.server.watch.stop(grace)
        self.thread.join(5)
        return cut


def tls_context(cert_chain: str, private_key: str, client_ca: str = "") -> ssl.SSLContext:
    """TLS 1.2+ with the gRPC port's certificate; a client certificate must chain to ``client_ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_chain, private_key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def start_aws_server(
    use_cases: UseCases,
    listen: str,
    *,
    audit_sink: AuditSink | None = None,
    audit_fail_open: bool = False,
    observers: Sequence[CallObserver] = (),
    authenticate: Authenticate,
    reuse_port: bool = False,
    tls: ssl.SSLContext | None = None,
) -> RunningAwsServer:
    """Serve the AWS JSON protocol on ``listen`` (HOST:PORT, port 0 picks one); OSError if it cannot bind.

    ``audit_sink``, ``observers`` and the request quotas are the gRPC server's
    (bootstrap.py ``Runtime``): one audit trail, one set of metrics.
    """
    host, _, port = listen.rpartition(":")
    calls = AwsCalls(
        use_cases,
        audit_sink,
        audit_fail_open,
        observers,
        admission=use_cases.quotas.admit if use_cases.quotas.enforced else None,
    )
    server = AwsJsonServer((host.strip("[]"), int(port)), calls, authenticate, reuse_port, tls)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="aws-json", daemon=True
    )
    thread.start()
    return RunningAwsServer(server, int(server.server_address[1]), thread)
