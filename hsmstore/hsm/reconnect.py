"""A token's connection state, and the background reconnector that brings it back (issue 17).

Issue 17, "HSM outage": "When a store's token stops answering (device
removed, session handle invalid, device error, a timeout), calls that need it
fail within 100 ms with the contract's error (never hang for a gRPC
deadline), the store shows FAILED/CONNECTING with the cause, a background
reconnector with capped exponential backoff re-opens and logs in again, and
calls succeed again within 5 s of the token's return, without a restart."

So one :class:`TokenHealth` per token a process holds
(:class:`~hsmstore.hsm.session.TokenSessions` owns it):

* CONNECTED: calls go to the token.
* CONNECTING (``NETWORK_ERRORS``): the token stopped answering. Every call
  answers ``DependencyUnavailableException`` at once, without touching the
  token (the reason stays ``KMSInternalException``, which AWS SDKs retry;
  docs/api.md "Errors"). One thread per token re-initialises the module and
  logs in again, :data:`RECONNECT_FIRST_DELAY` after the fault and then
  doubling to :data:`RECONNECT_MAX_DELAY`, until it answers.
* FAILED (``INVALID_CREDENTIALS``, ``USER_LOCKED_OUT``, ``USER_NOT_FOUND``):
  the token answered but refused the login (the PIN was changed meanwhile).
  Nothing retries: every failed ``C_Login`` counts towards the token's lockout
  (issue 17: "the reconnector stops on credential errors"). Closing and opening
  again (ConnectCustomKeyStore, or a restart for the default store) is the way out.

One line is logged when the token stops answering and one when it answers
again; the status's ``detail`` is one operator line, never the PIN nor the
library's own text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pkcs11 import exceptions as pkcs11_errors

from hsmstore import errors
from hsmstore.core.key_stores.model import ConnectionErrorCode, ConnectionState, ConnectionStatus
from hsmstore.hsm.return_values import Fault, fault_of, name_of

log = logging.getLogger(__name__)

RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 1.0
"""Capped exponential backoff of the reconnector: a returning token is found within ~1 s
(issue 17: calls succeed again within 5 s of its return); each attempt re-initialises the
module, which drops the sessions of every token on it, so attempts are not made more often."""

CLOSE_JOIN_SECONDS = 5.0

_CREDENTIAL_ERRORS: dict[type[pkcs11_errors.PKCS11Error], ConnectionErrorCode] = {
    pkcs11_errors.PinIncorrect: ConnectionErrorCode.INVALID_CREDENTIALS,
    pkcs11_errors.PinInvalid: ConnectionErrorCode.INVALID_CREDENTIALS,
    pkcs11_errors.PinLenRange: ConnectionErrorCode.INVALID_CREDENTIALS,
    pkcs11_errors.PinExpired: ConnectionErrorCode.INVALID_CREDENTIALS,
    pkcs11_errors.PinLocked: ConnectionErrorCode.USER_LOCKED_OUT,
    pkcs11_errors.UserPinNotInitialized: ConnectionErrorCode.USER_NOT_FOUND,
}

_CODE_DETAIL = {
    ConnectionErrorCode.INVALID_CREDENTIALS: "the token rejected the PIN; update the key store's PIN",
    ConnectionErrorCode.USER_LOCKED_OUT: "the token's user PIN is locked; unlock it on the token",
    ConnectionErrorCode.USER_NOT_FOUND: "the token has no user PIN set; initialise it on the token",
}


def credential_error_code(exc: BaseException) -> ConnectionErrorCode | None:
    """The code of a refused login (wrong, locked, expired or unset PIN); None for anything else."""
    for cls in type(exc).__mro__:
        code = _CREDENTIAL_ERRORS.get(cls)
        if code is not None:
            return code
    return None


def connection_error_code(
    exc: pkcs11_errors.PKCS11Error, token_missing: ConnectionErrorCode
) -> ConnectionErrorCode:
    """AWS-style ConnectionErrorCode of a failed open or reconnect (issue 17).

    ``token_missing`` is what "no such token" means here: TOKEN_NOT_FOUND when
    opening (a wrong label or serial), NETWORK_ERRORS when a token that was
    there stopped being listed (an outage).
    """
    credential = credential_error_code(exc)
    if credential is not None:
        return credential
    if isinstance(exc, pkcs11_errors.NoSuchToken | pkcs11_errors.MultipleTokensReturned):
        return token_missing
    if fault_of(exc) is Fault.TOKEN_FAULT:
        return ConnectionErrorCode.NETWORK_ERRORS
    return ConnectionErrorCode.INTERNAL_ERROR


def credential_detail(code: ConnectionErrorCode) -> str:
    return _CODE_DETAIL.get(code, "the token refused the login")


class TokenHealth:
    """CONNECTED, CONNECTING or FAILED, for one token in this process; runs its reconnector.

    ``attempt`` re-initialises and logs in once, raising the library's error
    when that fails; it is only ever called from the reconnector thread.
    """

    def __init__(self, token_name: str, attempt: Callable[[], None]) -> None:
        self._token_name = token_name
        self._attempt = attempt
        self._lock = threading.Lock()
        self._status = ConnectionStatus(ConnectionState.CONNECTED)
        self._down_since: float | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self.reconnect_attempts = 0
        """Attempts made by reconnectors of this token (tests, metrics)."""

    @property
    def status(self) -> ConnectionStatus:
        return self._status

    @property
    def down(self) -> bool:
        return self._status.state is not ConnectionState.CONNECTED

    @property
    def reconnecting(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def check(self) -> None:
        """Raise ``DependencyUnavailableException`` at once unless the token is CONNECTED."""
        status = self._status
        if status.state is not ConnectionState.CONNECTED:
            raise self.unavailable(status)

    def unavailable(self, status: ConnectionStatus | None = None) -> errors.DependencyUnavailableException:
        status = status or self._status
        if status.state is ConnectionState.FAILED:
            return errors.DependencyUnavailableException(
                f"the HSM token {self._token_name} refused the login ({status.error_code}); "
                "the key store must be connected again"
            )
        return errors.DependencyUnavailableException(
            f"the HSM token {self._token_name} does not answer; retry the call later"
        )

    def went_down(self, cause: str) -> None:
        """The token stopped answering (``cause``: a CKR_ name): CONNECTING, and start the reconnector."""
        with self._lock:
            if self._closed.is_set() or self._status.state is not ConnectionState.CONNECTED:
                return
            self._status = ConnectionStatus(
                ConnectionState.CONNECTING,
                ConnectionErrorCode.NETWORK_ERRORS,
                f"the token does not answer ({cause}); reconnecting",
            )
            self._down_since = time.monotonic()
            log.warning(
                "PKCS#11 token %s does not answer (%s); calls answer DependencyUnavailableException "
                "until it does, and it is reconnected in the background",
                self._token_name,
                cause,
            )
            self._start_reconnector()

    def refused_login(self, code: ConnectionErrorCode) -> None:
        """A credential error: FAILED with ``code``, and no more attempts (they would lock the user out)."""
        with self._lock:
            if self._status.state is ConnectionState.FAILED:
                return
            self._status = ConnectionStatus(ConnectionState.FAILED, code, credential_detail(code))
            log.error(
                "PKCS#11 token %s refused the login (%s): %s; it is not retried, calls answer "
                "DependencyUnavailableException until the key store is connected again",
                self._token_name,
                code,
                credential_detail(code),
            )

    def close(self) -> None:
        """Stop reconnecting (waits for an attempt in progress, if not called from it). Idempotent."""
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_JOIN_SECONDS)

    # -- the reconnector thread --

    def _start_reconnector(self) -> None:
        # Only on CONNECTED -> CONNECTING: an earlier reconnector has set CONNECTED and is done.
        self._thread = threading.Thread(
            target=self._reconnect, name=f"hsm-reconnect {self._token_name}", daemon=True
        )
        self._thread.start()

    def _reconnect(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        while not self._closed.wait(delay):
            if self._status.state is not ConnectionState.CONNECTING:
                return  # FAILED meanwhile (a call's login was refused): never retried
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
            self.reconnect_attempts += 1
            try:
                self._attempt()
            except pkcs11_errors.PKCS11Error as exc:
                code = connection_error_code(exc, ConnectionErrorCode.NETWORK_ERRORS)
                if code.stops_reconnecting:
                    self.refused_login(code)
                    return
                with self._lock:
                    if self._status.state is ConnectionState.CONNECTING:
                        self._status = ConnectionStatus(
                            ConnectionState.CONNECTING,
                            code,
                            f"the token does not answer ({name_of(exc)}); reconnecting",
                        )
                continue
            except errors.KMSError:
                return  # closed meanwhile
            except Exception:
                log.exception(
                    "reconnecting PKCS#11 token %s failed unexpectedly; trying again", self._token_name
                )
                continue
            with self._lock:
                since = self._down_since
                self._status = ConnectionStatus(ConnectionState.CONNECTED)
                self._down_since = None
            log.warning(
                "PKCS#11 token %s answers again after %.1f s",
                self._token_name,
                time.monotonic() - since if since is not None else 0.0,
            )
            return
