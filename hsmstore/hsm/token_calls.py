"""How the adapter's classes call the token: one session layer, one error mapping.

:class:`Pkcs11KeyVault <hsmstore.hsm.vault.Pkcs11KeyVault>` and
:class:`TokenAuditSealer <hsmstore.hsm.audit_sealer.TokenAuditSealer>` share
one :class:`TokenCalls` over one :class:`~hsmstore.hsm.session.TokenSessions`,
so they share its sessions, locks, retries and search count.

Errors (docs/hsm.md, "Fault classes"): a token that does not answer within the
retry budget is ``DependencyUnavailableException`` (raised by the session
layer); a key the token does not show even after a rescan is
``KeyUnavailableException``; every other token failure is
``KMSInternalException`` with a fixed message, because library messages can
hold attribute values (python-pkcs11's ``NoSuchKey`` prints the search
template). It is raised ``from None`` so the library's exception is not chained.

Observing (issue 16, "token call latency and errors per key store"): an
optional :data:`TokenCallObserver` set on a :class:`TokenCalls` is told the
duration of every operation run through it (retries included) and whether it
failed. It is a plain callable, so this adapter imports no metrics library;
``bootstrap.py`` hands it one from ``server/metrics.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from pkcs11 import Attribute
from pkcs11 import exceptions as pkcs11_errors

from hsmstore import errors
from hsmstore.hsm.session import TokenSessions, TokenViewStale, WorkingSession

if TYPE_CHECKING:
    from pkcs11.types import Object

T = TypeVar("T")

TokenCallObserver = Callable[[float, bool], None]
"""``(duration_s, failed)`` of one operation on the token; must not raise.

A Decrypt whose ciphertext does not authenticate did not fail on the token
(the token answered: the caller's ciphertext is wrong), so it is not a failure.
"""

KEY_ATTRIBUTES_READ_BACK: tuple[Attribute, ...] = (
    Attribute.MODIFIABLE,
    Attribute.COPYABLE,
    Attribute.TOKEN,
    Attribute.PRIVATE,
    Attribute.SENSITIVE,
    Attribute.ALWAYS_SENSITIVE,
    Attribute.EXTRACTABLE,
    Attribute.NEVER_EXTRACTABLE,
    Attribute.LOCAL,
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)
"""Boolean attributes :func:`read_back` reports (never CKA_VALUE)."""


class ThreadSafeCounter:
    """A counter for metrics and tests (``+=`` on an int is not atomic across threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def increment(self) -> None:
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        return self._value


class TokenCalls:
    """Runs operations through the session layer and maps library errors; counts searches."""

    def __init__(self, sessions: TokenSessions) -> None:
        self.sessions = sessions
        self._searches = ThreadSafeCounter()
        self.observer: TokenCallObserver | None = None

    @property
    def searches(self) -> int:
        """Searches of the token made through :meth:`search`."""
        return self._searches.value

    def run(self, op: Callable[[WorkingSession], T], failure: str, *, key_id: bytes | None) -> T:
        """Run ``op`` through the session layer; library errors become a fixed internal error.

        With an :attr:`observer`, it is told how long that took and whether it failed.
        """
        observer = self.observer
        if observer is None:
            return self._run(op, failure, key_id)
        started = time.perf_counter()
        failed = True
        try:
            result = self._run(op, failure, key_id)
            failed = False
            return result
        except errors.CiphertextAuthenticationFailed:
            failed = False
            raise
        finally:
            observer(time.perf_counter() - started, failed)

    def _run(self, op: Callable[[WorkingSession], T], failure: str, key_id: bytes | None) -> T:
        try:
            return self.sessions.run(op, key_id=key_id)
        except (errors.KMSError, errors.CiphertextAuthenticationFailed):
            raise
        except TokenViewStale:
            raise key_unavailable() from None
        except pkcs11_errors.PKCS11Error:
            raise internal(failure) from None

    def search(self, ws: WorkingSession, query: dict[Attribute, object]) -> list[Object]:
        """Every object matching ``query``, holding the object store lock (inside :meth:`run`)."""
        self._searches.increment()
        # Exhaust the generator: an unfinished C_FindObjects leaves the session's
        # find operation active (the next one fails with OperationActive).
        with self.sessions.object_store_lock:
            return list(ws.session.get_objects(query))

    def objects_exist(self, cka_id: bytes, failure: str) -> bool:
        """Whether any object carries ``cka_id`` (recovery and tests only).

        "Absent" is concluded only after a rescan: with several processes on one
        SoftHSM2 store this process may not see an object another made (TokenViewStale).
        """
        rescanned = False

        def exists(ws: WorkingSession) -> bool:
            nonlocal rescanned
            found = bool(self.search(ws, {Attribute.ID: cka_id}))
            if not found and not rescanned:
                rescanned = True
                raise TokenViewStale()
            return found

        return self.run(exists, failure, key_id=None)

    def destroy_objects(self, cka_id: bytes, failure: str) -> bool:
        """C_DestroyObject every object carrying ``cka_id``; True if one existed.

        As :meth:`objects_exist`, "not there" only after a rescan: a reaper that skipped
        an object another process made would leave key material behind after reporting
        it destroyed. The handle cached for ``cka_id`` is forgotten whatever happens.
        """
        rescanned = False

        def destroy(ws: WorkingSession) -> bool:
            nonlocal rescanned
            found = self.search(ws, {Attribute.ID: cka_id})
            if not found and not rescanned:
                rescanned = True
                raise TokenViewStale()
            with self.sessions.object_store_lock:
                for obj in found:
                    obj.destroy()
            return bool(found)

        try:
            return self.run(destroy, failure, key_id=None)
        finally:
            self.sessions.forget_key(cka_id)


def internal(message: str) -> errors.KMSInternalException:
    return errors.KMSInternalException(message)


def key_unavailable() -> errors.KeyUnavailableException:
    return errors.KeyUnavailableException("the key material of this key version is not on the HSM")


def read_back(key: Object) -> dict[str, bool]:
    """The boolean attributes of a token object by name (audits and tests; never CKA_VALUE)."""
    values = key.get_attributes(list(KEY_ATTRIBUTES_READ_BACK))
    return {Attribute(attr).name: bool(values[attr]) for attr in KEY_ATTRIBUTES_READ_BACK}


def as_bytes(output: object) -> bytes:
    """python-pkcs11 returns bytes for bytes input (a generator only for iterables)."""
    if not isinstance(output, bytes):
        raise internal("unexpected output from the PKCS#11 library")
    return output
