"""The gRPC end of the call envelope: ``CallRunner`` and the ``handle_errors`` decorator.

Every servicer method runs through ``handle_errors``, which runs it in the
call envelope (core/calls.py: caller, audit record, outcome) and turns a
KMSError outcome into the contract's status (server/errors.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf.message import Message

from hsmstore.core.calls import Admission, CallEnvelope, CallObserver, CallOrigin
from hsmstore.core.model import Caller
from hsmstore.core.ports import AuditSink
from hsmstore.errors import KMSError
from hsmstore.server import convert
from hsmstore.server.errors import abort

R = TypeVar("R")

log = logging.getLogger("hsmstore.server.servicer")  # the name serve's log lines have always carried

CallerResolver = Callable[[grpc.ServicerContext], Caller]

Method = TypeVar("Method", bound=Callable[..., Any])


class CallRunner:
    """The gRPC end of the call envelope (core/calls.py): what only gRPC knows, and its status.

    Issue 15: the envelope (caller, audit record, outcome, error reason,
    failing closed on audit) is transport-neutral; this adapter supplies the
    caller (``caller_of`` the call's context), the request's parameters
    (``convert.request_parameters``) and the peer, and aborts the call with
    the contract's status (server/errors.py) when the outcome is a KMSError.
    The envelope logs through this module's logger, as before the split.
    ``observers`` (metrics, the access log) see every call (core/calls.py ``CallObserver``);
    ``admission`` may refuse it first (request quotas, core/quotas.py).
    """

    def __init__(
        self,
        caller_of: CallerResolver,
        audit_sink: AuditSink | None,
        audit_fail_open: bool,
        observers: Sequence[CallObserver] = (),
        admission: Admission | None = None,
    ) -> None:
        self._caller_of = caller_of
        self._envelope = CallEnvelope(audit_sink, audit_fail_open, log, observers, admission)

    def run(self, name: str, body: Callable[[], R], request: Message, context: grpc.ServicerContext) -> R:
        """Run ``body`` in the envelope as the context's caller; a KMSError aborts with its status."""
        outcome = self._envelope.run(name, self._origin(request, context), body)
        if isinstance(outcome, KMSError):
            abort(context, outcome)
        return outcome

    def refuse_unreadable(
        self, name: str, unreadable: convert.UnreadableRequest, context: grpc.ServicerContext
    ) -> NoReturn:
        """Refuse a call whose request could not be read (server/app.py): audited, then aborted.

        The record's parameters are those of an empty request of the method's
        type: nothing of the body (issue 14).
        """
        origin = self._origin(unreadable.empty_request(), context)
        abort(context, self._envelope.refuse_unreadable(name, origin, unreadable.problem))

    def _origin(self, request: Message, context: grpc.ServicerContext) -> CallOrigin:
        return CallOrigin(
            functools.partial(self._caller_of, context),
            functools.partial(convert.request_parameters, request),
            context.peer,
        )


def handle_errors(method: Method) -> Method:
    """Run the RPC through the servicer's CallRunner (audit record + error table)."""

    @functools.wraps(method)
    def wrapper(
        self: Any, request: Message | convert.UnreadableRequest, context: grpc.ServicerContext
    ) -> object:
        runner: CallRunner = self._runner
        if isinstance(request, convert.UnreadableRequest):  # server/app.py: not parsed, or never arrived
            runner.refuse_unreadable(method.__name__, request, context)  # aborts the call
        return runner.run(method.__name__, lambda: method(self, request, context), request, context)

    return cast(Method, wrapper)
