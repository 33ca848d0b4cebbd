"""Half-open streams through a real server: calls that never send their request hold no worker (issue 14).

A raw HTTP/2 connection sends the preface, SETTINGS and one HEADERS frame per
call for ``/hsmstore.v1.KeyStore/GenerateRandom``, and never any DATA. The
server must keep answering other callers and health checks meanwhile, and end
each such stream after its receive deadline with an audited ValidationException.
Deadlines here are generous (a frozen server never answers at all): these are
behaviours, not timings.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, wait_until
from tests.raw_http2 import HalfOpenConnection

pytestmark = pytest.mark.integration

ANSWER_TIMEOUT = 5.0
RECEIVE_DEADLINE_SECONDS = 10.0  # server/app.py RECEIVE_TIMEOUT_SECONDS
SETTLE_SECONDS = 0.5


@contextlib.contextmanager
def half_open(server: ServerProcess, streams: int) -> Iterator[HalfOpenConnection]:
    """``streams`` half-open calls on one connection (tests/raw_http2.py), once the server has
    read every HEADERS frame, and a moment more for the calls to reach the server's handlers."""
    held = HalfOpenConnection(server.address, streams)
    assert held.sync()
    time.sleep(SETTLE_SECONDS)
    try:
        yield held
    finally:
        held.close()


def health_status(channel: grpc.Channel) -> int:
    answer = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=ANSWER_TIMEOUT
    )
    return int(answer.status)


def other_caller_is_served(server: ServerProcess) -> bool:
    """A GenerateRandom and a health check from another connection both answer."""
    with grpc.insecure_channel(server.address) as channel:
        random = pb_grpc.KeyStoreStub(channel).GenerateRandom(
            pb.GenerateRandomRequest(number_of_bytes=16), timeout=ANSWER_TIMEOUT
        )
        return (
            len(random.plaintext) == 16 and health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        )


def test_two_half_open_streams_leave_other_callers_and_health_answering(server: ServerProcess) -> None:
    with half_open(server, 2):
        for _ in range(3):
            assert other_caller_is_served(server)


def test_fifty_half_open_streams_leave_other_callers_and_health_answering(server: ServerProcess) -> None:
    with half_open(server, 50):
        for _ in range(5):
            assert other_caller_is_served(server)


def test_many_half_open_connections_leave_other_callers_answering(server: ServerProcess) -> None:
    with contextlib.ExitStack() as held:
        for _ in range(10):
            held.enter_context(half_open(server, 10))
        assert other_caller_is_served(server)


def test_a_call_whose_request_never_arrives_is_ended_as_validation_and_audited(server: ServerProcess) -> None:
    with half_open(server, 1) as held:
        wait_until(lambda: 1 in held.ended, timeout=RECEIVE_DEADLINE_SECONDS + 15)

    def refused_call_recorded() -> bool:
        page = pb_grpc.AuditStub(server.channel).LookupEvents(
            pb.LookupEventsRequest(
                lookup_attributes=[
                    pb.LookupAttribute(attribute_key="EventName", attribute_value="GenerateRandom")
                ]
            ),
            timeout=ANSWER_TIMEOUT,
        )
        records = [json.loads(event.cloud_trail_event) for event in page.events]
        return any(
            record.get("errorCode") == "ValidationException"
            and "no request message" in record["errorMessage"]
            for record in records
        )

    wait_until(refused_call_recorded)
    assert other_caller_is_served(server)
