"""KeyStoreClient's retry policy on a fake channel: which calls, which errors, how long (issue 20)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from hsmstore._proto.hsmstore.v1 import key_store_pb2
from hsmstore.client import (
    DeadlineExceededError,
    HsmstoreError,
    KeyStoreClient,
    LimitExceededException,
    NotFoundException,
    RetryPolicy,
    ServiceUnavailableError,
    ThrottlingException,
)


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed call as grpc raises it: code, details and the google.rpc.Status trailer."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str | None = None) -> None:
        self._code, self._message = code, message
        status = status_pb2.Status(code=code.value[0], message=message)
        if reason is not None:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="hsmstore"))
            status.details.append(detail)
        self._trailer = (("grpc-status-details-bin", status.SerializeToString()),) if reason else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        return self._trailer

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class FakeChannel:
    """Answers each call with the next scripted outcome: an error to raise or a response to return."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes: Iterator[Any] = iter(outcomes)
        self.calls: list[tuple[str, float | None]] = []

    def unary_unary(self, path: str, request_serializer: Any, response_deserializer: Any) -> Any:
        def call(request: Any, timeout: float | None = None) -> Any:
            self.calls.append((path, timeout))
            outcome = next(self.outcomes)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return call

    def close(self) -> None:
        pass


UNAVAILABLE = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
THROTTLED = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate exceeded", "ThrottlingException")
DEPENDENCY_DOWN = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "token down", "KMSInternalException")
NOT_FOUND = FakeRpcError(grpc.StatusCode.NOT_FOUND, "Key is not found.", "NotFoundException")
LIMIT = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many keys", "LimitExceededException")
DECRYPTED = key_store_pb2.DecryptResponse(key_id="arn:k", plaintext=b"x")


def client_with(
    outcomes: list[Any], max_attempts: int = 4
) -> tuple[KeyStoreClient, FakeChannel, list[float]]:
    channel = FakeChannel(outcomes)
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=max_attempts, sleep=waits.append, uniform=lambda low, high: high)
    return KeyStoreClient(channel=channel, retry_policy=policy, timeout=3.0), channel, waits  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error", [UNAVAILABLE, THROTTLED, DEPENDENCY_DOWN], ids=["unavailable", "throttled", "dependency"]
)
def test_decrypt_is_retried_on_unavailable_and_throttling_until_it_succeeds(error: FakeRpcError) -> None:
    client, channel, waits = client_with([error, error, DECRYPTED])
    assert client.decrypt(ciphertext_blob=b"blob").plaintext == b"x"
    assert len(channel.calls) == 3
    assert len(waits) == 2


def test_create_key_is_never_retried_even_when_unavailable() -> None:
    client, channel, waits = client_with([UNAVAILABLE, key_store_pb2.CreateKeyResponse()])
    with pytest.raises(ServiceUnavailableError):
        client.create_key(description="once")
    assert len(channel.calls) == 1
    assert waits == []


@pytest.mark.parametrize(
    ("error", "raised_class"),
    [(NOT_FOUND, NotFoundException), (LIMIT, LimitExceededException)],
    ids=["not-found", "limit-exceeded"],
)
def test_other_errors_are_not_retried(error: FakeRpcError, raised_class: type[HsmstoreError]) -> None:
    client, channel, waits = client_with([error, DECRYPTED])
    with pytest.raises(raised_class):
        client.decrypt(ciphertext_blob=b"blob")
    assert len(channel.calls) == 1
    assert waits == []


def test_retries_stop_after_max_attempts_with_the_last_error() -> None:
    client, channel, waits = client_with([THROTTLED] * 10, max_attempts=3)
    with pytest.raises(ThrottlingException):
        client.generate_random(number_of_bytes=8)
    assert len(channel.calls) == 3
    assert len(waits) == 2


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.1, max_delay=0.5, uniform=lambda low, high: high)
    assert [policy.delay(attempt) for attempt in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_backoff_is_full_jitter_between_zero_and_the_cap() -> None:
    drawn: list[tuple[float, float]] = []
    policy = RetryPolicy(
        base_delay=0.1, max_delay=2.0, uniform=lambda low, high: drawn.append((low, high)) or 0.0
    )
    policy.delay(3)
    assert drawn == [(0.0, pytest.approx(0.4))]


def test_every_call_carries_the_client_deadline() -> None:
    client, channel, _ = client_with([DECRYPTED])
    client.decrypt(ciphertext_blob=b"blob")
    assert channel.calls == [("/hsmstore.v1.KeyStore/Decrypt", 3.0)]


def test_errors_are_typed_by_reason_with_code_and_message() -> None:
    client, _, _ = client_with([NOT_FOUND])
    with pytest.raises(NotFoundException) as raised:
        client.describe_key(key_id="alias/none")
    assert (raised.value.reason, raised.value.code, raised.value.message) == (
        "NotFoundException",
        "NOT_FOUND",
        "Key is not found.",
    )


def test_a_deadline_without_reason_is_deadline_exceeded() -> None:
    client, _, _ = client_with(
        [FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")], max_attempts=1
    )
    with pytest.raises(DeadlineExceededError):
        client.list_keys()


def test_max_attempts_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_get_parameters_for_import_is_never_retried_though_named_like_a_read() -> None:
    """Each GetParametersForImport makes a wrapping key on the token (issue 22): a retry would
    leave one behind until its 24 h expiry."""
    from hsmstore.client.codegen_names import is_idempotent

    assert not is_idempotent("GetParametersForImport")
    assert is_idempotent("GetPublicKey")


def test_an_rpc_nobody_has_classified_is_never_retried() -> None:
    from hsmstore.client.codegen_names import is_idempotent

    assert not is_idempotent("GetSomethingNew")
    assert not is_idempotent("ListAndDeleteEverything")
