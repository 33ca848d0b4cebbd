"""Custom key stores as resources (issue 17): what a tenant's own token is, and its connection.

AWS KMS: a custom key store is "a KMS resource backed by a key manager that
you own and manage" (AWS_CLOUDHSM or EXTERNAL_KEY_STORE). hsmstore's type is
``PKCS11``, the analogue of AWS_CLOUDHSM: a token in a PKCS#11 module that the
server's configuration allows, named by label or serial, reached with a crypto
user's PIN that the caller gives once (AWS's ``KeyStorePassword``) and that is
kept only sealed under a key of the default key store's token
(:class:`~hsmstore.core.ports.secrets.SecretSealer`).

The connection has two halves. The *decision* (connect or disconnect) is a row
in the metadata DB, so every node and worker follows it (within 1 s); the
*state* (CONNECTED, FAILED with a cause, ...) is what this process sees of the
token, reported by :class:`~hsmstore.core.ports.key_store.KeyStoreConnector`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

KEY_STORE_TYPE_PKCS11 = "PKCS11"
"""The only custom key store type (AWS: ``CustomKeyStoreType`` AWS_CLOUDHSM | EXTERNAL_KEY_STORE)."""

CUSTOM_KEY_STORE_ID_PREFIX = "cks-"
"""AWS: custom key store ids look like ``cks-1234567890abcdef0`` (cks- and 17 hex digits)."""


class ConnectionState(StrEnum):
    """AWS ``ConnectionState``: CONNECTED | CONNECTING | FAILED | DISCONNECTED | DISCONNECTING."""

    CONNECTED = "CONNECTED"
    CONNECTING = "CONNECTING"
    FAILED = "FAILED"
    DISCONNECTED = "DISCONNECTED"
    DISCONNECTING = "DISCONNECTING"


class ConnectionErrorCode(StrEnum):
    """Why a store is FAILED (or CONNECTING again after an outage): AWS ``ConnectionErrorCode`` analogues.

    AWS_CLOUDHSM's codes map as: INVALID_CREDENTIALS (kmsuser password
    wrong), CLUSTER_NOT_FOUND -> TOKEN_NOT_FOUND (no token with that label or
    serial in the module), USER_LOCKED_OUT, USER_NOT_FOUND (the token has no
    user PIN set), NETWORK_ERRORS (the token stopped answering: device removed,
    session handle invalid, a timeout), INTERNAL_ERROR. MODULE_NOT_LOADED is
    hsmstore's own: the configured module did not load or initialise.
    """

    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND"  # noqa: S105 - an error code, not a secret
    USER_LOCKED_OUT = "USER_LOCKED_OUT"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    NETWORK_ERRORS = "NETWORK_ERRORS"
    MODULE_NOT_LOADED = "MODULE_NOT_LOADED"
    INTERNAL_ERROR = "INTERNAL_ERROR"

    @property
    def stops_reconnecting(self) -> bool:
        """Credential errors are not retried: retrying a wrong PIN locks the user out (issue 17)."""
        return self in (
            ConnectionErrorCode.INVALID_CREDENTIALS,
            ConnectionErrorCode.USER_LOCKED_OUT,
            ConnectionErrorCode.USER_NOT_FOUND,
        )


class DesiredConnection(StrEnum):
    """The stored decision every node follows (ConnectCustomKeyStore / DisconnectCustomKeyStore)."""

    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"


@dataclass(frozen=True)
class TokenLocator:
    """Which token a PKCS11 store is: never a library path (issue 17: "an API call never names a
    library path to load"), but the *name* of a module the server's configuration allows.

    Exactly one of ``token_label`` and ``token_serial`` is set. ``hsm_profile``
    is an ``hsm/profiles.py`` profile name (``softhsm2``, ``cloudhsm``).
    """

    module: str
    hsm_profile: str
    token_label: str | None = None
    token_serial: str | None = None


@dataclass(frozen=True)
class CustomKeyStore:
    """One custom key store as the metadata DB holds it.

    ``sealed_pin`` is the crypto user's PIN sealed by the SecretSealer with
    :func:`pin_seal_context` as the context; it is never shown by any API.
    ``token_serial`` is the serial the token reported at the first successful
    connect (AWS's trust anchor analogue), None until then. ``generation``
    increases on every change of the row, so followers see changes by
    comparing one number.
    """

    custom_key_store_id: str
    tenant: str
    name: str
    locator: TokenLocator
    sealed_pin: bytes
    desired: DesiredConnection
    creation_date: datetime
    generation: int = 1
    token_serial: str | None = None
    key_store_type: str = KEY_STORE_TYPE_PKCS11

    def __repr__(self) -> str:  # never the sealed PIN
        return (
            f"<CustomKeyStore {self.custom_key_store_id} tenant={self.tenant!r} name={self.name!r} "
            f"desired={self.desired.value} generation={self.generation}>"
        )

    def with_desired(self, desired: DesiredConnection) -> CustomKeyStore:
        return replace(self, desired=desired, generation=self.generation + 1)


@dataclass(frozen=True)
class ConnectionStatus:
    """What this process sees of one store's token right now."""

    state: ConnectionState
    error_code: ConnectionErrorCode | None = None
    detail: str = ""  # one operator-facing line: never the PIN, never a library's own text


def pin_seal_context(custom_key_store_id: str, tenant: str) -> bytes:
    """The context (AES-GCM AAD) a store's PIN is sealed under: a sealed PIN copied to another
    store's row, or another tenant's, does not unseal."""
    return f"hsmstore:custom-key-store-pin:{tenant}:{custom_key_store_id}".encode()
