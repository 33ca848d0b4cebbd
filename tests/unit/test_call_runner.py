"""The call envelope: one record per call, and no answer without its record (fail closed).

``CallEnvelope`` (core/calls.py) on its own, with no transport; ``CallRunner``, its
gRPC end (server/servicer.py), with the contract's status. And how a call reaches it
(server/app.py ``GrpcServer``): the sync handler runs on a worker thread, never on the
event loop that receives every call (issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.audit import capture
from hsmstore.core.calls import UNIDENTIFIED, CallEnvelope, CallOrigin
from hsmstore.core.model import Caller
from hsmstore.errors import (
    DependencyUnavailableException,
    KMSError,
    KMSInternalException,
    NotFoundException,
    UnauthenticatedException,
    ValidationException,
)
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
        def commit(record: Mapping[str, Any] | None) -> bool:
            assert record is not None
            return True

        capture.change(commit)
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


# The envelope with no transport: what an HTTP transport would reuse as is.

ADDRESS = "203.0.113.7"


def origin(
    caller: Caller = CALLER, parameters: dict[str, Any] | None = None, reads: list[str] | None = None
) -> CallOrigin:
    """A transport's view of a call; ``reads`` lists what the envelope asked for, in order."""
    asked = reads if reads is not None else []

    def caller_of() -> Caller:
        asked.append("caller")
        return caller

    def parameters_of() -> dict[str, Any]:
        asked.append("parameters")
        return {"keyId": "k"} if parameters is None else dict(parameters)

    def address_of() -> str:
        asked.append("address")
        return ADDRESS

    return CallOrigin(caller_of, parameters_of, address_of)


def envelope(sink: ListSink | None, fail_open: bool = False) -> CallEnvelope:
    return CallEnvelope(sink, fail_open)  # type: ignore[arg-type]


def test_the_envelope_hands_back_the_answer_after_writing_its_record() -> None:
    sink = ListSink()

    def body() -> str:
        assert sink.records == []
        return "answer"

    assert envelope(sink).run("Encrypt", origin(), body) == "answer"
    [record] = sink.records
    assert record["eventName"] == "Encrypt"
    assert record["userIdentity"]["arn"] == CALLER.principal
    assert record["requestParameters"] == {"keyId": "k"}
    assert record["sourceIPAddress"] == ADDRESS
    assert "errorCode" not in record


def test_the_envelope_hands_back_a_kms_error_instead_of_raising_it() -> None:
    sink = ListSink()

    def missing() -> str:
        raise NotFoundException("Key 'k' does not exist")

    outcome = envelope(sink).run("DescribeKey", origin(), missing)
    assert isinstance(outcome, NotFoundException)
    [record] = sink.records
    assert record["errorCode"] == "NotFoundException"
    assert record["errorMessage"] == "Key 'k' does not exist"


def test_an_unexpected_error_is_internal_and_logged_without_request_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ListSink()

    def broken() -> str:
        raise RuntimeError("secret request data")

    with caplog.at_level(logging.ERROR, logger="hsmstore.core.calls"):
        outcome = envelope(sink).run("Decrypt", origin(), broken)
    assert type(outcome) is KMSInternalException
    assert sink.records[0]["errorCode"] == "KMSInternalException"
    assert [r.getMessage() for r in caplog.records] == ["internal error"]


def test_the_envelope_logs_through_the_transport_s_logger(caplog: pytest.LogCaptureFixture) -> None:
    transport_log = logging.getLogger("tests.a_transport")

    def broken() -> str:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        CallEnvelope(ListSink(), False, transport_log).run("Decrypt", origin(), broken)  # type: ignore[arg-type]
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("tests.a_transport", "internal error")]


def test_a_record_the_spool_cannot_take_refuses_the_call_as_unavailable() -> None:
    outcome = envelope(ListSink(broken=True)).run("Decrypt", origin(), lambda: "plaintext")
    assert isinstance(outcome, DependencyUnavailableException)
    assert outcome.reason == "KMSInternalException"


def test_a_sink_failing_otherwise_refuses_the_call_as_internal() -> None:
    class FailingSink:
        def record(self, record: Mapping[str, Any]) -> None:
            raise ValueError("a record that cannot be bounded")

    outcome = CallEnvelope(FailingSink(), False).run("Decrypt", origin(), lambda: "plaintext")
    assert type(outcome) is KMSInternalException


