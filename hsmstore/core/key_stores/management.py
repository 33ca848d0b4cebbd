"""Custom key stores as resources (issue 17): the use case behind the six AWS operations.

API (every method takes the ``Caller`` first; failures are ``KMSError`` reasons):

* ``create_custom_key_store(caller, name, module, hsm_profile, token_label="", token_serial="",
  pin="", custom_key_store_type="") -> str`` -- the new id (``cks-`` + 17 hex). Exactly one
  of label/serial; type "" or PKCS11; hsm_profile required.
  Starts DISCONNECTED (AWS). ValidationException, CustomKeyStoreNameInUseException,
  AccessDeniedException (``kms:CreateCustomKeyStore``).
* ``describe_custom_key_stores(caller, custom_key_store_id="", custom_key_store_name="",
  limit=None, marker="") -> Page[CustomKeyStoreDescription]`` -- one store by id or by name
  (CustomKeyStoreNotFoundException), or all the tenant's, paged like ListKeys.
* ``connect_custom_key_store(caller, custom_key_store_id) -> None``
* ``disconnect_custom_key_store(caller, custom_key_store_id) -> None``
* ``update_custom_key_store(caller, custom_key_store_id, new_name="", pin="", token_label="",
  token_serial="", module="", hsm_profile="") -> None`` -- "" means "unchanged".
* ``delete_custom_key_store(caller, custom_key_store_id) -> None``

For the connection follower (core/key_stores/directory.py) and CreateKey, no caller:

* ``describe(store) -> CustomKeyStoreDescription`` and ``connection_status(store) ->
  ConnectionStatus``: the state a caller sees (below); ``CustomKeyStoreDescription``
  (results.py) is what DescribeCustomKeyStores pages hold, never the PIN.
* ``store_for_new_key(caller, custom_key_store_id) -> str`` -- CreateKey's check;
  ``store_for_random`` -- GenerateRandom's, which lets a store in an outage through.

Module functions for the follower: ``pin_of(sealer, store) -> str`` (the unsealed PIN, to
log in; never log it) and ``record_token_serial(records, custom_key_store_id, serial) ->
bool`` (at a connect: stores the serial the first time; False if the store already saw
another serial: the wrong token).

Transports: the PIN is the one request field that must never reach the audit record's
``requestParameters`` (issue 17: "never in a log or the audit trail"); leave it out there.

AWS semantics followed (CustomKeyStoreInvalidStateException, AWS KMS API Reference):
Connect is refused while the store is DISCONNECTING or FAILED ("to reconnect a custom key
store in a FAILED state, disconnect it, then connect it") and succeeds for every other state
(connecting a CONNECTED store does nothing); Disconnect is refused while DISCONNECTING or
DISCONNECTED; Update and Delete need DISCONNECTED (issue 17: "only while disconnected");
CreateKey needs CONNECTED. Another tenant's store is CustomKeyStoreNotFoundException, so a
refusal never tells that it exists. The actions are account-level, like ``kms:CreateKey``:
identity policies alone decide, against the resource ``"*"``.

The state a caller sees joins the stored decision with what this process sees
(``status_of``, from the follower): decided CONNECTED but not yet opened shows
CONNECTING, decided DISCONNECTED shows DISCONNECTED (or DISCONNECTING while the
follower is still closing it).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from hsmstore.core.access.control import AccessControl
from hsmstore.core.audit import capture
from hsmstore.core.key_stores import requests
from hsmstore.core.key_stores.model import (
    CUSTOM_KEY_STORE_ID_PREFIX,
    ConnectionErrorCode,
    ConnectionState,
    ConnectionStatus,
    CustomKeyStore,
    DesiredConnection,
    TokenLocator,
    pin_seal_context,
)
from hsmstore.core.key_stores.results import CustomKeyStoreDescription
from hsmstore.core.model import Caller
from hsmstore.core.paging import Page, check_limit, decode_marker, encode_marker
from hsmstore.core.ports import Clock, KeyStoreConnector, SecretSealer
from hsmstore.core.ports.custom_key_stores import CustomKeyStoreRecords
from hsmstore.core.validation import echo
from hsmstore.errors import (
    CustomKeyStoreHasCMKsException,
    CustomKeyStoreInvalidStateException,
    CustomKeyStoreNotFoundException,
    IncorrectTrustAnchorException,
    KMSInternalException,
    ValidationException,
)

CHANGE_ATTEMPTS = 5
_MARKER_KIND = "cks"
_DISCONNECTED = ConnectionStatus(ConnectionState.DISCONNECTED)


@dataclass(frozen=True)
class CustomKeyStorePorts:
    """What ``build_use_cases`` needs to offer custom key stores (bootstrap.py supplies them).

    ``status_of``, ``wake`` and ``followed`` come from the connection follower
    (core/key_stores/directory.py); they may be late-bound lambdas when the
    follower itself is built after the use cases. ``followed`` is the follower's
    copy of a store's row (at most its interval old, within the 1 s staleness bound
    of docs/deployment.md), so GenerateRandom needs no DB read.
    """

    records: CustomKeyStoreRecords
    sealer: SecretSealer
    connector: KeyStoreConnector
    status_of: Callable[[CustomKeyStore], ConnectionStatus]
    wake: Callable[[], None]
    followed: Callable[[str], CustomKeyStore | None] = lambda _custom_key_store_id: None


def _not_connected(store: CustomKeyStore) -> ConnectionStatus:
    return _DISCONNECTED


def _no_wake() -> None:
    return None


class CustomKeyStores:
    """The six operations on a tenant's custom key stores (module docstring)."""

    def __init__(
        self,
        records: CustomKeyStoreRecords,
        sealer: SecretSealer,
        connector: KeyStoreConnector,
        access: AccessControl,
        clock: Clock,
        status_of: Callable[[CustomKeyStore], ConnectionStatus] = _not_connected,
        wake: Callable[[], None] = _no_wake,
        followed: Callable[[str], CustomKeyStore | None] = lambda _custom_key_store_id: None,
    ) -> None:
        self._records = records
        self._sealer = sealer
        self._connector = connector
        self._access = access
        self._clock = clock
        self._status_of = status_of
        self._wake = wake
        self._followed = followed

    # -- the operations ---------------------------------------------------------

    def create_custom_key_store(
        self,
        caller: Caller,
        name: str,
        module: str,
        hsm_profile: str,
        token_label: str = "",
        token_serial: str = "",
        pin: str = "",
        custom_key_store_type: str = "",
    ) -> str:
        """CreateCustomKeyStore: a PKCS11 store, DISCONNECTED until ConnectCustomKeyStore (AWS).

        The PIN is sealed under the default store's token with the store's id and
        tenant as context, and only the sealed bytes are stored.
        """
        requests.check_name(name)
        requests.check_type(custom_key_store_type)
        token = requests.locator(module, hsm_profile, token_label, token_serial)
        requests.check_pin(pin)
        self._access.check(caller, "kms:CreateCustomKeyStore", None)
        self._connector.check_locator(token)
        custom_key_store_id = new_custom_key_store_id()
        store = CustomKeyStore(
            custom_key_store_id=custom_key_store_id,
            tenant=caller.tenant,
            name=name,
            locator=token,
            sealed_pin=self._seal(pin, custom_key_store_id, caller.tenant),
            desired=DesiredConnection.DISCONNECTED,
            creation_date=self._clock.now(),
        )
        capture.change(lambda record: self._records.insert_custom_key_store(store, audit=record))
        return custom_key_store_id

    def describe_custom_key_stores(
        self,
        caller: Caller,
        custom_key_store_id: str = "",
        custom_key_store_name: str = "",
        limit: int | None = None,
        marker: str = "",
    ) -> Page[CustomKeyStoreDescription]:
        """DescribeCustomKeyStores: one store by id or by name, or a page of all the tenant's.

        AWS: "To limit the output to a particular custom key store, provide either
        the CustomKeyStoreId or CustomKeyStoreName parameter"; both is refused here.
        """
        page_size = check_limit(limit)
        after = decode_marker(_MARKER_KIND, marker) if marker else None
        if custom_key_store_id and custom_key_store_name:
            raise ValidationException("Give CustomKeyStoreId or CustomKeyStoreName, not both")
        if custom_key_store_id:
            requests.check_id(custom_key_store_id)
        if custom_key_store_name:
            requests.check_name(custom_key_store_name)
        self._access.check(caller, "kms:DescribeCustomKeyStores", None)
        if custom_key_store_id:
            return Page([self.describe(self._find(caller, custom_key_store_id))], "", False)
        if custom_key_store_name:
            found = self._records.get_custom_key_store_by_name(caller.tenant, custom_key_store_name)
            if found is None:
                raise CustomKeyStoreNotFoundException(
                    f"This tenant has no custom key store named {echo(custom_key_store_name)}"
                )
            return Page([self.describe(found)], "", False)
        stores = list(self._records.list_custom_key_stores(caller.tenant, page_size + 1, after))
        truncated = len(stores) > page_size
        stores = stores[:page_size]
        next_marker = encode_marker(_MARKER_KIND, stores[-1].custom_key_store_id) if truncated else ""
        return Page([self.describe(store) for store in stores], next_marker, truncated)

    def connect_custom_key_store(self, caller: Caller, custom_key_store_id: str) -> None:
        """ConnectCustomKeyStore: store the decision, nudge the follower; the connection itself
        is asynchronous (AWS), so a wrong PIN shows later as FAILED/INVALID_CREDENTIALS."""
        requests.check_id(custom_key_store_id)
        self._access.check(caller, "kms:ConnectCustomKeyStore", None)
        self._decide(caller, custom_key_store_id, DesiredConnection.CONNECTED)

    def disconnect_custom_key_store(self, caller: Caller, custom_key_store_id: str) -> None:
        """DisconnectCustomKeyStore: keys of the store keep their metadata operations and
        answer KMSInvalidStateException for cryptographic ones (issue 17)."""
        requests.check_id(custom_key_store_id)
        self._access.check(caller, "kms:DisconnectCustomKeyStore", None)
        self._decide(caller, custom_key_store_id, DesiredConnection.DISCONNECTED)

    def update_custom_key_store(
        self,
        caller: Caller,
        custom_key_store_id: str,
        new_name: str = "",
        pin: str = "",
        token_label: str = "",
        token_serial: str = "",
        module: str = "",
        hsm_profile: str = "",
    ) -> None:
        """UpdateCustomKeyStore, only while DISCONNECTED (AWS and issue 17).

        A new label or serial replaces how the token is named (at most one of
        them). Once a store has connected, its token's serial is its trust
        anchor: an update naming another serial is IncorrectTrustAnchorException
        (AWS: a cluster that is not related to the original one); a new label
        is checked against that serial at the next connect.
        """
        requests.check_id(custom_key_store_id)
        if new_name:
            requests.check_name(new_name, "NewCustomKeyStoreName")
        if pin:
            requests.check_pin(pin)
        if token_label and token_serial:
            raise ValidationException("Give at most one of TokenLabel and TokenSerial to name the token")
        if not (new_name or pin or token_label or token_serial or module or hsm_profile):
            raise ValidationException(
                "Give at least one of NewCustomKeyStoreName, KeyStorePassword, TokenLabel, "
                "TokenSerial, Module and HsmProfile to change"
            )
        self._access.check(caller, "kms:UpdateCustomKeyStore", None)
        for _attempt in range(CHANGE_ATTEMPTS):
            store = self._find(caller, custom_key_store_id)
            self._require_disconnected(store, "updated")
            token = self._new_locator(store, module, hsm_profile, token_label, token_serial)
            if token != store.locator:
                self._connector.check_locator(token)
            updated = replace(
                store,
                name=new_name or store.name,
                locator=token,
                sealed_pin=self._seal(pin, store.custom_key_store_id, store.tenant)
                if pin
                else store.sealed_pin,
                generation=store.generation + 1,
            )
            if self._replace(store, updated):
                self._wake()
                return
        raise _changed_concurrently()

    def delete_custom_key_store(self, caller: Caller, custom_key_store_id: str) -> None:
        """DeleteCustomKeyStore: only DISCONNECTED (CustomKeyStoreInvalidStateException) and
        without keys in any state (CustomKeyStoreHasCMKsException; AWS: "schedule the
        deletion of all KMS keys ... then wait for them to be deleted")."""
        requests.check_id(custom_key_store_id)
        self._access.check(caller, "kms:DeleteCustomKeyStore", None)
        for _attempt in range(CHANGE_ATTEMPTS):
            store = self._find(caller, custom_key_store_id)
            self._require_disconnected(store, "deleted")
            self._require_no_keys(store)
            if self._delete(store):
                self._wake()
                return
        raise _changed_concurrently()

    # -- for the connection follower and CreateKey ---------------------------------

    def describe(self, store: CustomKeyStore) -> CustomKeyStoreDescription:
        """One entry of DescribeCustomKeyStores, with this process's view of the connection."""
        status = self.connection_status(store)
        return CustomKeyStoreDescription(
            custom_key_store_id=store.custom_key_store_id,
            custom_key_store_name=store.name,
            custom_key_store_type=store.key_store_type,
            module=store.locator.module,
            hsm_profile=store.locator.hsm_profile,
            token_label=store.locator.token_label,
            token_serial=store.locator.token_serial,
            connected_token_serial=store.token_serial,
            creation_date=store.creation_date,
            connection_state=status.state,
            connection_error_code=status.error_code,
            connection_detail=status.detail,
        )

    def connection_status(self, store: CustomKeyStore) -> ConnectionStatus:
        """The stored decision joined with what this process sees (module docstring)."""
        live = self._status_of(store)
        if store.desired is DesiredConnection.DISCONNECTED:
            if live.state is ConnectionState.DISCONNECTING:
                return ConnectionStatus(ConnectionState.DISCONNECTING)
            return _DISCONNECTED
        if live.state in (ConnectionState.DISCONNECTED, ConnectionState.DISCONNECTING):
            return ConnectionStatus(ConnectionState.CONNECTING)
        return live

    def store_for_new_key(self, caller: Caller, custom_key_store_id: str) -> str:
        """CreateKey with CustomKeyStoreId: the store must be the caller's tenant's
        (CustomKeyStoreNotFoundException) and CONNECTED here and now
        (CustomKeyStoreInvalidStateException, AWS). Returns the key store id."""
        return self._usable_store(caller, custom_key_store_id, during_outage=False)

    def store_for_random(self, caller: Caller, custom_key_store_id: str) -> str:
        """GenerateRandom with CustomKeyStoreId: as :meth:`store_for_new_key`, but a store
        whose token stopped answering (CONNECTING with NETWORK_ERRORS) is passed on: its
        token call then answers the contract's retryable error at once (issue 17, "calls
        that need it fail within 100 ms with the contract's error"), as its keys' calls do.
        """
        return self._usable_store(caller, custom_key_store_id, during_outage=True)

    # -- helpers ------------------------------------------------------------------

    def _usable_store(self, caller: Caller, custom_key_store_id: str, *, during_outage: bool) -> str:
        """``during_outage`` (GenerateRandom, a cryptographic call): the follower's copy of the
        row will do, so the request path reads the DB only for a store the follower does not know."""
        requests.check_id(custom_key_store_id)
        followed = self._followed(custom_key_store_id) if during_outage else None
        store = (
            followed
            if followed is not None and followed.tenant == caller.tenant
            else self._find(caller, custom_key_store_id)
        )
        status = self.connection_status(store)
        reconnecting = (
            during_outage
            and status.state is ConnectionState.CONNECTING
            and status.error_code is ConnectionErrorCode.NETWORK_ERRORS
        )
        if status.state is not ConnectionState.CONNECTED and not reconnecting:
            raise CustomKeyStoreInvalidStateException(
                f"Custom key store {store.custom_key_store_id} is {status.state.value}, not CONNECTED: "
                "connect it (ConnectCustomKeyStore) and wait for CONNECTED"
            )
        return store.custom_key_store_id

    def _find(self, caller: Caller, custom_key_store_id: str) -> CustomKeyStore:
        store = (
            self._records.get_custom_key_store(custom_key_store_id)
            if requests.is_well_formed_id(custom_key_store_id)
            else None
        )
        if store is None or store.tenant != caller.tenant:
            raise CustomKeyStoreNotFoundException(
                f"This tenant has no custom key store {echo(custom_key_store_id)}"
            )
        return store

    def _decide(self, caller: Caller, custom_key_store_id: str, desired: DesiredConnection) -> None:
        """Connect/Disconnect: the state rules (module docstring), then a compare-and-set."""
        for _attempt in range(CHANGE_ATTEMPTS):
            store = self._find(caller, custom_key_store_id)
            state = self.connection_status(store).state
            refused = (
                (ConnectionState.DISCONNECTING, ConnectionState.FAILED)
                if desired is DesiredConnection.CONNECTED
                else (ConnectionState.DISCONNECTING, ConnectionState.DISCONNECTED)
            )
            if state in refused:
                raise CustomKeyStoreInvalidStateException(_refusal(store, state, desired))
            if store.desired is desired:  # CONNECTING or CONNECTED already: nothing to store
                self._wake()
                return
            if self._replace(store, store.with_desired(desired)):
                self._wake()
                return
        raise _changed_concurrently()

    def _replace(self, store: CustomKeyStore, updated: CustomKeyStore) -> bool:
        return capture.change(
            lambda record: self._records.replace_custom_key_store(updated, store.generation, audit=record)
        )

    def _delete(self, store: CustomKeyStore) -> bool:
        return capture.change(
            lambda record: self._records.delete_custom_key_store(
                store.custom_key_store_id, store.generation, audit=record
            )
        )

    def _require_disconnected(self, store: CustomKeyStore, verb: str) -> None:
        state = self.connection_status(store).state
        if state is not ConnectionState.DISCONNECTED:
            raise CustomKeyStoreInvalidStateException(
                f"Custom key store {store.custom_key_store_id} is {state.value}: it can be {verb} "
                "only while DISCONNECTED; disconnect it first (DisconnectCustomKeyStore)"
            )

    def _require_no_keys(self, store: CustomKeyStore) -> None:
        count = self._records.count_keys_in_key_store(store.custom_key_store_id)
        if count:
            raise CustomKeyStoreHasCMKsException(
                f"Custom key store {store.custom_key_store_id} still holds {count} keys: schedule "
                "their deletion (ScheduleKeyDeletion) and delete the store once they are gone"
            )

    def _new_locator(
        self, store: CustomKeyStore, module: str, hsm_profile: str, token_label: str, token_serial: str
    ) -> TokenLocator:
        current = store.locator
        label, serial = current.token_label or "", current.token_serial or ""
        if token_label or token_serial:
            label, serial = token_label, token_serial
        token = requests.locator(module or current.module, hsm_profile or current.hsm_profile, label, serial)
        if token_serial and store.token_serial is not None and token_serial != store.token_serial:
            raise _incorrect_trust_anchor(store)
        return token

    def _seal(self, pin: str, custom_key_store_id: str, tenant: str) -> bytes:
        return self._sealer.seal(pin.encode(), pin_seal_context(custom_key_store_id, tenant))


