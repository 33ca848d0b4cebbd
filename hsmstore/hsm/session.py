"""PKCS#11 library, login and sessions: one login per process, serialised or OS-locked calls.

The facts these rules rest on are in docs/hsm.md ("Library, login and
sessions", "Threads and the process lock", "Fork", "Fault classes").

* **Login is per application, not per session.** A second ``C_Login`` fails
  and closing the PIN session logs out every session of the process. So per
  process and token we open ONE login session with the PIN and keep it open
  until the last user of that token closes; working sessions are opened
  without a PIN (always read-write: CloudHSM SDK 5 has no read-only sessions)
  and inherit the login.
* **Threads.** python-pkcs11 initialises with ``C_Initialize(NULL)``, and
  SoftHSM2 2.6.1 then runs without its own mutexes: concurrent calls crash the
  process. So there are two modes (:class:`~hsmstore.hsm.profiles.ThreadingMode`):

  - ``global_lock``: every PKCS#11 call of the process for that module goes
    through one ``threading.Lock``; one working session. python-pkcs11
    releases the GIL inside each C call; the request path's random, encrypt
    and decrypt calls keep it instead (:mod:`hsmstore.hsm.held_calls`), as a
    release there only hands the GIL to another thread and back.
  - ``os_locking``: finalize python-pkcs11's NULL initialisation and call
    ``C_Initialize`` again with ``CKF_OS_LOCKING_OK`` through ctypes (same
    dlopen handle, same module instance), then give each concurrent caller
    its own session, never shared between threads. Sessions come from a
    bounded pool (CloudHSM allows 1,024 sessions per application).

  Which one was measured with ``bench/hsm_locking.py`` (docs/hsm.md, "Locking
  modes, measured"): OS locking buys nothing on SoftHSM and costs CPU, so the
  SoftHSM2 profile uses ``global_lock`` and gets parallelism from worker
  processes. CloudHSM uses ``os_locking``: each call is a network round trip,
  and a global lock would serialise them.

* **Handles are bound to sessions.** A found object keeps the session that
  found it, so each :class:`WorkingSession` carries its own handle cache.
* **Recovery**, by the fault class of every error (one table,
  :mod:`hsmstore.hsm.return_values`): on a token fault (session handle
  invalid, user not logged in, device/token errors, "not initialized", no
  token in any slot, a failing ``C_Initialize``) every session and cached
  handle of the process on that module is dropped, the library is finalized
  and initialized again, the login is redone, and the call is retried once,
  at once. If that faults too the token is down: the call answers
  ``DependencyUnavailableException``, later calls answer it at once, and a
  background reconnector (:mod:`hsmstore.hsm.reconnect`) brings the token
  back with capped exponential backoff (issue 17). A stale *object* handle
  (the key was destroyed, maybe by another process) only drops that key's
  cache entries before one retry: re-initialising re-reads the whole token,
  which is slow on a large one (docs/hsm.md, "Library, login and sessions").
* **Several tokens per module.** Logins are kept per token (by label or
  serial, :class:`TokenSelector`), so two tokens of one module each have their
  own login and sessions under the module's one gate; a reset for one token
  drops the others' sessions too, and their next call opens new ones
  (epochs) without failing (docs/hsm.md, "Several tokens in one process").
* **Object store changes are serialised.** Even in ``os_locking`` mode,
  creating, destroying and searching token objects take one per-module lock
  (:attr:`TokenSessions.object_store_lock`; docs/hsm.md, "Threads and the
  process lock").
* **Nothing at import time.** Importing this module never loads a PKCS#11
  library; :meth:`TokenSessions.open` does.
* **Fork.** A forked child is a new PKCS#11 application that must initialise
  and log in again, so nothing touches PKCS#11 before forking. A
  :class:`TokenSessions` refuses to work in a process other than the one that
  opened it; a forked child must open its own (the library is then finalized,
  ignoring errors, and initialized afresh in the child).
"""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn, Protocol, TypeVar

import pkcs11
from pkcs11 import exceptions as pkcs11_errors

from hsmstore import errors
from hsmstore.core.key_stores.model import ConnectionErrorCode, ConnectionStatus
from hsmstore.hsm.function_list import FunctionList, FunctionListUnavailable, function_list_of
from hsmstore.hsm.held_calls import GilHeldCalls
from hsmstore.hsm.object_store_lock import ObjectStoreLock, softhsm_token_directory
from hsmstore.hsm.profiles import HsmProfile, ThreadingMode
from hsmstore.hsm.reconnect import TokenHealth, connection_error_code, credential_error_code
from hsmstore.hsm.return_values import CKR_BUFFER_TOO_SMALL, CKR_OK, Fault, error_for, fault_of, name_of

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib  # noqa: N812 - a class, named as one
    from pkcs11.types import Object, Session, Token

T = TypeVar("T")
log = logging.getLogger(__name__)

CKF_OS_LOCKING_OK = 0x00000002
"""PKCS#11 v2.40 §5.4: "the library can use the native operating system threading model for locking"."""

HUNG_CALL_SECONDS = 5.0
"""A call inside the module longer than this marks its tokens down (a "timeout"): new calls answer
at once instead of queueing on the module's gate, and the reconnector re-initialises once the
call returns. Longer than any legitimate call (a 20,000-object rescan took 2.4 s, docs/hsm.md)."""

