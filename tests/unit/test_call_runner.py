"""CallRunner: one record per call, and no answer without its record (fail closed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core import audit
from hsmstore.core.model import Caller
from hsmstore.errors import NotFoundException, UnauthenticatedException
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


def test_a_call_whose_record_cannot_be_written_is_refused() -> None:
    context = FakeContext()
    with pytest.raises(Aborted):
        runner(ListSink(broken=True)).run(
            "Decrypt",
            lambda: "plaintext",
            pb.DecryptRequest(),
            context,  # type: ignore[arg-type]
        )
    assert context.status is not None and context.status.code == grpc.StatusCode.INTERNAL


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
