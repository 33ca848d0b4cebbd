"""The harness itself: it must see every kind of broken answer, or a clean fuzz run means nothing.

An in-process gRPC server whose one method misbehaves on purpose (by the
request's bytes) stands in for a broken hsmstore; ``judge`` must flag each
misbehaviour and pass each contract answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.fuzz.corpus import empty_corpus
from tests.fuzz.engine import Outcome, _shrink_bytes, _shrink_message, send
from tests.fuzz.strategies import Plan, Rpc, all_rpcs, mutate, plans, rpc_by_label

HANG_SECONDS = 3.0
HANG_DEADLINE_SECONDS = 1.0  # shorter than HANG_SECONDS: the judge must call it a hang
DEADLINE_SECONDS = 10.0  # any answering call: room for a loaded CI machine


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, reason: str | None) -> None:
    details = []
    if reason is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="hsmstore"))
        details.append(detail)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=f"{reason}: x", details=details)
    context.abort_with_status(rpc_status.to_status(status))


def _misbehave(request: bytes, context: grpc.ServicerContext) -> bytes:
    behaviour = request.decode()
    if behaviour == "raise":
        raise RuntimeError("boom")
    if behaviour == "hang":
        time.sleep(HANG_SECONDS)
    elif behaviour == "internal":
        _abort(context, grpc.StatusCode.INTERNAL, "KMSInternalException")
    elif behaviour == "untyped":
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, None)
    elif behaviour == "mismatched":
        _abort(context, grpc.StatusCode.NOT_FOUND, "ValidationException")
    elif behaviour == "typed":
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "ValidationException")
    elif behaviour == "unavailable":
        _abort(context, grpc.StatusCode.UNAVAILABLE, "KMSInternalException")
    elif behaviour == "huge":  # an error message that echoes a 20 KB input
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ValidationException: " + "k" * 20_000)
    elif behaviour == "garbage":
        return b"\xff\xff\xff"
    return pb.DescribeKeyResponse().SerializeToString()


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "hsmstore.v1.KeyStore", {"DescribeKey": grpc.unary_unary_rpc_method_handler(_misbehave)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)  # the connect is not part of any call's deadline
    yield channel
    channel.close()
    server.stop(None)


def _outcome(channel: grpc.Channel, behaviour: str) -> Outcome:
    rpc = rpc_by_label()["DescribeKey"]
    call = channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
    deadline = HANG_DEADLINE_SECONDS if behaviour == "hang" else DEADLINE_SECONDS
    return send(call, Plan(rpc, behaviour.encode(), None, ("test",)), deadline)


@pytest.mark.parametrize(
    ("behaviour", "problem"),
    [
        ("raise", "UNKNOWN"),
        ("internal", "INTERNAL"),
        ("hang", "hang"),
        ("untyped", "no ErrorInfo"),
        ("mismatched", "ValidationException answered with NOT_FOUND"),
        ("garbage", "the response does not parse"),
        ("huge", "an error too large for a client to read"),
    ],
)
def test_the_judge_flags_each_broken_answer(misbehaving: grpc.Channel, behaviour: str, problem: str) -> None:
    assert _outcome(misbehaving, behaviour).problem == problem


@pytest.mark.parametrize("behaviour", ["typed", "unavailable", "ok"])
def test_the_judge_passes_contract_answers(misbehaving: grpc.Channel, behaviour: str) -> None:
    assert _outcome(misbehaving, behaviour).problem == ""


def _describe_key() -> Rpc:
    return rpc_by_label()["DescribeKey"]


def test_a_failing_message_shrinks_to_the_field_and_length_that_fail() -> None:
    rpc = _describe_key()
    message = pb.DescribeKeyRequest(key_id="abc" + "x" * 1000, grant_tokens=["t1", "t2"])

    def still_fails(plan: Plan) -> bool:
        assert isinstance(plan.message, pb.DescribeKeyRequest)
        return len(plan.message.key_id) > 100

    minimal = _shrink_message(Plan(rpc, message.SerializeToString(), message), still_fails)
    assert isinstance(minimal.message, pb.DescribeKeyRequest)
    assert list(minimal.message.grant_tokens) == []
    assert 100 < len(minimal.message.key_id) <= 200


def test_a_failing_body_shrinks_to_the_bytes_that_fail() -> None:
    rpc = _describe_key()
    minimal = _shrink_bytes(Plan(rpc, b"aaaa\xffbbbb", None, ("test",)), lambda plan: b"\xff" in plan.body)
    assert minimal.body == b"\xff"


def test_mutations_cut_insert_and_flip_bytes() -> None:
    assert mutate(b"abcdef", [("truncate", 2, 0, b"")]) == b"ab"
    assert mutate(b"abc", [("insert", 1, 0, b"XY")]) == b"aXYbc"
    assert mutate(b"\x00", [("flip", 0, 7, b"")]) == b"\x80"
    assert mutate(b"abc", [("delete", 0, 2, b"")]) == b"c"


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(plans(all_rpcs(), empty_corpus()))
def test_a_structured_plan_is_a_well_formed_request_of_its_rpc(plan: Plan) -> None:
    if plan.kind == "structured":
        assert plan.rpc.request_type.FromString(plan.body) == plan.message


def test_every_rpc_of_the_three_services_is_fuzzed() -> None:
    labels = {rpc.label for rpc in all_rpcs()}
    assert {"Encrypt", "CreateGrant", "Simulate", "Admin/PutIdentityPolicy", "Audit/LookupEvents"} <= labels
    assert len(labels) == sum(
        len(pb.DESCRIPTOR.services_by_name[name].methods) for name in ("KeyStore", "Admin", "Audit")
    )