DEFAULT_OS_LOCKING_SESSIONS = 16
"""Pool size in ``os_locking`` mode when the caller does not say (a gRPC pool's threads)."""


# SoftHSM2's file store, opened by several processes at once (``--workers N``
# starting together), now and then answers GeneralError or "no such token" for
# a moment (a known SoftHSM2 fault; docs/hsm.md, "Fault classes"). So
# opening retries every token fault of the table and, at open only,
# CKR_GENERAL_ERROR (fatal elsewhere: it is also SoftHSM2's GCM tag mismatch).
# A wrong PIN or a missing module is not retried.
OPEN_ALSO_RETRIES: tuple[type[pkcs11_errors.PKCS11Error], ...] = (pkcs11_errors.GeneralError,)
TRANSIENT_OPEN_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


class CK_C_INITIALIZE_ARGS(ctypes.Structure):  # noqa: N801 - the PKCS#11 type name
    """PKCS#11 ``CK_C_INITIALIZE_ARGS``, only ``flags`` set (docs/hsm.md, "Threads and the process lock")."""

    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    )


class CK_ATTRIBUTE(ctypes.Structure):  # noqa: N801 - the PKCS#11 type name
    """PKCS#11 ``CK_ATTRIBUTE``: type, value pointer, value length."""

    _fields_ = (
        ("type", ctypes.c_ulong),
        ("pValue", ctypes.c_void_p),
        ("ulValueLen", ctypes.c_ulong),
    )


_CKR_ATTRIBUTE_SENSITIVE = 0x11
_CKR_ATTRIBUTE_TYPE_INVALID = 0x12
_CKR_OBJECT_HANDLE_INVALID = 0x82
_CKA_LABEL = 0x03
_CKA_ID = 0x102
_ID_AND_LABEL_BYTES = 256


class TokenViewStale(pkcs11_errors.PKCS11Error):
    """Raised by us, not the library: the token does not show an object it must hold.

    SoftHSM2 2.6.1's file store: a process that writes an object bumps the
    token's generation counter without re-reading the directory, so it never
    sees an object another process wrote just before (observed with two
    workers and with two nodes on one token). Re-initialising the library
    rescans the directory, so this is handled like a lost session.
    """


class LibraryNotInitialized(pkcs11_errors.PKCS11Error):
    """Raised by us, not the library: ``C_Initialize`` failed while (re-)initialising.

    Whatever the return value, the library is down for now (a token directory
    that cannot be read, an HSM that does not answer): a token fault, so the
    next attempt initialises again.
    """


def fault_kind(exc: pkcs11_errors.PKCS11Error) -> Fault:
    """Classify ``exc`` by the one table, :data:`hsmstore.hsm.return_values.RETURN_VALUES`.

    Our own :class:`TokenViewStale` (a rescan) and :class:`LibraryNotInitialized`
    are token faults.
    """
    if isinstance(exc, TokenViewStale | LibraryNotInitialized):
        return Fault.TOKEN_FAULT
    return fault_of(exc)


class _DirectCalls:
    """The calls the adapter makes itself, releasing the GIL like python-pkcs11 does.

    Bound from the module's function list, never looked up as symbols
    (:mod:`hsmstore.hsm.function_list`).
    """

    def __init__(self, functions: FunctionList) -> None:
        ulong = ctypes.c_ulong
        attributes = ctypes.POINTER(CK_ATTRIBUTE)
        self.C_Initialize = functions.released("C_Initialize", ulong, ctypes.POINTER(CK_C_INITIALIZE_ARGS))
        self.C_Finalize = functions.released("C_Finalize", ulong, ctypes.c_void_p)
        self.C_GetAttributeValue = functions.released(
            "C_GetAttributeValue", ulong, ulong, ulong, attributes, ulong
        )
        self.C_FindObjectsInit = functions.released("C_FindObjectsInit", ulong, ulong, attributes, ulong)
        self.C_FindObjects = functions.released(
            "C_FindObjects", ulong, ulong, ctypes.POINTER(ulong), ulong, ctypes.POINTER(ulong)
        )
        self.C_FindObjectsFinal = functions.released("C_FindObjectsFinal", ulong, ulong)


class _CallGate(Protocol):
    """Who may call into the module: ``shared`` for calls, ``exclusive`` for resets."""

    def shared(self) -> AbstractContextManager[None]: ...

    def exclusive(self) -> AbstractContextManager[None]: ...


class _GlobalLockGate:
    """``global_lock`` mode: ONE lock for every call, reset included."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    # The lock itself is the context manager: no generator frame on every PKCS#11 call.
    def shared(self) -> AbstractContextManager[None]:
        return self.lock  # type: ignore[return-value]

    def exclusive(self) -> AbstractContextManager[None]:
        return self.lock  # type: ignore[return-value]


class _SharedExclusiveGate:
    """``os_locking`` mode: calls run concurrently; a reset waits for them and runs alone.

    Writer-preferring, so a reset is not starved by a steady stream of calls.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active_calls = 0
        self._resets_waiting = 0
        self._resetting = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resetting or self._resets_waiting:
                self._cond.wait()
            self._active_calls += 1
        try:
            yield
        finally:
            with self._cond:
                self._active_calls -= 1
                if self._active_calls == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._resets_waiting += 1
            try:
                while self._resetting or self._active_calls:
                    self._cond.wait()
            finally:
                self._resets_waiting -= 1
            self._resetting = True
        try:
            yield
        finally:
            with self._cond:
                self._resetting = False
                self._cond.notify_all()


