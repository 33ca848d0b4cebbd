"""Malformed, out-of-range and oversized requests through a real server (issue 14, items 6 and 7).

A body that is not a valid protobuf message, or a LookupEvents Timestamp outside
what a Timestamp can hold, is the caller's error: ValidationException
(INVALID_ARGUMENT with ErrorInfo), audited like any refused call, one log line
and no traceback. A request larger than the server's receive limit is refused by
grpc itself (RESOURCE_EXHAUSTED) and the server keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, reason_of, wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 10
NOT_PROTOBUF = b"\xff\xff\xff\xff"  # a field tag with an unterminated varint
MAX_STATUS_MESSAGE_BYTES = 1024  # server/errors.py


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = ServerProcess(tmp_path_factory.mktemp("server")).start()
    yield running
    running.stop()


def failure(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value


def raw_call(server: ServerProcess, method: str, body: bytes) -> object:
    assert server.channel is not None
    return server.channel.unary_unary(method)(body, timeout=TIMEOUT)


def recorded(server: ServerProcess, event_name: str, error_code: str) -> list[dict[str, object]]:
    page = pb_grpc.AuditStub(server.channel).LookupEvents(
        pb.LookupEventsRequest(
            lookup_attributes=[pb.LookupAttribute(attribute_key="EventName", attribute_value=event_name)]
        ),
        timeout=TIMEOUT,
    )
    records = [json.loads(event.cloud_trail_event) for event in page.events]
    return [record for record in records if record.get("errorCode") == error_code]


def server_log(server: ServerProcess) -> str:
    return "".join(server.output)


def test_a_malformed_body_is_a_validation_exception_with_error_info(server: ServerProcess) -> None:
    error = failure(lambda: raw_call(server, "/hsmstore.v1.KeyStore/GenerateRandom", NOT_PROTOBUF))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "ValidationException"


def test_a_malformed_body_is_audited_and_logged_in_one_line_without_a_traceback(
    server: ServerProcess,
) -> None:
    failure(lambda: raw_call(server, "/hsmstore.v1.KeyStore/DescribeKey", NOT_PROTOBUF))
    wait_until(lambda: bool(recorded(server, "DescribeKey", "ValidationException")))
    wait_until(lambda: "refused a call to DescribeKey" in server_log(server))
    assert "Traceback" not in server_log(server)


def test_a_malformed_admin_body_is_a_validation_exception_too(server: ServerProcess) -> None:
    error = failure(lambda: raw_call(server, "/hsmstore.v1.Admin/GetIdentityPolicy", NOT_PROTOBUF))
    assert reason_of(error) == "ValidationException"


def test_an_out_of_range_lookup_events_timestamp_is_a_validation_exception_and_audited(
    server: ServerProcess,
) -> None:
    audit = pb_grpc.AuditStub(server.channel)
    error = failure(
        lambda: audit.LookupEvents(
            pb.LookupEventsRequest(start_time=Timestamp(seconds=2**62)), timeout=TIMEOUT
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "ValidationException"
    wait_until(lambda: bool(recorded(server, "LookupEvents", "ValidationException")))
    assert "Traceback" not in server_log(server)


def test_an_oversized_request_is_resource_exhausted_and_the_server_keeps_serving(
    server: ServerProcess,
) -> None:
    oversized = pb.EncryptRequest(key_id="alias/any", plaintext=bytes(300 * 1024))
    error = failure(lambda: server.stub.Encrypt(oversized, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    answer = server.stub.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=8), timeout=TIMEOUT)
    assert len(answer.plaintext) == 8


def test_the_largest_valid_request_is_admitted(server: ServerProcess) -> None:
    """A ReEncrypt at AWS's field limits (106 KiB) reaches the service, which judges it."""
    largest = pb.ReEncryptRequest(
        ciphertext_blob=bytes(6144),
        source_encryption_context={"k": "v" * 8000},
        destination_encryption_context={"k": "v" * 8000},
        destination_key_id="k" * 2048,
        source_key_id="k" * 2048,
        grant_tokens=["t" * 8192] * 10,
    )
    error = failure(lambda: server.stub.ReEncrypt(largest, timeout=TIMEOUT))
    assert error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(error) is not None


def test_a_100_kb_key_id_gets_a_short_error_message(server: ServerProcess) -> None:
    error = failure(
        lambda: server.stub.DescribeKey(pb.DescribeKeyRequest(key_id="k" * 100_000), timeout=TIMEOUT)
    )
    assert reason_of(error) == "ValidationException"
    assert len((error.details() or "").encode()) <= MAX_STATUS_MESSAGE_BYTES


def test_the_server_log_holds_no_request_data(server: ServerProcess) -> None:
    failure(lambda: raw_call(server, "/hsmstore.v1.KeyStore/Encrypt", b"\x12\x06secret" + NOT_PROTOBUF))
    wait_until(lambda: "refused a call to Encrypt" in server_log(server))
    assert "secret" not in server_log(server)