def _incorrect_trust_anchor(store: CustomKeyStore) -> IncorrectTrustAnchorException:
    return IncorrectTrustAnchorException(
        f"Custom key store {store.custom_key_store_id} was connected to the token with serial "
        f"{store.token_serial}; an update may not name another token's serial"
    )


def new_custom_key_store_id() -> str:
    """``cks-`` and 17 hex digits (AWS: ``cks-1234567890abcdef0``)."""
    return CUSTOM_KEY_STORE_ID_PREFIX + secrets.token_hex(9)[:17]


def _refusal(store: CustomKeyStore, state: ConnectionState, desired: DesiredConnection) -> str:
    if desired is DesiredConnection.CONNECTED and state is ConnectionState.FAILED:
        return (
            f"Custom key store {store.custom_key_store_id} is FAILED: disconnect it "
            "(DisconnectCustomKeyStore), fix the cause (UpdateCustomKeyStore), then connect it again"
        )
    verb = "connected" if desired is DesiredConnection.CONNECTED else "disconnected"
    return f"Custom key store {store.custom_key_store_id} is {state.value} and cannot be {verb} now"


def _changed_concurrently() -> KMSInternalException:
    return KMSInternalException("The custom key store changed concurrently; retry the request")


def pin_of(sealer: SecretSealer, store: CustomKeyStore) -> str:
    """The crypto user's PIN, unsealed for a login (the connection follower); never log or store it."""
    return sealer.unseal(store.sealed_pin, pin_seal_context(store.custom_key_store_id, store.tenant)).decode()


def record_token_serial(records: CustomKeyStoreRecords, custom_key_store_id: str, serial: str) -> bool:
    """At a connect: the first serial seen becomes the store's trust anchor (a new
    generation, no audit record: not a caller's change). True if ``serial`` is (now)
    the store's; False if the store already saw another one: the follower must not
    use this token (the update named the wrong token). The connection follower
    (core/key_stores/directory.py) calls it with the records alone."""
    for _attempt in range(CHANGE_ATTEMPTS):
        store = records.get_custom_key_store(custom_key_store_id)
        if store is None:
            return False
        if store.token_serial is not None:
            return store.token_serial == serial
        seen = replace(store, token_serial=serial, generation=store.generation + 1)
        if records.replace_custom_key_store(seen, store.generation):
            return True
    raise _changed_concurrently()
