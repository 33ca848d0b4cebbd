"""Capturing a call's audit record while the call runs.

The transport opens a :class:`~hsmstore.core.audit.record.CallAudit` for the
call (``begin_call``, from ``core/calls.py``); the use cases note what they
resolved (``note_key``, ``note_alias``, ``note_grant``) through a context
variable, and commit a management change together with the record
(``change``); the transport closes the record with the outcome. Nothing here
does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from hsmstore.core.audit.record import CallAudit

T = TypeVar("T")

_current: ContextVar[CallAudit | None] = ContextVar("hsmstore_call_audit", default=None)


@contextmanager
def begin_call(call: CallAudit) -> Iterator[CallAudit]:
    """Make ``call`` the current call of this thread (the gRPC thread pool runs one at a time)."""
    token = _current.set(call)
    try:
        yield call
    finally:
        _current.reset(token)


def note_key(key_arn: str, version: int | None = None) -> None:
    """The service resolved (and maybe used a version of) this key during the current call."""
    call = _current.get()
    if call is None:
        return
    if key_arn not in call.key_ids:
        call.key_ids.append(key_arn)
    if version is not None:
        call.key_versions[key_arn] = version


def change(
    write: Callable[[Mapping[str, Any] | None], T],
    committed: Callable[[T], bool] = lambda result: result is not False,
) -> T:
    """One management change and its call's record, committed in one transaction.

    Issue 5: a management change "commits its record with the change itself",
    so a change is never answered unrecorded and never recorded undone.
    ``write`` gets the current call's record (None outside a call) and hands it
    to the store method that commits the change; unless that answers ``False``
    (nothing changed, so nothing was committed), the record counts as written
    and the transport does not spool it a second time. A ``False`` or an error
    leaves the record to the transport, which writes it with the outcome.
    """
    call = _current.get()
    result = write(None if call is None else call.to_record())
    if call is not None and committed(result):
        call.recorded = True
    return result


def note_grant(grant_id: str) -> None:
    """A grant, not a policy, allowed the current call (issue 5: "grant id if one decided")."""
    call = _current.get()
    if call is not None:
        call.grant_id = grant_id


def note_alias(alias_name: str) -> None:
    call = _current.get()
    if call is not None and call.alias_name is None:
        call.alias_name = alias_name
