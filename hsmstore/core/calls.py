"""The call envelope: one call, from its caller to its outcome, on any transport.

Issue 15: every call goes caller -> audit record -> use case -> outcome ->
error reason the same way whatever carries it, so the envelope is here and a
transport keeps only what is its own. It hands over a :class:`CallOrigin`
(who is calling, the request's parameters, where from) and turns the
KMSError it gets back into its own status (gRPC: ``server/errors.py``, the
contract's table in docs/api.md "Errors"). It decides nothing else.

Every call gets one audit record (issue 5: "management and cryptographic,
allowed and denied, successful and failed"), written before the answer
leaves; a record that cannot be written refuses the call (fail closed)
unless ``audit_fail_open`` is set.

Observers (issue 16, "Observability": request counts by outcome reason,
latency, in-flight calls, one access line per call) see every call through
:class:`CallObserver`: told when it starts, and once it is answered, after its
record is written, with what the record says of it (:class:`FinishedCall`:
never a request or response field, so never a secret). The core knows no
metrics library and no log format: ``server/metrics.py`` and
``server/access_log.py`` are observers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol, TypeVar

from hsmstore.core.audit.capture import begin_call
from hsmstore.core.audit.record import CallAudit, random_uuid
from hsmstore.core.model import Caller
from hsmstore.core.ports import AuditSink
from hsmstore.errors import (
    DependencyUnavailableException,
    KMSError,
    KMSInternalException,
    ValidationException,
)

R = TypeVar("R")

# Who an identity failure is recorded as: nothing the caller presented is trusted.
UNIDENTIFIED = Caller(tenant="", principal="", kind="", name="")

_current_caller: ContextVar[Caller] = ContextVar("hsmstore_caller")


def current_caller() -> Caller:
    """The caller of the call this thread is running (set by :meth:`CallEnvelope.run`)."""
    return _current_caller.get()


@dataclass(frozen=True, slots=True)
class CallOrigin:
    """What only the transport knows of a call; the envelope asks for each part when it needs it.

    ``caller`` may raise (a KMSError such as UnauthenticatedException, or
    anything else): the call is then refused, audited as :data:`UNIDENTIFIED`.
    ``request_parameters`` are CloudTrail's ``requestParameters``: never a
    bytes field (docs/api.md, "Audit events"). It and ``source_address`` are
    read only when a record is made, so a server without an audit sink pays
    for neither.
    """

    caller: Callable[[], Caller]
    request_parameters: Callable[[], dict[str, Any]]
    source_address: Callable[[], str]


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """One answered call as an observer sees it: who, what, on which keys, how it ended, how long.

    ``reason`` is the KMSError reason the call was answered with (docs/api.md,
    "Errors"), None for a success. ``caller`` is :data:`UNIDENTIFIED` when the
    caller could not be identified. ``key_arns`` are the keys the call resolved
    (its audit record's ``resources``; empty without an audit sink).
    ``request_id`` is the audit record's ``requestID``, so an access line leads
    to its record. ``duration_s`` runs from the call's start in the envelope
    until its record was written.
    """

    name: str
    caller: Caller
    reason: str | None
    key_arns: tuple[str, ...]
    duration_s: float
    request_id: str
    source_address: str


class CallObserver(Protocol):
    """Sees every call the envelope runs; must not raise (a failure is logged and ignored)."""

    def call_started(self, name: str) -> None:
        """A call to ``name`` entered the envelope (in-flight calls)."""

    def call_finished(self, call: FinishedCall) -> None:
        """The call was answered (or refused); once per ``call_started``, after its record is written."""


# Admits a call before its use case runs, or raises the KMSError it is refused with
# (core/quotas.py ``RequestQuotas.admit``: ThrottlingException).
Admission = Callable[[Caller, str], None]


class CallEnvelope:
    """Runs one call: its caller, its audit record, its outcome, failing closed on audit.

    A management change commits its record with the change itself
    (``core/audit/capture.py`` ``change``); any other call's record goes to
    ``audit_sink`` before the outcome is handed back. If the sink cannot take
    it and ``audit_fail_open`` is off (the default), the outcome is a refusal
    instead, so nothing is answered unrecorded. Without a sink no record is
    made. ``log`` is the transport's logger, so the envelope's lines name the
    transport that answered. ``observers`` see every call (:class:`CallObserver`).
    ``admission`` is asked first whether an identified caller may make the call (:data:`Admission`).
    """

    def __init__(
        self,
        audit_sink: AuditSink | None,
        audit_fail_open: bool,
        log: logging.Logger | None = None,
        observers: Sequence[CallObserver] = (),
        admission: Admission | None = None,
    ) -> None:
        self._sink = audit_sink
        self._fail_open = audit_fail_open
        self._log = log if log is not None else logging.getLogger(__name__)
        self._observers = tuple(observers)
        self._admission = admission

    def run(self, name: str, origin: CallOrigin, body: Callable[[], R]) -> R | KMSError:
        """Resolve the caller once, run ``body`` with it as ``current_caller()``, record, hand back.

        Never raises a KMSError: the outcome is ``body``'s answer or the
        KMSError the call is answered with (its own, KMSInternalException for
        any other exception, or the audit trail's refusal). The caller is
        resolved inside the guard, so an identity error is answered with its
        own reason like any other KMSError. Observers are told before and after.
        """
        if not self._observers:
            return self._answer(name, origin, body)[0]
        started = time.perf_counter()
        for observer in self._observers:
            self._guarded(observer, observer.call_started, name)
        outcome, caller, call = self._answer(name, origin, body)
        finished = FinishedCall(
            name,
            caller,
            outcome.reason if isinstance(outcome, KMSError) else None,
            tuple(call.key_ids) if call is not None else (),
            time.perf_counter() - started,
            call.request_id if call is not None else random_uuid(),
            call.source_address if call is not None else origin.source_address(),
        )
        for observer in self._observers:
            self._guarded(observer, observer.call_finished, finished)
        return outcome

    def _answer(
        self, name: str, origin: CallOrigin, body: Callable[[], R]
    ) -> tuple[R | KMSError, Caller, CallAudit | None]:
        """The outcome, who it was for, and the call's audit record (None without a sink)."""
        resolved = self._outcome(origin.caller)
        if isinstance(resolved, KMSError):
            refusal, call = self._refuse_unidentified(name, origin, resolved)
            return refusal, UNIDENTIFIED, call
        token = _current_caller.set(resolved)
        try:
            outcome, call = self._run_as(resolved, name, origin, self._admitted(resolved, name, body))
            return outcome, resolved, call
        finally:
            _current_caller.reset(token)

    def _admitted(self, caller: Caller, name: str, body: Callable[[], R]) -> Callable[[], R]:
        """``body``, after ``admission`` lets the call in (issue 16: request quotas, core/quotas.py).

        Inside the call's audit record, so a throttled call is recorded as refused like any other.
        """
        admission = self._admission
        if admission is None:
            return body

        def admitted() -> R:
            admission(caller, name)
            return body()

        return admitted

    def _guarded(self, observer: CallObserver, event: Callable[[Any], None], argument: object) -> None:
        try:
            event(argument)
        except Exception:  # an observer's fault must not change the answer
            self._log.exception("a call observer (%s) failed", type(observer).__name__)

    def refuse_unreadable(self, name: str, origin: CallOrigin, problem: str) -> KMSError:
        """Refuse a call whose request could not be read: ValidationException, audited, one log line.

        Issue 14: a malformed body (or none in time) is a caller's error like
        any other, so it gets the contract's reason and its audit record,
        under the caller's identity; the log gets one line and no traceback.
        ``problem`` is the transport's fixed text: nothing of the body is
        echoed, and ``origin.request_parameters`` should give none of it.
        """
        self._log.warning("refused a call to %s from %s: %s", name, origin.source_address(), problem)

        def refuse() -> NoReturn:
            raise ValidationException(f"The request could not be read: {problem}")

        return self.run(name, origin, refuse)

    def _refuse_unidentified(
        self, name: str, origin: CallOrigin, error: KMSError
    ) -> tuple[KMSError, CallAudit | None]:
        """Refuse an identity failure, recorded first (issue 4: a malformed identity "is audited").

        The record names no tenant and no principal, so the event is seen
        only offline (``hsmstore audit export``/``verify``), never through a
        tenant's LookupEvents.
        """
        if self._sink is None:
            return error, None
        call = CallAudit(
            name,
            UNIDENTIFIED,
            origin.request_parameters(),
            datetime.now(UTC),
            source_address=origin.source_address(),
        )
        call.error_code, call.error_message = error.reason, error.message
        refusal = self._record(call)
        return (error if refusal is None else refusal), call

    def _run_as(
        self, caller: Caller, name: str, origin: CallOrigin, body: Callable[[], R]
    ) -> tuple[R | KMSError, CallAudit | None]:
        if self._sink is None:
            return self._outcome(body), None
        call = CallAudit(
            name,
            caller,
            origin.request_parameters(),
            datetime.now(UTC),
            source_address=origin.source_address(),
        )
        with begin_call(call):
            outcome = self._outcome(body)
            if isinstance(outcome, KMSError):
                call.error_code, call.error_message = outcome.reason, outcome.message
            refusal = self._record(call)
        return (outcome if refusal is None else refusal), call

    def _outcome(self, body: Callable[[], R]) -> R | KMSError:
        try:
            return body()
        except KMSError as error:
            return error
        except Exception:
            self._log.exception("internal error")  # type and traceback only: no request data
            return KMSInternalException("An internal error occurred")

    def _record(self, call: CallAudit) -> KMSError | None:
        """Write ``call``'s record unless its change already did; the refusal if it cannot be written."""
        if call.recorded or self._sink is None:
            return None
        refusal: KMSInternalException
        try:
            self._sink.record(call.to_record())
            return None
        except OSError as error:
            # The spool cannot take it now (a full disk): an outage, retryable, one line a call.
            self._log.error("the audit record of a %s call could not be written: %s", call.event_name, error)
            refusal = DependencyUnavailableException(
                "The audit trail cannot be written; the call was refused"
            )
        except Exception:
            self._log.exception("the audit record of a %s call could not be written", call.event_name)
            refusal = KMSInternalException("The audit trail cannot be written; the call was refused")
        return None if self._fail_open else refusal
