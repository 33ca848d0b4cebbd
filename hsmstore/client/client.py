"""``KeyStoreClient``: every hsmstore RPC as a typed method on one reused channel (issue 20).

    with KeyStoreClient("127.0.0.1:50051") as client:
        key = client.create_key(description="orders").key_metadata
        blob = client.encrypt(key_id=key.key_id, plaintext=b"hi").ciphertext_blob

Each call has a deadline (``timeout`` seconds, default 10); stateless calls are
retried on UNAVAILABLE and ThrottlingException (retry.py); a failure raises the
exception class named after the contract's reason (exceptions.py). One channel
per client, opened at construction: gRPC multiplexes concurrent calls on it, and
the client is safe to share between threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf.message import Message

from hsmstore._proto.hsmstore.v1 import key_store_pb2
from hsmstore.client import _convert
from hsmstore.client._methods import GeneratedMethods
from hsmstore.client.channel import CLIENT_OPTIONS, DEFAULT_ENDPOINT, open_channel
from hsmstore.client.exceptions import HsmstoreError, from_rpc_error
from hsmstore.client.retry import RetryPolicy

PROTO_PACKAGE = "hsmstore.v1"


def _service_of() -> dict[str, str]:
    """RPC name -> service name, for ``call``; names are unique across the services."""
    found: dict[str, str] = {}
    for service in key_store_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            found[method.name] = service.name
    return found


SERVICE_OF = _service_of()


class KeyStoreClient(GeneratedMethods):
    """A client of one hsmstore server; ``close()`` (or ``with``) ends its channel.

    ``ca_file`` verifies the server, ``cert_file``/``key_file`` are the caller's
    certificate (mTLS; hsmstore.client.channel). ``max_attempts`` bounds the calls
    of one retried operation (1: never retry; a ``retry_policy`` given replaces it), each
    attempt with a deadline of ``timeout`` seconds. ``channel`` replaces the one the
    client would open (tests, or a caller with its own interceptors).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        retry_policy: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy(max_attempts=max_attempts)
        self._channel = channel or open_channel(endpoint, ca_file, cert_file, key_file, CLIENT_OPTIONS)
        self._callables: dict[str, grpc.UnaryUnaryMultiCallable] = {}

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ calls

    def call(self, method_name: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """``call("ListKeys", {"Limit": 10})``: AWS-style names in and out, for generic callers (the CLI).

        Members are matched to the request's fields by name without case or
        underscores (``KeyId``, ``AWSAccountId``); an unknown member is a TypeError.
        """
        service = SERVICE_OF.get(method_name)
        if service is None:
            raise ValueError(f"hsmstore has no operation {method_name!r}")
        request_message = _convert.fill(self._request(service, method_name), request, aws=True)
        return _convert.to_aws_dict(self._call(service, method_name, request_message))

    def _invoke(self, service: str, rpc: str, fields: dict[str, Any]) -> Any:
        response = self._call(service, rpc, _convert.fill(self._request(service, rpc), fields))
        if not response.DESCRIPTOR.fields:
            return None
        return _convert.to_dataclass(response)

    def _paginate(
        self, service: str, rpc: str, fields: dict[str, Any], marker: str, next_marker: str, items: str
    ) -> Iterator[Any]:
        page_marker = ""
        while True:
            request = _convert.fill(self._request(service, rpc), {**fields, marker: page_marker or None})
            response = self._call(service, rpc, request)
            for item in getattr(response, items):
                yield item if isinstance(item, str) else _convert.to_dataclass(item)
            page_marker = getattr(response, next_marker)
            if not page_marker or page_marker == getattr(request, marker):
                return

    def _request(self, service: str, rpc: str) -> Message:
        method = key_store_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[rpc]
        return getattr(key_store_pb2, method.input_type.name)()  # type: ignore[no-any-return]

    def _callable(self, service: str, rpc: str) -> grpc.UnaryUnaryMultiCallable:
        path = f"/{PROTO_PACKAGE}.{service}/{rpc}"
        found = self._callables.get(path)
        if found is None:
            method = key_store_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[rpc]
            response_class = getattr(key_store_pb2, method.output_type.name)
            found = self._channel.unary_unary(
                path,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=response_class.FromString,
            )
            self._callables[path] = found
        return found

    def _call(self, service: str, rpc: str, request: Message) -> Message:
        """One operation: attempts until success, a final error or ``max_attempts`` (retry.py)."""
        attempt = 1
        while True:
            try:
                return self._callable(service, rpc)(request, timeout=self.timeout)  # type: ignore[no-any-return]
            except grpc.RpcError as raw:
                error: HsmstoreError = from_rpc_error(raw)
            if not self.retry_policy.retries(rpc, error, attempt):
                raise error
            self.retry_policy.wait(attempt)
            attempt += 1