def test_fail_open_hands_back_the_answer_even_when_the_record_is_lost() -> None:
    assert (
        envelope(ListSink(broken=True), fail_open=True).run("Decrypt", origin(), lambda: "plain") == "plain"
    )


def test_the_caller_is_current_only_while_the_body_runs() -> None:
    assert envelope(ListSink()).run("DescribeKey", origin(), current_caller) is CALLER
    with pytest.raises(LookupError):
        current_caller()


def test_what_the_use_case_notes_lands_in_the_call_s_record() -> None:
    sink = ListSink()
    arn = "arn:aws:kms:local:acme:key/k"

    def uses_a_key() -> str:
        capture.note_key(arn, 2)
        return "done"

    envelope(sink).run("Encrypt", origin(), uses_a_key)
    [record] = sink.records
    assert [resource["ARN"] for resource in record["resources"]] == [arn]
    assert record["additionalEventData"]["keyVersions"] == {arn: 2}


def test_an_unidentified_caller_is_refused_with_its_reason_and_recorded_as_nobody() -> None:
    sink, ran = ListSink(), []

    def no_identity() -> Caller:
        raise UnauthenticatedException("no client certificate")

    outcome = envelope(sink).run(
        "Encrypt", CallOrigin(no_identity, lambda: {"keyId": "k"}, lambda: ADDRESS), lambda: ran.append(1)
    )
    assert isinstance(outcome, UnauthenticatedException)
    assert ran == []
    [record] = sink.records
    assert record["userIdentity"] == {"type": "HSMStorePrincipal", "arn": "", "accountId": ""}
    assert record["recipientAccountId"] == UNIDENTIFIED.tenant == ""
    assert record["errorCode"] == "UnauthenticatedException"
    assert record["sourceIPAddress"] == ADDRESS


def test_an_unidentified_caller_whose_record_is_lost_gets_the_audit_refusal() -> None:
    def no_identity() -> Caller:
        raise UnauthenticatedException("no client certificate")

    refused = CallOrigin(no_identity, dict, lambda: ADDRESS)
    assert isinstance(
        envelope(ListSink(broken=True)).run("Encrypt", refused, str), DependencyUnavailableException
    )
    lost = envelope(ListSink(broken=True), fail_open=True).run("Encrypt", refused, str)
    assert isinstance(lost, UnauthenticatedException)


def test_without_a_sink_nothing_is_recorded_and_nothing_read_for_a_record() -> None:
    reads: list[str] = []
    assert envelope(None).run("Encrypt", origin(reads=reads), lambda: "answer") == "answer"
    assert reads == ["caller"]


def test_the_transport_is_asked_caller_then_parameters_then_address() -> None:
    reads: list[str] = []
    envelope(ListSink()).run("Encrypt", origin(reads=reads), lambda: "answer")
    assert reads == ["caller", "parameters", "address"]


def test_an_unreadable_request_is_refused_as_validation_recorded_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ListSink()
    with caplog.at_level(logging.WARNING, logger="hsmstore.core.calls"):
        outcome = envelope(sink).refuse_unreadable("Decrypt", origin(parameters={}), "not a valid body")
    assert isinstance(outcome, ValidationException)
    assert outcome.message == "The request could not be read: not a valid body"
    [record] = sink.records
    assert record["errorCode"] == "ValidationException"
    assert record["userIdentity"]["arn"] == CALLER.principal
    assert record["requestParameters"] == {}
    assert [r.getMessage() for r in caplog.records] == [
        f"refused a call to Decrypt from {ADDRESS}: not a valid body"
    ]
    assert all(r.exc_info is None for r in caplog.records)


def test_every_outcome_is_an_answer_or_a_kms_error() -> None:
    """The envelope never raises a KMSError: a transport maps what it hands back, nothing else."""

    def raises(error: Exception) -> Callable[[], str]:
        def body() -> str:
            raise error

        return body

    for body in (raises(NotFoundException("x")), raises(KeyError("x")), lambda: "answer"):
        outcome = envelope(ListSink()).run("DescribeKey", origin(), body)
        assert outcome == "answer" or isinstance(outcome, KMSError)


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
