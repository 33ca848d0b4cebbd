"""Build the gRPC server: KeyStore servicer + health + reflection (+ TLS).

The server is a ``grpc.aio`` server whose event loop receives every request and
whose sync servicers run on a few worker threads once a request is in hand
(``GrpcServer``), with per-connection and per-call bounds (issue 14, "Hold under
attack": two half-open streams froze grpcio's sync server).

Health (``grpc.health.v1.Health``) reports SERVING only once the token and the
metadata DB both answer, and is re-checked periodically (docs/api.md,
"Standard services are always on").
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as aio_health
from grpc_reflection.v1alpha import reflection

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.audit.queries import AuditQueries
from hsmstore.core.calls import CallObserver
from hsmstore.core.ports import AuditSink
from hsmstore.core.use_cases import UseCases
from hsmstore.errors import ValidationException
from hsmstore.server import convert
from hsmstore.server.errors import to_grpc_status
from hsmstore.server.servicer import (
    AdminServicer,
    AuditServicer,
    CallerResolver,
    CallRunner,
    KeyStoreServicer,
)
from hsmstore.server.tls import caller_resolver, server_credentials
from hsmstore.server.tls_reload import ReloadingTls, TlsPaths, material_from_bytes

log = logging.getLogger(__name__)

KEY_STORE_SERVICE = pb.DESCRIPTOR.services_by_name["KeyStore"].full_name
AUDIT_SERVICE = pb.DESCRIPTOR.services_by_name["Audit"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["Admin"].full_name
HEALTH_CHECK_INTERVAL_SECONDS = 10.0
# After the grace period, how long a handler still running on a worker (a token or DB call
# that has not returned) is waited for before the process gives up on it (GrpcServer.shut_down).
ABANDON_AFTER_SECONDS = 5.0
# How long calls cancelled at the end of the grace period get to unwind on the loop.
_SETTLE_SECONDS = 1.0
_STREAMS_CUT_AFTER_SECONDS = 0.2
_DRAIN_POLL_SECONDS = 0.01

T = TypeVar("T")


@dataclass(frozen=True)
class AuditWiring:
    """The audit trail's two ends: where records go, and LookupEvents."""

    sink: AuditSink
    queries: AuditQueries
    fail_open: bool = False


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes; TLS is mutual: ``client_ca`` is required, and callers are their certificates' SPIFFE IDs.

    ``trust_domain``: the only SPIFFE trust domain accepted (empty: any the client CA issued).
    """

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None
    trust_domain: str = ""
    # Where the PEM came from: given, the server reloads them on SIGHUP (RunningServer.reload_tls)
    # and, every ``reload_check_seconds`` (0: never), when they change (server/tls_reload.py).
    paths: TlsPaths | None = None
    reload_check_seconds: float = 0.0


@dataclass(frozen=True)
class Drained:
    """How a stop went: the calls in flight when it began, and how they ended."""

    in_flight: int
    cancelled: int  # still running at the end of the grace period: cancelled (the caller sees an error)
    abandoned: int  # their handler had not returned ABANDON_AFTER_SECONDS later (a hung token or DB call)
    seconds: float


@dataclass
class RunningServer:
    server: GrpcServer
    port: int
    health: aio_health.HealthServicer
    stop_health_checks: threading.Event
    tls: ReloadingTls | None = None

    def stop(self, grace: float = 5.0) -> Drained:
        """Graceful stop (issue 16, Deliver 7: "SIGTERM stops accepting, drains in-flight calls up
        to a deadline"): health says NOT_SERVING, new calls and connections are refused
        (UNAVAILABLE), calls in flight get ``grace`` seconds to finish, then the rest is cancelled.
        """
        self.stop_health_checks.set()
        self.server.run_on_loop(self.health.enter_graceful_shutdown())
        if self.tls is not None:
            self.tls.stop()
        return self.server.shut_down(grace)

    def reload_tls(self) -> bool:
        """SIGHUP: reload the TLS files (in the background); False when the server has no TLS."""
        if self.tls is None:
            return False
        self.tls.request_reload()
        return True


# Transport bounds (issue 14, "Hold under attack"); server_options says why.
MAX_RECEIVE_MESSAGE_BYTES = 256 * 1024
MAX_CONCURRENT_STREAMS = 100
RECEIVE_TIMEOUT_SECONDS = 10.0
MIN_PING_INTERVAL_WITHOUT_DATA_MS = 300_000
MAX_PING_STRIKES = 2
MAX_CONNECTION_IDLE_MS = 300_000
MAX_CONNECTION_AGE_MS = 1_800_000
MAX_CONNECTION_AGE_GRACE_MS = 60_000


def server_options(reuse_port: bool) -> list[tuple[str, int]]:
    """grpc core's per-connection bounds; a call waiting for its request holds no thread (``GrpcServer``).

    - Receive limit, 256 KiB: the largest valid request under AWS's per-field
      limits is a ReEncrypt (a 6,144-byte ciphertext, two 8 KiB encryption
      contexts, two 2,048-character key IDs, 10 grant tokens of 8,192
      characters: 106 KiB serialized); CreateKey (a 32 KiB policy, an
      8,192-character description, 50 tags) is 59 KiB. 256 KiB admits them with
      more than 2x headroom; grpc refuses anything larger itself
      (RESOURCE_EXHAUSTED) before a byte of it is parsed, instead of its default 4 MiB.
    - 100 concurrent streams per connection (RFC 9113 6.5.2
      SETTINGS_MAX_CONCURRENT_STREAMS; 5.1.2: "recommended that this value be
      no smaller than 100"); further HEADERS are refused with REFUSED_STREAM.
    - Keepalive enforcement (gRFC A8): without calls in flight a client may
      ping every 5 minutes at most; the third early ping closes the connection.
    - Connection idle and age (gRFC A9): a connection without calls for 5
      minutes is closed; every connection is asked to go away after 30 minutes
      (grpc adds +-10 % jitter) and closed a minute later, so none holds a
      socket or its streams for ever. Clients reconnect by themselves.

    A call whose request has not arrived ``RECEIVE_TIMEOUT_SECONDS`` after its
    HEADERS is answered ValidationException and audited (``GrpcServer``).
    """
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_WITHOUT_DATA_MS),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ]


class GrpcServer:
    """A ``grpc.aio`` server on its own event-loop thread, running sync handlers on a few worker threads.

    Why not grpcio's sync server: it hands a call to a pool thread as soon as its
    HEADERS arrive, and that thread then blocks until the request message does.
    Two streams that never send DATA held both threads of the default pool and
    froze every other caller, health checks included (issue 14). Here the event
    loop receives every request, so a waiting call holds no thread; a unary
    method's sync handler (the servicers, unchanged) runs on a worker thread
    (``_Workers``) only once its request is in hand, never on the loop: a token
    or DB call can block for seconds during an outage. The request is read with
    a deadline (``RECEIVE_TIMEOUT_SECONDS``) and a body that does not parse is
    not an exception: the handler is called with a ``convert.UnreadableRequest``
    instead, so the servicer refuses and audits it like any other bad call.

    It has the sync ``grpc.Server`` calls that hsmstore and the bench use
    (``add_generic_rpc_handlers``, ``add_registered_method_handlers``,
    ``add_insecure_port``, ``add_secure_port``, ``start``, ``stop(grace).wait()``).
    Async handlers (health, reflection) run on the loop as they are.
    """

    def __init__(self, thread_pool_size: int, reuse_port: bool) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        self._workers = _Workers(self._loop, thread_pool_size)
        # grpc's own pool runs only a sync *streaming* handler, which hsmstore has none of
        # (its threads start on first use).
        self._streaming_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpc-stream")
        self._methods = _Methods(self)
        self._server: grpc.aio.Server = self.run_on_loop(self._create(server_options(reuse_port)))
        self._in_flight = 0  # offloaded calls between their start and their answer (on the loop)
        self._stopping = False
        self._cancelled_by_stop = 0

    async def _create(self, options: list[tuple[str, int]]) -> grpc.aio.Server:
        return grpc.aio.server(
            migration_thread_pool=self._streaming_pool, handlers=(self._methods,), options=options
        )

    @property
    def aio_server(self) -> grpc.aio.Server:
        """The ``grpc.aio.Server`` (reflection tells sync and aio servers apart by this)."""
        return self._server

    def run_on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the server's event loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._methods.generic.extend(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Served through the server's one generic handler (``_Methods``), not registered with grpc.

        grpc.aio keeps one pending request per registered method and waits on all of
        them (``asyncio.wait``) for every call, a cost that grows with the number of
        methods (docs/performance.md, "The aio server under half-open streams").
        """
        for name, handler in method_handlers.items():
            self._methods.known[f"/{service_name}/{name}"] = self.offloaded(handler)

    def add_insecure_port(self, address: str) -> int:
        return int(self._server.add_insecure_port(address))

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return int(self._server.add_secure_port(address, credentials))

    def start(self) -> None:
        self.run_on_loop(self._server.start())

    @property
    def in_flight(self) -> int:
        """Calls that have started and not been answered yet (health and reflection not counted)."""
        return self._in_flight

    def stop(self, grace: float | None) -> threading.Event:
        """``grpc.Server.stop``: :meth:`shut_down`, with an event already set when it returns."""
        self.shut_down(0.0 if grace is None else grace)
        stopped = threading.Event()
        stopped.set()
        return stopped

    def shut_down(self, grace: float) -> Drained:
        """Stop serving, drain, then end the workers, the loop and the pool; never waits unbounded.

        grpc stops listening and refuses new calls at once (its GOAWAY makes
        clients open a new connection, which is refused: UNAVAILABLE); calls in
        flight get ``grace`` seconds, then grpc cancels them. A cancelled call's
        handler may still be inside a token or DB call on its worker thread; it
        is waited for ``ABANDON_AFTER_SECONDS`` more and then left behind (the
        threads are daemons), so a hung HSM cannot keep a stopping server alive.
        """
        began = time.monotonic()
        in_flight = self._in_flight
        log.info(
            "stopping: health NOT_SERVING, new calls refused; %d call(s) in flight get up to %g s",
            in_flight,
            grace,
        )
        self._stopping = True
        self.run_on_loop(self._drain(grace))
        abandoned = self._workers.stop(ABANDON_AFTER_SECONDS)  # while the loop runs: late answers settle
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._streaming_pool.shutdown(wait=abandoned == 0)
        drained = Drained(in_flight, self._cancelled_by_stop, abandoned, time.monotonic() - began)
        if drained.cancelled:
            log.warning(
                "grace period of %g s over: %d call(s) cancelled, %d answered",
                grace,
                drained.cancelled,
                max(0, in_flight - drained.cancelled),
            )
        else:
            log.info("drained: every call in flight answered (%.1f s)", drained.seconds)
        if abandoned:
            log.warning(
                "%d handler(s) still inside a token or DB call %g s after the grace period: "
                "not waiting for them",
                abandoned,
                ABANDON_AFTER_SECONDS,
            )
        return drained

    async def _drain(self, grace: float) -> None:
        """grpc's stop with ``grace``, except that streams left alone do not hold it.

        A health Watch (gRPC client-side health checking, gRFC A17) or a
        reflection session never ends by itself: once every call of ours is
        answered, they are cancelled at once rather than after the whole grace
        period. Calls grpc accepted just before the stop reach their handler
        (and ``in_flight``) within ``_STREAMS_CUT_AFTER_SECONDS``.
        """
        stopping = asyncio.ensure_future(self._server.stop(grace))
        await asyncio.sleep(_STREAMS_CUT_AFTER_SECONDS)
        while self._in_flight and not stopping.done():
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        if not stopping.done():
            await self._server.stop(None)  # only streams are left: cancel them now
        await stopping
        settle_until = self._loop.time() + _SETTLE_SECONDS
        while self._in_flight and self._loop.time() < settle_until:
            await asyncio.sleep(0.01)  # cancelled calls unwind (and are counted) on this loop

    def offloaded(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A sync unary-unary handler as an async one that reads its request with a deadline
        on the loop and then runs the sync handler on a worker; any other handler as it is.

        The handler is stream-unary so that it holds the call's context before the
        request arrives: a unary-unary handler is only called once grpc has read the
        request, and a call that never sends one could not be answered.
        """
        behavior = handler.unary_unary
        if handler.request_streaming or handler.response_streaming or _is_async(behavior):
            return handler
        deserializer = handler.request_deserializer
        message_type = getattr(deserializer, "__self__", None)  # ``Message.FromString`` is bound to its class
        if not (isinstance(message_type, type) and issubclass(message_type, Message)):
            message_type = None
        read = _tolerant(deserializer, message_type)
        loop, run = self._loop, self._workers.run
        late = convert.UnreadableRequest(
            message_type, f"no request message arrived within {RECEIVE_TIMEOUT_SECONDS:g} s"
        )

        async def answer(requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> object:
            self._in_flight += 1  # on the loop: no lock; read by shut_down and the metrics
            try:
                deadline = _ReceiveDeadline(asyncio.current_task())
                timer = loop.call_later(RECEIVE_TIMEOUT_SECONDS, deadline.expire)
                try:
                    request = await context.read()
                except asyncio.CancelledError:
                    if not deadline.expired:
                        raise  # the client cancelled, or the server is stopping
                    deadline.withdraw()
                    request = late
                finally:
                    timer.cancel()
                if request is grpc.aio.EOF:
                    # No message: grpc refused an oversized one (and answered RESOURCE_EXHAUSTED
                    # itself), or the client ended the call without one. Answer the latter so its
                    # stream ends; there is no request to audit.
                    await context.abort_with_status(_NO_REQUEST_STATUS)
                try:
                    return await run(behavior, request, _ThreadContext(context))
                except _Aborted as aborted:
                    await context.abort_with_status(aborted.status)  # raises grpc's own AbortError
                    raise  # not reached
            except asyncio.CancelledError:
                if self._stopping:
                    self._cancelled_by_stop += 1  # the grace period ended before its answer
                raise
            finally:
                self._in_flight -= 1

        return grpc.stream_unary_rpc_method_handler(
            answer, request_deserializer=read, response_serializer=handler.response_serializer
        )


class _ReceiveDeadline:
    """One call's receive deadline: a loop timer (``loop.call_later``) that cancels the waiting read.

    Cheaper than ``asyncio.timeout`` (docs/performance.md, "The aio server under
    half-open streams"); the cancellation is told apart from the client's own by ``expired``.
    """

    __slots__ = ("_task", "expired")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self._task = task
        self.expired = False

    def expire(self) -> None:
        if self._task is not None:
            self.expired = True
            self._task.cancel()

    def withdraw(self) -> None:
        """The deadline's cancellation was handled: the call goes on (``Task.uncancel``)."""
        if self._task is not None:
            self._task.uncancel()


class _Workers:
    """The threads that run sync handlers, fed from the loop through one ``SimpleQueue``.

    Cheaper per call than ``loop.run_in_executor`` on a ``ThreadPoolExecutor``
    (docs/performance.md): no ``concurrent.futures.Future`` and its lock per
    call, and answers that finish while the loop is busy are settled by one
    wake-up of the loop instead of one each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: deque[tuple[asyncio.Future[Any], object, BaseException | None]] = deque()
        self._wake_pending = False
        self._threads = [
            threading.Thread(target=self._work, name=f"grpc-{index}", daemon=True) for index in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """``function(*args)`` on a worker thread; call on the loop, await the result there."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((future, function, args))
        return future

    def stop(self, timeout: float | None = None) -> int:
        """End every worker once the jobs queued before have run; wait ``timeout`` seconds at most
        (None: as long as they take).

        Returns how many workers were still busy then (left running: they are daemons).
        """
        for _ in self._threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in self._threads)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, args = job
            if future.done():
                continue  # cancelled before its turn (the caller left, or the grace period ended)
            try:
                self._done.append((future, function(*args), None))
            except BaseException as error:  # handed to the awaiting call, as run_in_executor does
                self._done.append((future, None, error))
            if not self._wake_pending:
                self._wake_pending = True
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
                    self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        """On the loop: hand every finished job's outcome to its call.

        The flag is cleared first, so a job finished from here on wakes the loop again.
        """
        self._wake_pending = False
        done = self._done
        while done:
            future, result, error = done.popleft()
            if future.done():  # cancelled meanwhile (the client left, or the server stops)
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[object, ...]]


_NO_REQUEST_STATUS = to_grpc_status(ValidationException("The call ended without a request message"))


class _Methods(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every method of a ``GrpcServer``, offloaded, found by one dict lookup.

    A generic handler's answer is converted once and kept; a method nobody
    serves is not kept (a caller could send any number of made-up names).
    """

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self.known: dict[str, grpc.RpcMethodHandler] = {}
        self.generic: list[grpc.GenericRpcHandler] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        found = self.known.get(method)
        if found is None:
            for handler in self.generic:
                if (served := handler.service(handler_call_details)) is not None:
                    found = self.known[method] = self._server.offloaded(served)
                    break
        return found


def _is_async(behavior: object) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def _tolerant(
    deserializer: Callable[[bytes], object] | None, message_type: type[Message] | None
) -> Callable[[bytes], object] | None:
    """``deserializer``, but a body that does not parse becomes an ``UnreadableRequest``.

    grpcio would answer INTERNAL (sync server) or UNKNOWN (aio) with no ErrorInfo,
    log a traceback per request, and leave no audit record (issue 14, item 7).
    """
    if deserializer is None:
        return None
    parse = deserializer

    def tolerant(data: bytes) -> object:
        try:
            return parse(data)
        except Exception:  # DecodeError, or whatever a custom deserializer raises
            return convert.UnreadableRequest(message_type, "the request body is not a valid protobuf message")

    return tolerant


class _Aborted(Exception):
    """``abort_with_status`` on a worker: the loop sends the status (grpcio's sync abort raises too)."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__("the call was aborted")
        self.status = status


class _ThreadContext:
    """The sync ``grpc.ServicerContext`` calls a handler makes from a worker thread.

    Reads (peer, auth context, metadata) go straight to the aio context; an
    abort raises ``_Aborted`` and the loop sends its status, so a worker
    never waits on the loop.
    """

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    def peer(self) -> str:
        return cast(str, self._context.peer())

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return cast(Mapping[str, Iterable[bytes]], self._context.auth_context())

    def peer_identities(self) -> Iterable[bytes] | None:
        return cast(Iterable[bytes] | None, self._context.peer_identities())

    def peer_identity_key(self) -> str | None:
        return cast(str | None, self._context.peer_identity_key())

    def invocation_metadata(self) -> object:
        return self._context.invocation_metadata()

    def time_remaining(self) -> float | None:
        return cast(float | None, self._context.time_remaining())

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._context.set_trailing_metadata(metadata)

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise _Aborted(status)

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(_PlainStatus(code, details, ()))

    def __getattr__(self, name: str) -> Any:
        """Any other call (``set_code``, ``invocation_metadata``...) goes to the aio context as it is."""
        return getattr(self._context, name)


@dataclass(frozen=True)
class _PlainStatus(grpc.Status):  # type: ignore[misc]
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def make_grpc_server(thread_pool_size: int, reuse_port: bool) -> GrpcServer:
    """The grpcio server set-up; ``bench/echo_server.py`` builds its floor with this very function.

    An aio server whose loop receives requests, with the sync handlers on
    ``thread_pool_size`` worker threads (``GrpcServer``), and the transport
    bounds above. On this 2-core machine 2 threads cost less CPU per call and
    served more than 4 or 8 (docs/performance.md).
    """
    return GrpcServer(thread_pool_size, reuse_port)


def start_server(
    service: UseCases,
    listen: str,
    thread_pool_size: int,
    tls: TlsFiles | None = None,
    caller_of: CallerResolver | None = None,
    reuse_port: bool = False,
    audit: AuditWiring | None = None,
    observers: Sequence[CallObserver] = (),
) -> RunningServer:
    """Start serving on ``listen`` (port 0 picks a free port) and return the bound port.

    ``observers`` see every call (metrics, the access log: core/calls.py ``CallObserver``).

    Callers are the client certificates' SPIFFE IDs with TLS, the local admin without, unless ``caller_of``.
    With TLS every client chain is also path-validated against ``tls.client_ca``
    (``pathLenConstraint``, which the TLS handshake leaves out: server/identity.py).
    """
    reloading: ReloadingTls | None = None
    if tls is not None and tls.paths is not None:
        initial = material_from_bytes(tls.cert_chain, tls.private_key, tls.client_ca or b"")
        reloading = ReloadingTls(tls.paths, tls.trust_domain, initial, tls.reload_check_seconds)
    if caller_of is None:
        caller_of = (
            reloading.caller_of
            if reloading is not None
            else caller_resolver(
                tls is not None, tls.trust_domain if tls else None, tls.client_ca if tls else None
            )
        )
    server = make_grpc_server(thread_pool_size, reuse_port)
    runner = CallRunner(
        caller_of,
        audit.sink if audit else None,
        audit.fail_open if audit else False,
        observers,
        admission=service.quotas.admit if service.quotas.enforced else None,  # core/quotas.py
    )
    pb_grpc.add_KeyStoreServicer_to_server(KeyStoreServicer(service, runner), server)
    pb_grpc.add_AdminServicer_to_server(AdminServicer(service.identity_policies, runner), server)
    services = [KEY_STORE_SERVICE, ADMIN_SERVICE]
    if audit is not None:
        pb_grpc.add_AuditServicer_to_server(AuditServicer(audit.queries, runner), server)
        services.append(AUDIT_SERVICE)
    # grpc_health's aio servicer: a Watch waits on the loop, not in a pool thread.
    health_servicer = aio_health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server.aio_server,
    )
    if tls is None:
        port = server.add_insecure_port(listen)
    elif reloading is not None:
        if not tls.client_ca:
            server_credentials(tls.cert_chain, tls.private_key, tls.client_ca)  # raises: TLS is mutual
        port = server.add_secure_port(listen, reloading.credentials())
    else:
        port = server.add_secure_port(
            listen, server_credentials(tls.cert_chain, tls.private_key, tls.client_ca)
        )
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    server.start()
    if reloading is not None:
        reloading.start()
    stop = threading.Event()
    _check_health(service, server, health_servicer)
    threading.Thread(
        target=_keep_checking_health,
        args=(service, server, health_servicer, stop),
        name="health",
        daemon=True,
    ).start()
    return RunningServer(server, port, health_servicer, stop, reloading)


def _check_health(service: UseCases, server: GrpcServer, health_servicer: aio_health.HealthServicer) -> None:
    """Probe the token and the DB in this thread; only the status change runs on the loop."""
    try:
        service.health.check_health()
        status = health_pb2.HealthCheckResponse.SERVING
    except Exception:
        log.exception("health check failed")
        status = health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", KEY_STORE_SERVICE):
        server.run_on_loop(health_servicer.set(name, status))


def _keep_checking_health(
    service: UseCases, server: GrpcServer, health_servicer: aio_health.HealthServicer, stop: threading.Event
) -> None:
    while not stop.wait(HEALTH_CHECK_INTERVAL_SECONDS):
        _check_health(service, server, health_servicer)