@dataclass(frozen=True)
class TokenSelector:
    """A token by label or by serial (issue 17: a custom key store names either); exactly one is set."""

    label: str | None = None
    serial: str | None = None

    def __post_init__(self) -> None:
        if (self.label is None) == (self.serial is None) or not (self.label or self.serial):
            raise ValueError("name a token by exactly one of a non-empty label or serial")

    @property
    def key(self) -> str:
        """The login registry's key: one login per token and way of naming it."""
        return f"label:{self.label}" if self.label is not None else f"serial:{self.serial}"

    def __str__(self) -> str:
        return repr(self.label) if self.label is not None else f"with serial {self.serial!r}"

    def labelled(self) -> str:
        """``is labelled 'x'`` / ``has serial 'y'``, for messages."""
        return f"is labelled {self.label!r}" if self.label is not None else f"has serial {self.serial!r}"


@dataclass(eq=False)
class _Login:
    """The one PIN session of a token in this process, for one library epoch."""

    session: Session
    epoch: int


class Pkcs11Module:
    """One PKCS#11 library loaded in this process, shared by every vault that uses it.

    Obtain it with :func:`acquire_module`; never construct it directly. ``epoch``
    increases on each re-initialisation: sessions (and the object handles
    found through them) of an older epoch are dead and must be dropped, never
    closed (after ``C_Initialize`` the same handle numbers may name new sessions).
    """

    def __init__(self, path: str, mode: ThreadingMode, lib: Pkcs11Lib) -> None:
        self.path = path
        self.mode = mode
        self.lib = lib
        self.pid = os.getpid()
        self.users = 0
        self.epoch = 0
        self.initialized = bool(lib.initialized)
        self.gate: _CallGate = _new_gate(mode)
        self._login_lock = threading.Lock()
        self.object_store_lock = ObjectStoreLock(softhsm_token_directory(path))
        self._logins: dict[str, _Login] = {}
        self._login_holders: dict[str, int] = {}
        self._cdll: _DirectCalls | None = None
        self.calls_in_flight: dict[int, float] = {}
        """thread id -> when its call entered the module (holding the gate); for the hung-call check."""
        self._function_list: FunctionList | None = None
        self._init_args: CK_C_INITIALIZE_ARGS | None = None
        self._held_calls: GilHeldCalls | None = None

    @property
    def held_calls(self) -> GilHeldCalls | None:
        """The request-path calls that keep the GIL, in ``global_lock`` mode only
        (see :mod:`hsmstore.hsm.held_calls`); None in ``os_locking`` mode."""
        if self.mode is not ThreadingMode.GLOBAL_LOCK:
            return None
        if self._held_calls is None:
            self._held_calls = GilHeldCalls(self.function_list)
        return self._held_calls

    # -- initialisation (caller holds the gate exclusively, or is the only user) --

    def initialize(self) -> None:
        """C_Initialize in this module's threading mode (no-op when already done)."""
        if self.initialized:
            return
        if self.mode is ThreadingMode.GLOBAL_LOCK:
            try:
                self.lib.initialize()  # C_Initialize(NULL): the token may disable its own mutexes
            except pkcs11_errors.PKCS11Error as exc:
                raise LibraryNotInitialized(f"C_Initialize failed: {name_of(exc)}") from None
        else:
            cdll = self._c_library()
            # C_Initialize(&{flags: CKF_OS_LOCKING_OK}) on the same dlopen handle (docs/hsm.md)
            self._init_args = CK_C_INITIALIZE_ARGS(None, None, None, None, CKF_OS_LOCKING_OK, None)
            rv = cdll.C_Initialize(ctypes.byref(self._init_args))
            if rv != 0:
                raise LibraryNotInitialized(f"C_Initialize(CKF_OS_LOCKING_OK) returned {rv:#x}")
        self.initialized = True

    def finalize_quietly(self) -> None:
        """C_Finalize, ignoring errors (the library may already be gone or uninitialised)."""
        try:
            if self.lib.initialized:  # python-pkcs11 did the C_Initialize(NULL)
                self.lib.finalize()
            elif self.mode is ThreadingMode.OS_LOCKING or self.initialized:
                self._c_library().C_Finalize(None)
        except pkcs11_errors.PKCS11Error:
            pass
        self.initialized = False
        self._logins.clear()

    def reset(self, seen_epoch: int) -> None:
        """Re-initialise after a token fault seen in ``seen_epoch``; once per fault.

        Several threads may see the same fault: only the first one to get here
        re-initialises, the others find the epoch already moved on.
        """
        with self.gate.exclusive():
            if (self.epoch != seen_epoch and self.initialized) or self.users == 0:
                return  # another thread reset it since; or every user has closed (a late reconnector)
            caller = threading.get_ident()
            self.calls_in_flight[caller] = time.monotonic()  # C_Initialize of a network HSM can hang too
            try:
                self.epoch += 1
                self.finalize_quietly()
                self.initialize()
            finally:
                self.calls_in_flight.pop(caller, None)

    def stuck_seconds(self) -> float:
        """How long the oldest call now inside the module has been there (0 when none is)."""
        started = self.calls_in_flight.copy().values()  # dict.copy is atomic under the GIL
        return time.monotonic() - min(started) if started else 0.0

    def ensure_initialized(self) -> None:
        if not self.initialized:
            with self.gate.exclusive():
                if not self.initialized:
                    self.epoch += 1
                    self.initialize()

    @property
    def function_list(self) -> FunctionList:
        """The function list of the instance python-pkcs11 loaded (:mod:`hsmstore.hsm.function_list`)."""
        if self._function_list is None:
            self._function_list = function_list_of(self.lib, self.path)
        return self._function_list

    def _c_library(self) -> _DirectCalls:
        if self._cdll is None:
            self._cdll = _DirectCalls(self.function_list)
        return self._cdll

    def find_handles(self, session: int, match: dict[int, int]) -> list[int]:
        """Handles of every object whose CK_ULONG attributes equal ``match`` (caller holds the gate).

        Only C_FindObjects: python-pkcs11's ``get_objects`` also reads about ten
        attributes of each object it finds, which on a large token holds the
        process lock for seconds (see :meth:`read_id_and_label`).
        """
        cdll = self._c_library()
        values = (ctypes.c_ulong * len(match))(*match.values())
        size = ctypes.sizeof(ctypes.c_ulong)
        template = (CK_ATTRIBUTE * len(match))(
            *(
                CK_ATTRIBUTE(attribute, ctypes.addressof(values) + index * size, size)
                for index, attribute in enumerate(match)
            )
        )
        rv = cdll.C_FindObjectsInit(session, template, len(match))
        if rv != CKR_OK:
            raise error_for(rv)
        handles: list[int] = []
        batch = (ctypes.c_ulong * 256)()
        found = ctypes.c_ulong(0)
        try:
            while True:
                rv = cdll.C_FindObjects(session, batch, len(batch), ctypes.byref(found))
                if rv != CKR_OK:
                    raise error_for(rv)
                if not found.value:
                    return handles
                handles.extend(batch[: found.value])
        finally:
            cdll.C_FindObjectsFinal(session)

    def read_id_and_label(self, session: int, handle: int) -> tuple[bytes, str] | None:
        """CKA_ID and CKA_LABEL of one object in one C_GetAttributeValue; None if the
        handle no longer names an object or either value does not fit (not one of ours)."""
        id_buffer = ctypes.create_string_buffer(_ID_AND_LABEL_BYTES)
        label_buffer = ctypes.create_string_buffer(_ID_AND_LABEL_BYTES)
        template = (CK_ATTRIBUTE * 2)(
            CK_ATTRIBUTE(_CKA_ID, ctypes.addressof(id_buffer), _ID_AND_LABEL_BYTES),
            CK_ATTRIBUTE(_CKA_LABEL, ctypes.addressof(label_buffer), _ID_AND_LABEL_BYTES),
        )
        rv = self._c_library().C_GetAttributeValue(session, handle, template, 2)
        if rv in (_CKR_OBJECT_HANDLE_INVALID, CKR_BUFFER_TOO_SMALL):
            return None
        if rv != CKR_OK:
            raise error_for(rv)
        label = label_buffer.raw[: template[1].ulValueLen].decode("utf-8", errors="replace")
        return id_buffer.raw[: template[0].ulValueLen], label

    def read_flags(self, session: int, handle: int, attributes: Sequence[int]) -> dict[int, bool | None]:
        """Boolean attributes of one object in ONE ``C_GetAttributeValue`` (caller holds the gate).

        python-pkcs11's ``get_attributes`` asks for the lengths first, then the
        values: two calls, each a network round trip on CloudHSM. A CK_BBOOL is
        one byte, so one call with one-byte buffers does. An attribute the
        object does not have reads as None (PKCS#11 v2.40 §5.7: its
        ``ulValueLen`` is set to CK_UNAVAILABLE_INFORMATION and the call
        returns CKR_ATTRIBUTE_TYPE_INVALID or CKR_ATTRIBUTE_SENSITIVE).
        """
        values = (ctypes.c_ubyte * len(attributes))()
        base = ctypes.addressof(values)
        template = (CK_ATTRIBUTE * len(attributes))(
            *(CK_ATTRIBUTE(attribute, base + index, 1) for index, attribute in enumerate(attributes))
        )
        rv = self._c_library().C_GetAttributeValue(session, handle, template, len(attributes))
        if rv not in (CKR_OK, _CKR_ATTRIBUTE_SENSITIVE, _CKR_ATTRIBUTE_TYPE_INVALID):
            raise error_for(rv)
        return {
            attribute: None if template[index].ulValueLen != 1 else bool(values[index])
            for index, attribute in enumerate(attributes)
        }

    # -- login (one PIN session per token and epoch) --

    def find_token(self, selector: TokenSelector) -> Token:
        """The token by label or serial (SoftHSM reassigns slot ids: never by slot)."""
        token: Token
        if selector.label is not None:
            token = self.lib.get_token(token_label=selector.label)
        else:
            token = self.lib.get_token(token_serial=(selector.serial or "").encode())
        return token

    def ensure_login(self, selector: TokenSelector, pin: str) -> Token:
        """Log in to the token once for this epoch; return the token. Caller holds ``gate.shared``.

        Logins are per token: two tokens of one module each have their own
        (docs/hsm.md, "Several tokens in one process").
        """
        with self._login_lock:
            login = self._logins.get(selector.key)
            if login is not None and login.epoch == self.epoch:
                token: Token = login.session.token
                return token
            token = self.find_token(selector)
            try:
                session = token.open(rw=True, user_pin=pin)  # C_OpenSession + C_Login(CKU_USER)
            except pkcs11_errors.UserAlreadyLoggedIn:
                # Someone outside this registry logged the process in; the login
                # state is per application, so it is ours too. python-pkcs11 has
                # already lost that C_OpenSession's handle: nothing to close.
                session = token.open(rw=True)
            self._logins[selector.key] = _Login(session=session, epoch=self.epoch)
            return token

    def hold_login(self, selector: TokenSelector) -> None:
        with self._login_lock:
            self._login_holders[selector.key] = self._login_holders.get(selector.key, 0) + 1

    def release_login(self, selector: TokenSelector) -> None:
        """The last holder of a token's login logs out (``Session.close`` does C_Logout)."""
        with self.gate.exclusive(), self._login_lock:
            holders = self._login_holders.get(selector.key, 0) - 1
            if holders > 0:
                self._login_holders[selector.key] = holders
                return
            self._login_holders.pop(selector.key, None)
            login = self._logins.pop(selector.key, None)
            if login is not None and login.epoch == self.epoch and self.initialized:
                with suppress(pkcs11_errors.PKCS11Error):
                    login.session.close()


