"""Call observers (issue 16, "Observability"): the envelope tells each one of every call, once.

``CallEnvelope`` (core/calls.py) with a recording observer, no transport: what a
metrics or access-log observer is handed for a success, a KMSError, a caller
that cannot be identified, an audit refusal and an unreadable request, and
that an observer's own failure changes no answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from hsmstore.core.audit import capture
from hsmstore.core.calls import UNIDENTIFIED, CallEnvelope, CallOrigin, FinishedCall
from hsmstore.core.model import Caller
from hsmstore.errors import (
    DependencyUnavailableException,
    KMSError,
    NotFoundException,
    UnauthenticatedException,
    ValidationException,
)

CALLER = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
KEY_ARN = "arn:hsmstore:kms:local:acme:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class ListSink:
    def __init__(self, broken: bool = False) -> None:
        self.records: list[Mapping[str, Any]] = []
        self.broken = broken

    def record(self, record: Mapping[str, Any]) -> None:
        if self.broken:
            raise OSError("disk full")
        self.records.append(record)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def call_started(self, name: str) -> None:
        self.events.append(("started", name))

    def call_finished(self, call: FinishedCall) -> None:
        self.events.append(("finished", call))

    @property
    def finished(self) -> list[FinishedCall]:
        return [call for kind, call in self.events if kind == "finished" and isinstance(call, FinishedCall)]


def origin(caller: Caller | Exception = CALLER) -> CallOrigin:
    def resolve() -> Caller:
        if isinstance(caller, Exception):
            raise caller
        return caller

    return CallOrigin(resolve, lambda: {"keyId": "k"}, lambda: "ipv4:127.0.0.1:5555")


def test_a_success_is_seen_started_then_finished_with_its_keys_and_the_record_request_id() -> None:
    sink, recorder = ListSink(), Recorder()
    envelope = CallEnvelope(sink, False, observers=[recorder])

    def body() -> str:
        capture.note_key(KEY_ARN, 1)
        return "answer"

    assert envelope.run("Encrypt", origin(), body) == "answer"
    assert [kind for kind, _ in recorder.events] == ["started", "finished"]
    assert recorder.events[0] == ("started", "Encrypt")
    [call] = recorder.finished
    [record] = sink.records
    assert call.name == "Encrypt"
    assert call.caller == CALLER
    assert call.reason is None
    assert call.key_arns == (KEY_ARN,)
    assert call.request_id == record["requestID"]
    assert call.source_address == "ipv4:127.0.0.1:5555"
    assert call.duration_s > 0


def test_a_kms_error_is_seen_with_its_reason() -> None:
    recorder = Recorder()
    envelope = CallEnvelope(ListSink(), False, observers=[recorder])

    def body() -> NoReturn:
        raise NotFoundException("no such key")

    outcome = envelope.run("Decrypt", origin(), body)
    assert isinstance(outcome, NotFoundException)
    [call] = recorder.finished
    assert call.reason == "NotFoundException"


def test_an_unidentified_caller_is_seen_as_unidentified_with_the_identity_reason() -> None:
    recorder = Recorder()
    envelope = CallEnvelope(ListSink(), False, observers=[recorder])
    outcome = envelope.run("Encrypt", origin(UnauthenticatedException("no SPIFFE ID")), lambda: "never")
    assert isinstance(outcome, UnauthenticatedException)
    [call] = recorder.finished
    assert call.caller == UNIDENTIFIED
    assert call.reason == "UnauthenticatedException"


def test_a_call_refused_for_its_audit_record_is_seen_with_the_refusal_reason() -> None:
    recorder = Recorder()
    envelope = CallEnvelope(ListSink(broken=True), False, observers=[recorder])
    outcome = envelope.run("GenerateDataKey", origin(), lambda: "answer")
    assert isinstance(outcome, DependencyUnavailableException)
    [call] = recorder.finished
    assert call.reason == outcome.reason


def test_an_unreadable_request_is_seen_once_as_a_validation_error() -> None:
    recorder = Recorder()
    envelope = CallEnvelope(ListSink(), False, observers=[recorder])
    outcome = envelope.refuse_unreadable(
        "Encrypt", origin(), "the request body is not a valid protobuf message"
    )
    assert isinstance(outcome, ValidationException)
    assert [call.reason for call in recorder.finished] == ["ValidationException"]


def test_without_an_audit_sink_a_call_still_gets_a_request_id_and_no_keys() -> None:
    recorder = Recorder()
    envelope = CallEnvelope(None, False, observers=[recorder])
    assert envelope.run("GenerateRandom", origin(), lambda: b"x") == b"x"
    [call] = recorder.finished
    assert call.request_id
    assert call.key_arns == ()
    assert call.source_address == "ipv4:127.0.0.1:5555"


def test_every_observer_sees_every_call_and_a_failing_observer_changes_no_answer() -> None:
    class Broken:
        def call_started(self, name: str) -> None:
            raise RuntimeError("broken observer")

        def call_finished(self, call: FinishedCall) -> None:
            raise RuntimeError("broken observer")

    recorder = Recorder()
    envelope = CallEnvelope(ListSink(), False, observers=[Broken(), recorder])
    for _ in range(3):
        assert envelope.run("Encrypt", origin(), lambda: "answer") == "answer"
    assert len(recorder.finished) == 3


def test_the_outcome_is_the_same_with_and_without_observers() -> None:
    def body() -> NoReturn:
        raise NotFoundException("no such key")

    plain = CallEnvelope(ListSink(), False).run("Decrypt", origin(), body)
    observed = CallEnvelope(ListSink(), False, observers=[Recorder()]).run("Decrypt", origin(), body)
    assert isinstance(plain, KMSError) and isinstance(observed, KMSError)
    assert (plain.reason, plain.message) == (observed.reason, observed.message)
