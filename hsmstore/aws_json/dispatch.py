"""One AWS JSON request through the call envelope, to an HTTP status and a JSON document.

The AWS end of ``core/calls.py`` (as ``server/calls.py`` ``CallRunner`` is
gRPC's): it supplies the caller (``authenticate``, the SigV4 check), the
request's parameters for the audit record (camelCase, never a blob: docs/api.md
"Audit events") and the peer, runs the operation's row of ``operations.py``,
and turns a KMSError outcome into AWS's error response (``errors.py``). So a
call over HTTP passes the same gate, state table, quotas, observers and audit
trail as over gRPC. An unknown operation is answered before the envelope, as
gRPC answers an unknown method itself (nothing is audited for it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hsmstore.aws_json.errors import (
    SerializationException,
    UnknownOperationException,
    error_document,
    http_status_of,
)
from hsmstore.aws_json.operations import BY_NAME, Operation
from hsmstore.aws_json.shapes import camel, render
from hsmstore.core.calls import (
    Admission,
    CallEnvelope,
    CallObserver,
    CallOrigin,
    FinishedCall,
    current_caller,
)
from hsmstore.core.model import Caller
from hsmstore.core.ports import AuditSink
from hsmstore.core.use_cases import UseCases
from hsmstore.errors import KMSError, UnsupportedOperationException, ValidationException

log = logging.getLogger("hsmstore.aws_json")

TARGET_PREFIX = "TrentService"  # AWS KMS's JSON target prefix (botocore's model: targetPrefix)


@dataclass(frozen=True)
class Answer:
    status: int
    document: dict[str, Any]
    # AWS's ``x-amzn-RequestId``: the call's audit ``requestID`` and access-log ``request_id``.
    request_id: str = ""

    @property
    def body(self) -> bytes:
        return orjson.dumps(self.document)


def error_answer(error: KMSError, request_id: str = "") -> Answer:
    return Answer(http_status_of(error), error_document(error), request_id)


class _RequestIds:
    """A call observer that keeps, per thread, the request id of the call it last saw finish.

    The envelope tells observers on the thread that ran the call, right after its
    record is written, so the answer can carry the id that record and the access line have.
    """

    def __init__(self) -> None:
        self._last = threading.local()

    def call_started(self, name: str) -> None:
        self._last.request_id = ""

    def call_finished(self, call: FinishedCall) -> None:
        self._last.request_id = call.request_id

    def take(self) -> str:
        request_id: str = getattr(self._last, "request_id", "")
        self._last.request_id = ""
        return request_id


class AwsCalls:
    """Runs AWS JSON requests on ``use_cases`` through one call envelope (audit, observers, quotas)."""

    def __init__(
        self,
        use_cases: UseCases,
        audit_sink: AuditSink | None,
        audit_fail_open: bool,
        observers: Sequence[CallObserver] = (),
        admission: Admission | None = None,
    ) -> None:
        self._use_cases = use_cases
        self._request_ids = _RequestIds()
        self._envelope = CallEnvelope(
            audit_sink, audit_fail_open, log, (*observers, self._request_ids), admission
        )

    def answer(self, target: str, body: bytes, caller: Callable[[], Caller], source_address: str) -> Answer:
        """The answer to ``POST /`` with ``X-Amz-Target: target`` and ``body``, as ``caller``."""
        prefix, _, name = target.partition(".")
        operation = BY_NAME.get(name) if prefix == TARGET_PREFIX else None
        if operation is None:
            shown = target[:128]
            return error_answer(UnknownOperationException(f"Unknown operation {shown!r}"))
        try:
            payload: Any = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            payload = None
        origin = CallOrigin(caller, lambda: audit_parameters(operation, payload), lambda: source_address)
        outcome = self._envelope.run(name, origin, lambda: self._run(operation, payload))
        request_id = self._request_ids.take()
        if isinstance(outcome, KMSError):
            return error_answer(outcome, request_id)
        return Answer(200, outcome, request_id)

    def _run(self, operation: Operation, payload: Any) -> dict[str, Any]:
        arguments = arguments_of(operation, payload)
        family = getattr(self._use_cases, operation.family)
        if family is None:  # a family this server was built without (custom key stores)
            raise UnsupportedOperationException(f"This server does not offer {operation.name}")
        use_case = getattr(family, operation.method)
        result = use_case(current_caller(), **arguments, **operation.fixed)
        return render(operation.outputs, result)


def arguments_of(operation: Operation, payload: Any) -> dict[str, Any]:
    """The use case's keyword arguments from the request's members (``operations.py`` row).

    Members hsmstore does not know are ignored, as AWS's JSON services ignore
    them; a JSON ``null`` is an absent member.
    """
    if not isinstance(payload, dict):
        raise SerializationException("The request body must be a JSON object")
    for refused in operation.refused:
        if payload.get(refused.name) not in refused.allowed:
            raise refused.error(refused.why)
    arguments: dict[str, Any] = {}
    given_by: dict[str, str] = {}
    for member in operation.inputs:
        raw = payload.get(member.name)
        if raw is None:
            arguments.setdefault(member.arg, member.default)
            continue
        value = member.kind.parse(member.name, raw)
        other = given_by.get(member.arg)
        if other is not None and arguments[member.arg] != value:
            raise ValidationException(f"{other} and {member.name} differ: give only {other}")
        if other is None:
            arguments[member.arg] = value
            given_by[member.arg] = member.name
    return arguments


def audit_parameters(operation: Operation, payload: Any) -> dict[str, Any]:
    """CloudTrail's ``requestParameters``: the members the caller set, camelCase, never a blob."""
    if not isinstance(payload, dict):
        return {}
    parameters: dict[str, Any] = {}
    for member in operation.inputs:
        raw = payload.get(member.name)
        if raw is None or member.kind.audit is None:
            continue
        parameters[camel(member.name)] = member.kind.audit(raw)
    for refused in operation.refused:  # scalars only: Recipient holds an attestation document
        value = payload.get(refused.name)
        if isinstance(value, bool | int | str):
            parameters[camel(refused.name)] = value
    return parameters
