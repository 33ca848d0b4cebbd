"""``Pkcs11KeyStoreConnector``: opens custom key stores' tokens (issue 17, ``KeyStoreConnector``).

A custom key store names its token by the *name* of a PKCS#11 module the
server's configuration allows (issue 17: "an API call never names a library
path to load"), an HSM profile (hsm/profiles.py), and a label or serial. This
opens it as a :class:`~hsmstore.hsm.vault.Pkcs11KeyVault` whose
``key_store_id`` is the store's id; the vault is the ``ConnectedKeyStore``:
its own sessions and login on the token, its connection status, and its
background reconnector after an outage (hsm/reconnect.py). Tokens of one
module share one library instance (docs/hsm.md, "Several tokens in one process").

Failures become :class:`~hsmstore.core.ports.key_store.KeyStoreConnectFailed`
with AWS's ConnectionErrorCode analogues: a refused PIN is
INVALID_CREDENTIALS, a locked one USER_LOCKED_OUT, a token without a user PIN
USER_NOT_FOUND, no such token TOKEN_NOT_FOUND, a module that does not load
MODULE_NOT_LOADED, a token that does not answer NETWORK_ERRORS, anything else
INTERNAL_ERROR. A credential error is tried exactly once (a wrong PIN retried
locks the user out). Messages name the setting to fix, never the PIN, and
never list other tokens' labels (they may be other tenants').
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hsmstore import errors
from hsmstore.core.key_stores.model import ConnectionErrorCode, TokenLocator
from hsmstore.core.ports.key_store import ConnectedKeyStore, KeyStoreConnectFailed
from hsmstore.hsm.profiles import HsmProfile, profile_by_name
from hsmstore.hsm.session import HUNG_CALL_SECONDS, TokenOpenFailed, TokenSelector
from hsmstore.hsm.vault import Pkcs11KeyVault


class Pkcs11KeyStoreConnector:
    """``KeyStoreConnector`` over the PKCS#11 modules the server's configuration allows."""

    def __init__(
        self,
        modules: Mapping[str, str],
        *,
        max_sessions: int | None = None,
        hung_call_seconds: float = HUNG_CALL_SECONDS,
    ) -> None:
        """``modules``: module name -> library path (server configuration, never an API call).

        ``max_sessions`` bounds each store's session pool in ``os_locking`` mode;
        ``hung_call_seconds`` how long a call may sit inside a module before its
        tokens are treated as down (hsm/session.py ``HUNG_CALL_SECONDS``).
        """
        self._modules = dict(modules)
        self._max_sessions = max_sessions
        self._hung_call_seconds = hung_call_seconds

    def __repr__(self) -> str:
        return f"<Pkcs11KeyStoreConnector modules={sorted(self._modules)}>"

    def check_locator(self, locator: TokenLocator) -> None:
        """``ValidationException`` for a module name the server does not allow, an unknown
        profile, or a locator naming neither or both of a label and a serial."""
        self._resolve(locator)

    def open(self, key_store_id: str, locator: TokenLocator, pin: str) -> tuple[ConnectedKeyStore, str]:
        """Log in to the token; return its key store and the serial the token reports.

        Raises :class:`KeyStoreConnectFailed` (the store shows FAILED with its code).
        """
        path, profile, selector = self._resolve(locator)
        try:
            profile.validate_pin(pin)
        except ValueError as exc:  # the message never holds the PIN
            raise KeyStoreConnectFailed(ConnectionErrorCode.INVALID_CREDENTIALS, str(exc)) from None
        try:
            vault = Pkcs11KeyVault.open(
                profile,
                path,
                selector,
                pin,
                max_sessions=self._max_sessions,
                key_store_id=key_store_id,
                hung_call_seconds=self._hung_call_seconds,
            )
        except TokenOpenFailed as exc:
            raise KeyStoreConnectFailed(exc.code, f"{exc} (module {locator.module!r})") from None
        try:
            vault.preload()  # handles found once; every session opened later (a reconnect) enumerates again
        except errors.DependencyUnavailableException:
            vault.close()
            raise KeyStoreConnectFailed(
                ConnectionErrorCode.NETWORK_ERRORS, f"token {selector} stopped answering while it was opened"
            ) from None
        except errors.KMSError:
            vault.close()
            raise KeyStoreConnectFailed(
                ConnectionErrorCode.INTERNAL_ERROR, f"token {selector} could not list its keys"
            ) from None
        return vault, vault.token_serial or ""

    def _resolve(self, locator: TokenLocator) -> tuple[str, HsmProfile, TokenSelector]:
        path = self._modules.get(locator.module)
        if path is None:
            allowed = ", ".join(repr(name) for name in sorted(self._modules)) or "none"
            raise errors.ValidationException(
                f"PKCS#11 module {locator.module!r} is not allowed by this server (allowed: {allowed})"
            )
        try:
            profile = profile_by_name(locator.hsm_profile)
        except ValueError as exc:
            raise errors.ValidationException(str(exc)) from None
        try:
            selector = TokenSelector(label=locator.token_label, serial=locator.token_serial)
        except ValueError:
            raise errors.ValidationException(
                "name the token by exactly one of its label or its serial"
            ) from None
        return path, profile, selector


if TYPE_CHECKING:
    from hsmstore.core.ports.key_store import KeyStoreConnector

    def _implements_connector_port(connector: Pkcs11KeyStoreConnector) -> KeyStoreConnector:
        """mypy checks here that the class matches the ``KeyStoreConnector`` Protocol."""
        return connector