def _new_gate(mode: ThreadingMode) -> _CallGate:
    return _GlobalLockGate() if mode is ThreadingMode.GLOBAL_LOCK else _SharedExclusiveGate()


_registry_lock = threading.Lock()
_modules: dict[str, Pkcs11Module] = {}


def _forget_locks_after_fork() -> None:
    """In a forked child, a lock held by a parent thread at fork time stays held forever."""
    global _registry_lock  # noqa: PLW0603 - replaced, never shared with the parent
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_locks_after_fork)


def acquire_module(path: str, mode: ThreadingMode) -> Pkcs11Module:
    """Load (once per process) and initialise the PKCS#11 library at ``path``.

    A module cannot be in both threading modes at once: the first user picks
    it, later users must agree until every user has released it.
    """
    with _registry_lock:
        module = _modules.get(path)
        if module is not None and module.pid != os.getpid():
            # Inherited through fork: a new application for PKCS#11. Start over
            # from the same python-pkcs11 object (its dlopen handle is valid).
            inherited = module
            module = Pkcs11Module(path, mode, inherited.lib)
            module.initialized = True  # whatever the parent left, finalize it first
            module.finalize_quietly()
            _modules[path] = module
        if module is None:
            lib = pkcs11.lib(path)  # dlopen + C_GetFunctionList + C_Initialize(NULL) + C_GetInfo
            module = Pkcs11Module(path, mode, lib)
            try:
                module.function_list  # noqa: B018 - checked now: a bad module fails at open, not mid-call
            except FunctionListUnavailable as exc:
                raise pkcs11_errors.PKCS11Error(f"Unusable PKCS#11 module: {exc}") from None
            _modules[path] = module
        if module.users == 0:
            if module.mode is not mode or (mode is ThreadingMode.OS_LOCKING and module.lib.initialized):
                module.finalize_quietly()  # undo python-pkcs11's C_Initialize(NULL)
                module.mode = mode
                module.gate = _new_gate(mode)
            module.initialize()
            module.epoch += 1
        elif module.mode is not mode:
            raise errors.KMSInternalException(
                f"the PKCS#11 module is already in use in {module.mode.value} mode in this process"
            )
        module.users += 1
        return module


