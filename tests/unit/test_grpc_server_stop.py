"""``GrpcServer.shut_down``: drain calls in flight up to the grace period, never wait unbounded.

Issue 16, Deliver 7: "SIGTERM stops accepting, drains in-flight calls up to a
deadline". An in-process server with one slow sync method (bytes in, bytes
out) stands for the servicers; tests/integration/test_graceful_shutdown.py
does the same through ``hsmstore serve``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from hsmstore.server.app import GrpcServer, _Workers, make_grpc_server

METHOD = "/test.Slow/Call"
WATCH = "/test.Slow/Watch"


class SlowServer:
    """A server whose one method waits for ``release`` before it answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.server: GrpcServer = make_grpc_server(2, reuse_port=False)

        def call(request: bytes, _context: object) -> bytes:
            self.started.set()
            self.release.wait(30)
            return request

        async def watch(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
            await context.write(request)
            await asyncio.Event().wait()  # like a health Watch: never ends by itself

        handler = grpc.method_handlers_generic_handler(
            "test.Slow",
            {
                "Call": grpc.unary_unary_rpc_method_handler(call),
                "Watch": grpc.unary_stream_rpc_method_handler(watch),
            },
        )
        self.server.add_generic_rpc_handlers([handler])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def call(self) -> grpc.Future:
        future: grpc.Future = self.channel.unary_unary(METHOD).future(b"ping", timeout=30)
        assert self.started.wait(10), "the call did not reach its handler"
        return future


@pytest.fixture
def slow() -> Iterator[SlowServer]:
    server = SlowServer()
    yield server
    server.release.set()
    server.channel.close()


def test_a_call_in_flight_is_answered_when_it_finishes_within_the_grace_period(slow: SlowServer) -> None:
    future = slow.call()
    threading.Timer(0.3, slow.release.set).start()
    drained = slow.server.shut_down(grace=10)
    assert future.result(timeout=5) == b"ping"
    assert (drained.in_flight, drained.cancelled, drained.abandoned) == (1, 0, 0)


def test_a_call_still_running_at_the_end_of_the_grace_period_is_cancelled(slow: SlowServer) -> None:
    future = slow.call()
    threading.Timer(1.0, slow.release.set).start()  # the handler returns, but after the grace period
    drained = slow.server.shut_down(grace=0.2)
    with pytest.raises(grpc.RpcError):
        future.result(timeout=5)
    assert (drained.in_flight, drained.cancelled, drained.abandoned) == (1, 1, 0)


def test_an_endless_stream_does_not_hold_the_stop_once_every_call_is_answered(slow: SlowServer) -> None:
    stream = slow.channel.unary_stream(WATCH)(b"watching", timeout=60)
    assert next(stream) == b"watching"
    future = slow.call()
    threading.Timer(0.3, slow.release.set).start()
    began = time.monotonic()
    drained = slow.server.shut_down(grace=20)
    assert time.monotonic() - began < 5, "the stream held the stop for the grace period"
    assert future.result(timeout=5) == b"ping"
    assert (drained.in_flight, drained.cancelled) == (1, 0)
    with pytest.raises(grpc.RpcError):
        next(stream)


def test_a_new_call_after_the_stop_is_refused_unavailable(slow: SlowServer) -> None:
    slow.server.shut_down(grace=1)
    with pytest.raises(grpc.RpcError) as refused:
        slow.channel.unary_unary(METHOD)(b"late", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_worker_stuck_in_its_handler_is_left_behind_and_counted() -> None:
    async def stop_with_a_stuck_worker() -> int:
        workers = _Workers(asyncio.get_running_loop(), 2)
        stuck = threading.Event()
        workers.run(stuck.wait, 30)
        try:
            return workers.stop(timeout=0.2)
        finally:
            stuck.set()

    assert asyncio.run(stop_with_a_stuck_worker()) == 1


def test_a_job_cancelled_before_its_turn_is_not_run() -> None:
    ran: list[str] = []

    async def cancel_a_queued_job() -> None:
        workers = _Workers(asyncio.get_running_loop(), 1)
        busy = threading.Event()
        first = workers.run(busy.wait, 30)
        queued = workers.run(ran.append, "queued")
        queued.cancel()  # its caller left while it waited for the one worker
        busy.set()
        await first
        workers.stop()

    asyncio.run(cancel_a_queued_job())
    assert ran == []
