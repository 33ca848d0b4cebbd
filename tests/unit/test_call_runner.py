"""CallRunner: one record per call, and no answer without its record (fail closed).

And how a call reaches it (server/app.py ``GrpcServer``): the sync handler runs on a
worker thread, never on the event loop that receives every call (issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core import audit
from hsmstore.core.model import Caller
from hsmstore.errors import NotFoundException, UnauthenticatedException
from hsmstore.server import convert
from hsmstore.server.app import GrpcServer, _Methods, _Workers
from hsmstore.server.errors import CUT_MARKER, MAX_STATUS_MESSAGE_BYTES
from hsmstore.server.servicer import CallRunner, current_caller

CALLER = Caller("acme", "arn:hsmstore:iam::acme:role/admin")


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted


class ListSink:
    def __init__(self, broken: bool = False) -> None:
        self.records: list[Mapping[str, Any]] = []
        self.broken = broken

    def record(self, record: Mapping[str, Any]) -> None:
        if self.broken:
            raise OSError("disk full")
        self.records.append(record)


def runner(sink: ListSink, fail_open: bool = False) -> CallRunner:
    return CallRunner(lambda _context: CALLER, sink, fail_open)


def test_a_successful_call_leaves_one_record_without_bytes_fields() -> None:
    sink = ListSink()
    request = pb.EncryptRequest(key_id="k", plaintext=b"secret", encryption_context={"a": "1"})
    assert runner(sink).run("Encrypt", lambda: "answer", request, FakeContext()) == "answer"  # type: ignore[arg-type]
    [record] = sink.records
    assert record["eventName"] == "Encrypt"
    assert record["requestParameters"] == {"keyId": "k", "encryptionContext": {"a": "1"}}
    assert record["sourceIPAddress"] == "ipv4:127.0.0.1:5555"
    assert "errorCode" not in record


def test_a_failed_call_is_recorded_with_its_error_and_then_answered_with_it() -> None:
    sink, context = ListSink(), FakeContext()

    def missing() -> str:
        raise NotFoundException("Key 'k' does not exist")

    with pytest.raises(Aborted):
        runner(sink).run("DescribeKey", missing, pb.DescribeKeyRequest(key_id="k"), context)  # type: ignore[arg-type]
    assert sink.records[0]["errorCode"] == "NotFoundException"
    assert context.status is not None and context.status.code == grpc.StatusCode.NOT_FOUND


def test_a_call_whose_record_cannot_be_written_is_refused_as_unavailable() -> None:
    """A spool that cannot take the record (OSError: a full disk) is an outage: retryable."""
    context = FakeContext()
    with pytest.raises(Aborted):
        runner(ListSink(broken=True)).run(
            "Decrypt",
            lambda: "plaintext",
            pb.DecryptRequest(),
            context,  # type: ignore[arg-type]
        )
    assert context.status is not None and context.status.code == grpc.StatusCode.UNAVAILABLE
    assert "KMSInternalException" in context.status.details


def test_fail_open_answers_even_when_the_record_is_lost() -> None:
    answer = runner(ListSink(broken=True), fail_open=True).run(
        "Decrypt",
        lambda: "plaintext",
        pb.DecryptRequest(),
        FakeContext(),  # type: ignore[arg-type]
    )
    assert answer == "plaintext"


def test_a_change_recorded_with_its_transaction_is_not_spooled_again() -> None:
    sink = ListSink()

    def management_change() -> str:
        assert audit.record_for_change() is not None
        audit.change_recorded()
        return "done"

    runner(sink).run("DisableKey", management_change, pb.DisableKeyRequest(key_id="k"), FakeContext())  # type: ignore[arg-type]
    assert sink.records == []


def test_the_caller_is_resolved_once_and_seen_by_the_method() -> None:
    resolutions: list[object] = []

    def caller_of(context: object) -> Caller:
        resolutions.append(context)
        return CALLER

    seen = CallRunner(caller_of, ListSink(), False).run(
        "DescribeKey",
        current_caller,
        pb.DescribeKeyRequest(key_id="k"),
        FakeContext(),  # type: ignore[arg-type]
    )
    assert seen is CALLER
    assert len(resolutions) == 1


def test_an_identity_error_is_answered_with_its_own_reason() -> None:
    def no_identity(_context: object) -> Caller:
        raise UnauthenticatedException("no client certificate")

    context = FakeContext()
    with pytest.raises(Aborted):
        CallRunner(no_identity, ListSink(), False).run(
            "Encrypt",
            lambda: "never",
            pb.EncryptRequest(),
            context,  # type: ignore[arg-type]
        )
    assert context.status is not None and context.status.code == grpc.StatusCode.UNAUTHENTICATED


def test_an_unreadable_request_is_refused_as_validation_and_recorded() -> None:
    sink, context = ListSink(), FakeContext()
    unreadable = convert.UnreadableRequest(
        pb.DecryptRequest, "the request body is not a valid protobuf message"
    )
    with pytest.raises(Aborted):
        runner(sink).refuse_unreadable("Decrypt", unreadable, context)  # type: ignore[arg-type]
    assert context.status is not None and context.status.code == grpc.StatusCode.INVALID_ARGUMENT
    [record] = sink.records
    assert record["eventName"] == "Decrypt"
    assert record["errorCode"] == "ValidationException"
    assert record["requestParameters"] == {}


def test_a_long_error_message_is_cut_to_a_short_bound_with_a_marker() -> None:
    context = FakeContext()

    def echoes_its_input() -> str:
        raise NotFoundException(f"Key '{'k' * 100_000}' does not exist")

    with pytest.raises(Aborted):
        runner(ListSink()).run("DescribeKey", echoes_its_input, pb.DescribeKeyRequest(), context)  # type: ignore[arg-type]
    assert context.status is not None
    assert len(context.status.details.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert context.status.details.endswith(CUT_MARKER)
    trailers = sum(len(value) for _key, value in context.status.trailing_metadata)
    assert trailers < 2 * MAX_STATUS_MESSAGE_BYTES


def test_a_call_with_an_out_of_range_timestamp_is_still_recorded() -> None:
    sink = ListSink()
    request = pb.LookupEventsRequest(start_time=Timestamp(seconds=2**62))
    with pytest.raises(Aborted):
        runner(sink).run(
            "LookupEvents",
            lambda: convert.datetime_of(request.start_time, "StartTime"),
            request,
            FakeContext(),  # type: ignore[arg-type]
        )
    [record] = sink.records
    assert record["errorCode"] == "ValidationException"
    assert record["requestParameters"] == {"startTime": {"seconds": 2**62}}


ECHO, SLOW = "/test.Echo/Echo", "/test.Echo/Slow"


@contextlib.contextmanager
def echo_server(slow_started: threading.Event, release: threading.Event) -> Iterator[grpc.Channel]:
    """A ``GrpcServer`` (2 workers) whose ``Slow`` method blocks its thread until ``release``."""

    def echo(request: bytes, _context: object) -> bytes:
        return request

    def slow(request: bytes, _context: object) -> bytes:
        slow_started.set()
        release.wait(30)
        return request

    server = GrpcServer(thread_pool_size=2, reuse_port=False)
    methods = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        release.set()
        server.stop(None).wait()


def test_a_handler_blocked_in_a_slow_call_leaves_other_calls_answering() -> None:
    """A token or DB call can block for seconds in an outage: it holds a worker, never the loop."""
    started, release = threading.Event(), threading.Event()
    with echo_server(started, release) as channel:
        held = channel.unary_unary(SLOW).future(b"slow", timeout=30)
        assert started.wait(10)
        assert channel.unary_unary(ECHO)(b"fast", timeout=10) == b"fast"
        release.set()
        assert held.result() == b"slow"


def test_many_concurrent_calls_each_get_their_own_answer() -> None:
    """Answers that finish together are handed back to the loop in one batch: none lost or swapped.

    90 calls: one connection takes at most 100 at once (server/app.py).
    """
    with echo_server(threading.Event(), threading.Event()) as channel:
        calls = [channel.unary_unary(ECHO).future(b"%d" % n, timeout=30) for n in range(90)]
        assert [call.result() for call in calls] == [b"%d" % n for n in range(90)]


def test_the_late_answer_of_a_cancelled_call_is_dropped_and_the_next_call_answered() -> None:
    loop = asyncio.new_event_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    release = threading.Event()

    async def cancel_one_then_call_again() -> str:
        workers = _Workers(asyncio.get_running_loop(), 1)
        left = workers.run(release.wait, 30)
        left.cancel()  # the client went away while its handler ran
        release.set()
        try:
            return await asyncio.wait_for(workers.run(str, "next"), 10)
        finally:
            workers.stop()

    try:
        assert loop.run_until_complete(cancel_one_then_call_again()) == "next"
    finally:
        loop.close()
    assert loop_errors == []


@dataclass(frozen=True)
class CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def test_made_up_method_names_are_not_remembered() -> None:
    """A caller may send any number of names: only methods someone serves are kept (bounded memory)."""
    server = GrpcServer(thread_pool_size=1, reuse_port=False)
    try:
        methods = _Methods(server)
        echo = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
        methods.generic.append(grpc.method_handlers_generic_handler("test.Echo", {"Echo": echo}))
        assert all(methods.service(CallDetails(f"/made.Up/M{n}")) is None for n in range(1000))
        assert methods.service(CallDetails(ECHO)) is not None
        assert list(methods.known) == [ECHO]
    finally:
        server.stop(None).wait()