def release_module(module: Pkcs11Module) -> None:
    """The last user finalizes the library: a later open re-reads its configuration
    (SoftHSM reads ``SOFTHSM2_CONF`` and scans its token directory in C_Initialize)."""
    with _registry_lock:
        module.users -= 1
        if module.users == 0 and module.pid == os.getpid():
            module.finalize_quietly()


class OpenFailure(enum.Enum):
    """Why a token could not be opened: what the operator has to fix (issue 16)."""

    MODULE = "module"  # the PKCS#11 library does not load or initialise
    LABEL = "label"  # no token (or several) has that label
    PIN = "pin"  # the PIN was refused, or it is locked or expired
    OTHER = "other"


class TokenOpenFailed(errors.KMSInternalException):
    """Opening the token failed; ``failure`` says which setting to fix.

    ``labels`` lists the labels of the tokens the module shows when the
    label was not found (issue 16: "the token labels that exist"): labels are
    not secrets, and listing them is the fix for a typo.
    """

    def __init__(
        self,
        message: str,
        failure: OpenFailure,
        labels: tuple[str, ...] = (),
        code: ConnectionErrorCode = ConnectionErrorCode.INTERNAL_ERROR,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.labels = labels
        self.code = code
        """What a custom key store shows (issue 17's ConnectionErrorCode analogues)."""


def _token_labels(module: Pkcs11Module) -> tuple[str, ...]:
    """The labels of the initialised tokens in the module's slots; empty if even that fails."""
    try:
        with module.gate.exclusive():
            tokens = [slot.get_token() for slot in module.lib.get_slots(token_present=True)]
    except pkcs11_errors.PKCS11Error:
        return ()
    # An uninitialised token (SoftHSM2's free slot) has an empty label.
    return tuple(sorted(token.label for token in tokens if token.label))


_PIN_FAILURES: tuple[tuple[tuple[type[pkcs11_errors.PKCS11Error], ...], str], ...] = (
    ((pkcs11_errors.PinLocked,), "the PIN of token {token} is locked"),
    (
        (pkcs11_errors.PinIncorrect, pkcs11_errors.PinInvalid, pkcs11_errors.PinLenRange),
        "token {token} rejected the PIN",
    ),
    ((pkcs11_errors.PinExpired,), "the PIN of token {token} has expired"),
    ((pkcs11_errors.UserPinNotInitialized,), "token {token} has no user PIN set"),
)


def _open_failure(exc: pkcs11_errors.PKCS11Error, token: TokenSelector) -> tuple[str, OpenFailure]:
    """A fixed message per cause: never the library's text, never the PIN."""
    if isinstance(exc, pkcs11_errors.NoSuchToken):
        return f"no PKCS#11 token {token.labelled()}", OpenFailure.LABEL
    if isinstance(exc, pkcs11_errors.MultipleTokensReturned):
        plural = "are labelled" if token.label is not None else "have serial"
        return f"several PKCS#11 tokens {plural} {token.label or token.serial!r}", OpenFailure.LABEL
    for error_classes, what in _PIN_FAILURES:
        if isinstance(exc, error_classes):
            return what.format(token=token), OpenFailure.PIN
    return f"cannot open a session on token {token}", OpenFailure.OTHER


@dataclass(eq=False)
class WorkingSession:
    """A session opened without a PIN, and the key objects found through it.

    ``keys`` maps CKA_ID to the python-pkcs11 object; an object is only valid
    with the session that made it (docs/hsm.md, "Library, login and sessions").
    """

    session: Session
    epoch: int
    keys: dict[bytes, Object] = field(default_factory=dict, repr=False)
    needs_initializer: bool = True

    @property
    def handle(self) -> int:
        """The PKCS#11 session handle, for :mod:`hsmstore.hsm.held_calls`."""
        handle: int = self.session.handle  # type: ignore[attr-defined]  # python-pkcs11's types omit it
        return handle


class TokenSessions:
    """The sessions one vault uses on one token, and the retry-once policy.

    Every PKCS#11 call of the vault happens inside :meth:`run`, which holds the
    module's gate (the global lock, or a shared slot in ``os_locking`` mode) and
    a working session that no other thread uses meanwhile.
    """

    def __init__(
        self,
        module: Pkcs11Module,
        token: str | TokenSelector,
        pin: str,
        profile: HsmProfile,
        max_sessions: int,
        hung_call_seconds: float = HUNG_CALL_SECONDS,
    ) -> None:
        self._module = module
        self._hung_call_seconds = hung_call_seconds
        self._token = token if isinstance(token, TokenSelector) else TokenSelector(label=token)
        self._pin = pin
        self._label_seen: str | None = self._token.label
        self._serial: str | None = None
        self._health = TokenHealth(str(self._token), self._reconnect_once)
        self._failed_epoch = -1  # the module epoch the last reconnect attempt failed in
        self.profile = profile
        self._pid = os.getpid()
        self._closed = False
        # A pool slot per concurrent call; in global_lock mode the gate already
        # admits one call at a time, and a second lock would only add a handoff.
        self._slots: AbstractContextManager[object] = (
            nullcontext()
            if module.mode is ThreadingMode.GLOBAL_LOCK
            else threading.BoundedSemaphore(max_sessions)
        )
        self._pool_lock = threading.Lock()
        self._idle: list[WorkingSession] = []
        self._all: list[WorkingSession] = []
        self._pool_epoch = module.epoch
        self._initializer: Callable[[WorkingSession], None] | None = None

    @classmethod
    def open(
        cls,
        profile: HsmProfile,
        module_path: str,
        token: str | TokenSelector,
        pin: str,
        max_sessions: int | None = None,
        *,
        hung_call_seconds: float = HUNG_CALL_SECONDS,
    ) -> TokenSessions:
        """Load the module, log in to the token (once per process), open a working session.

        ``token`` is a label, or a :class:`TokenSelector` (label or serial).
        Only transient faults are retried here; a refused PIN is tried exactly
        once (every failed C_Login counts towards the token's lockout).
        """
        selector = token if isinstance(token, TokenSelector) else TokenSelector(label=token)
        if profile.threading_mode is ThreadingMode.GLOBAL_LOCK:
            max_sessions = 1  # every call is serialised anyway
        elif max_sessions is None:
            max_sessions = DEFAULT_OS_LOCKING_SESSIONS
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        for delay in (*TRANSIENT_OPEN_RETRY_DELAYS, None):
            try:
                module = acquire_module(module_path, profile.threading_mode)
            except pkcs11_errors.PKCS11Error:
                raise TokenOpenFailed(
                    "cannot load or initialise the PKCS#11 module",
                    OpenFailure.MODULE,
                    code=ConnectionErrorCode.MODULE_NOT_LOADED,
                ) from None
            sessions = cls(module, selector, pin, profile, max_sessions, hung_call_seconds)
            module.hold_login(selector)
            try:
                # login + first working session, now rather than on first use
                sessions.run(lambda ws: None, retry_faults=False)
            except pkcs11_errors.PKCS11Error as exc:
                labels = _token_labels(module) if isinstance(exc, pkcs11_errors.NoSuchToken) else ()
                sessions.close()  # the last user finalizes: the next attempt re-reads the token directory
                transient = fault_kind(exc) is Fault.TOKEN_FAULT or isinstance(exc, OPEN_ALSO_RETRIES)
                # The module shows other tokens but not this label: a wrong label, not SoftHSM2's
                # passing glitch (which hides the token store as a whole); fail at once (issue 16).
                transient = transient and not labels
                if delay is None or not transient:
                    message, failure = _open_failure(exc, selector)
                    code = connection_error_code(exc, ConnectionErrorCode.TOKEN_NOT_FOUND)
                    raise TokenOpenFailed(message, failure, labels, code) from None
                time.sleep(delay)
                continue
            except BaseException:
                sessions.close()
                raise
            return sessions
        raise AssertionError("unreachable")

    def __repr__(self) -> str:  # never the PIN
        return f"<TokenSessions token={self._token} mode={self._module.mode.value}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("PKCS#11 sessions cannot be pickled; open a vault in each process")

    @property
    def token_label(self) -> str:
        """The token's label (as named, or as the token reported it when named by serial)."""
        return self._label_seen or ""

    @property
    def token_serial(self) -> str | None:
        """The serial the token reported at the last login (issue 17: what an open reports)."""
        return self._serial

    @property
    def token(self) -> TokenSelector:
        return self._token

    @property
    def health(self) -> TokenHealth:
        """CONNECTED / CONNECTING / FAILED and the reconnector (:mod:`hsmstore.hsm.reconnect`)."""
        return self._health

    def connection_status(self) -> ConnectionStatus:
        return self._health.status

    @property
    def threading_mode(self) -> ThreadingMode:
        return self._module.mode

    @property
    def held_calls(self) -> GilHeldCalls | None:
        """See :attr:`Pkcs11Module.held_calls`; use only inside :meth:`run`."""
        return self._module.held_calls

    @property
    def function_list(self) -> FunctionList:
        """The module's function list, for calls on raw handles (hsm/wrapped_keys.py, issue 18)."""
        return self._module.function_list

    @property
    def object_store_lock(self) -> ObjectStoreLock:
        """Hold while creating, destroying or searching token objects, and while reading the
        attributes of objects a search found (inside :meth:`run`).

        SoftHSM 2.6.1, even re-initialised with CKF_OS_LOCKING_OK, fails some
        C_GenerateKey calls of token objects while other sessions run
        C_FindObjects (docs/hsm.md, "Threads and the process lock"), and across
        processes the same race corrupts the new object, so on SoftHSM2 the lock
        is shared by every process on the token (``hsm/object_store_lock.py``).
        Those calls are rare (never on the request path once handles are cached),
        so the lock costs nothing there.
        """
        return self._module.object_store_lock

    @property
    def session_object_lock(self) -> threading.Lock:
        """Hold while creating or destroying a session object (inside :meth:`run`): the
        in-process half of :attr:`object_store_lock`, since session objects are not in the
        token's files that other processes read (``hsm/object_store_lock.py``)."""
        return self._module.object_store_lock.in_process

    def find_handles(self, ws: WorkingSession, match: dict[int, int]) -> list[int]:
        """See :meth:`Pkcs11Module.find_handles`; inside :meth:`run`, holding :attr:`object_store_lock`."""
        return self._module.find_handles(ws.handle, match)

    def read_id_and_label(self, ws: WorkingSession, handle: int) -> tuple[bytes, str] | None:
        """See :meth:`Pkcs11Module.read_id_and_label`; use only inside :meth:`run`."""
        return self._module.read_id_and_label(ws.handle, handle)

    def read_flags(
        self, ws: WorkingSession, handle: int, attributes: Sequence[int]
    ) -> dict[int, bool | None]:
        """See :meth:`Pkcs11Module.read_flags`; use only inside :meth:`run`, with ``ws``'s objects."""
        return self._module.read_flags(ws.handle, handle, attributes)

    # -- the one entry point for PKCS#11 calls --

    def run(
        self, op: Callable[[WorkingSession], T], *, key_id: bytes | None = None, retry_faults: bool = True
    ) -> T:
        """Call ``op`` with a working session; recover from token faults, or answer at once.

        By the fault class of :mod:`hsmstore.hsm.return_values`: a stale object
        handle drops ``key_id``'s cache entries and retries once; a
        ``TokenViewStale`` rescans once. A token fault re-initialises the module
        and retries at once, one time (a lost session costs no error); if that
        faults too, the token is down: the call raises
        ``DependencyUnavailableException`` and the token's reconnector takes
        over (:mod:`hsmstore.hsm.reconnect`). While it is down, or FAILED
        after a refused login, every call raises at once without touching the
        token (issue 17: "fail within 100 ms ... never hang"). A refused login
        (the PIN changed meanwhile) makes it FAILED and is never retried.
        Caller errors and fatal errors propagate unchanged (``PKCS11Error``), as
        do faults when ``retry_faults`` is False (opening has its own retries
        and messages).
        """
        self._check_usable()
        if retry_faults:
            self._health.check()
            self._check_not_hung()
        stale_retried = rescanned = reset_once = False
        while True:
            seen_epoch = self._module.epoch
            try:
                self._module.ensure_initialized()
                with self._checked_out() as ws:
                    seen_epoch = ws.epoch
                    return op(ws)
            except pkcs11_errors.PKCS11Error as exc:
                kind = fault_kind(exc)
                refused = credential_error_code(exc)
                if refused is not None and retry_faults:
                    self._health.refused_login(refused)
                    raise self._health.unavailable() from None
                if kind is Fault.STALE_HANDLE and not stale_retried:
                    stale_retried = True
                    if key_id is not None:
                        self.forget_key(key_id)
                    # else: a handle found during this very op went stale (another
                    # process destroyed it meanwhile); running the op again searches again.
                    continue
                if isinstance(exc, TokenViewStale):
                    if rescanned:
                        raise
                    rescanned = True
                elif kind is not Fault.TOKEN_FAULT or not retry_faults:
                    raise
                elif reset_once or self._health.down:
                    self._failed_epoch = self._module.epoch
                    self._health.went_down(name_of(exc))
                    raise self._health.unavailable() from None
                else:
                    reset_once = True
                with suppress(pkcs11_errors.PKCS11Error):  # left uninitialised: the next attempt retries
                    self._module.reset(seen_epoch)

    def _check_not_hung(self) -> None:
        """A call stuck inside the module longer than the bound holds its gate: rather than queue
        behind it (issue 17: "never hang for a gRPC deadline"), answer at once and reconnect
        once it lets go."""
        stuck = self._module.stuck_seconds()
        if stuck > self._hung_call_seconds:
            self._failed_epoch = self._module.epoch
            self._health.went_down(f"timeout: a call has been inside the module for {stuck:.1f} s")
            raise self._health.unavailable()

    def _reconnect_once(self) -> None:
        """One attempt of the reconnector: re-initialise the module (unless another thread did
        since the last failed attempt), log in, open a working session. Raises on failure."""
        self._check_usable()
        try:
            self._module.reset(self._failed_epoch)
            self._module.ensure_initialized()
            with self._checked_out():
                pass
        except pkcs11_errors.PKCS11Error:
            self._failed_epoch = self._module.epoch
            raise

    def set_session_initializer(self, initializer: Callable[[WorkingSession], None]) -> None:
        """Run ``initializer`` on every working session before its next use, and on every
        session opened later (after a reset, or a new pool session)."""
        with self._pool_lock:
            self._initializer = initializer
            for ws in self._all:
                ws.needs_initializer = True

    def forget_key(self, key_id: bytes) -> None:
        """Drop ``key_id`` from every session's cache (dict.pop is atomic under the GIL)."""
        with self._pool_lock:
            sessions = list(self._all)
        for ws in sessions:
            ws.keys.pop(key_id, None)

    def close(self) -> None:
        """Close the working sessions, give back the login and the module. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._health.close()  # never while holding the gate: an attempt in progress needs it
        module = self._module
        if self._pid == os.getpid():
            with module.gate.exclusive(), self._pool_lock:
                for ws in self._all:
                    if ws.epoch == module.epoch and module.initialized:
                        with suppress(pkcs11_errors.PKCS11Error):
                            ws.session.close()  # opened without PIN: C_CloseSession only, no C_Logout
                self._all.clear()
                self._idle.clear()
            module.release_login(self._token)
            release_module(module)

    # -- internals --

    def _check_usable(self) -> None:
        if self._closed:
            raise errors.KMSInternalException("the HSM connection is closed")
        if self._pid != os.getpid():
            raise errors.KMSInternalException(
                "the HSM connection was opened in another process; open a new one after fork"
            )

    @contextmanager
    def _checked_out(self) -> Iterator[WorkingSession]:
        in_flight = self._module.calls_in_flight
        with self._slots, self._module.gate.shared():
            caller = threading.get_ident()
            in_flight[caller] = time.monotonic()
            try:
                if self._closed:
                    raise errors.KMSInternalException("the HSM connection is closed")
                ws = self._take_session()
                try:
                    if ws.needs_initializer and self._initializer is not None:
                        self._initializer(ws)
                    ws.needs_initializer = False
                    yield ws
                finally:
                    with self._pool_lock:
                        if ws.epoch == self._module.epoch and ws in self._all:
                            self._idle.append(ws)
            finally:
                in_flight.pop(caller, None)

    def _take_session(self) -> WorkingSession:
        """An idle session of the current epoch, or a new one (we hold a pool slot)."""
        epoch = self._module.epoch
        with self._pool_lock:
            if self._pool_epoch != epoch:  # the module was re-initialised: every session is dead
                self._all, self._idle = [], []  # drop them, never close them
                self._pool_epoch = epoch
            if self._idle:
                return self._idle.pop()
        token = self._module.ensure_login(self._token, self._pin)
        if self._serial is None or self._label_seen is None:
            self._serial, self._label_seen = token.serial.decode(errors="replace"), token.label
        session = token.open(rw=True)  # no PIN: inherits the process's login
        ws = WorkingSession(session=session, epoch=epoch)
        with self._pool_lock:
            self._all.append(ws)
        return ws
