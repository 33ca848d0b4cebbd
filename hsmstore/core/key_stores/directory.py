"""``KeyStoreDirectory``: the key stores this process reaches, following the stored connect decisions.

Issue 17, Deliver 2: "Multi-node: the connect/disconnect decision is stored;
every node follows it within 1 s." ConnectCustomKeyStore and
DisconnectCustomKeyStore only write the decision (``CustomKeyStore.desired``);
every process (each ``--workers`` process, each node) runs one follower that
reads all custom key stores every :data:`FOLLOW_INTERVAL_SECONDS` (a handful
of rows) and opens or closes its own connection to match, so a disconnect on
one node is refused by every other node within the interval.

The directory is the core's ``KeyStores`` port: the default key store (the
token given at start) and every custom store connected in this process. A key
whose material is in a custom store that is not connected here answers
``KMSInvalidStateException`` (AWS: "the key's custom key store is not
connected"), while its metadata operations keep working (they never ask for a
key store). A connected store whose token stops answering raises
``DependencyUnavailableException`` itself, at once, and reconnects in the
background (``ConnectedKeyStore``).

Connection failures follow AWS's ConnectionErrorCode semantics: a credential
error (wrong PIN, locked user) is never retried -- retrying a wrong PIN would
lock the crypto user out -- until the store's row changes (a new Connect after
a Disconnect, or an Update with a new PIN); any other failure is retried with
capped exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hsmstore import errors
from hsmstore.core.key_stores.management import pin_of
from hsmstore.core.key_stores.model import (
    ConnectionErrorCode,
    ConnectionState,
    ConnectionStatus,
    CustomKeyStore,
    DesiredConnection,
)
from hsmstore.core.ports.custom_key_stores import CustomKeyStoreRecords
from hsmstore.core.ports.key_store import (
    ConnectedKeyStore,
    KeyStoreConnectFailed,
    KeyStoreConnector,
    SymmetricKeyStore,
)
from hsmstore.core.ports.secrets import SecretSealer

log = logging.getLogger(__name__)

FOLLOW_INTERVAL_SECONDS = 0.5
"""How often each process re-reads the stored decisions (issue 17: every node follows within 1 s)."""
RETRY_FIRST_DELAY_SECONDS = 0.5
RETRY_MAX_DELAY_SECONDS = 30.0
"""Backoff between attempts to connect a store whose token was unreachable at connect time."""

RecordSerial = Callable[[str, str], bool]
"""``(custom_key_store_id, serial) -> bool``: store the serial first seen; False if the store has another."""


@dataclass
class _Attempt:
    """The last failed connect of one store in this process: not retried before ``retry_at``."""

    generation: int
    status: ConnectionStatus
    retry_at: float  # monotonic; inf for a credential error
    delay: float


class KeyStoreDirectory:
    """The ``KeyStores`` port over the default store and this process's connected custom stores.

    Thread-safe: request threads read ``_live`` (a dict replaced, never mutated
    in place), the follower thread writes it.
    """

    def __init__(
        self,
        default: SymmetricKeyStore,
        records: CustomKeyStoreRecords,
        connector: KeyStoreConnector,
        sealer: SecretSealer,
        record_serial: RecordSerial | None = None,
        follow_interval: float = FOLLOW_INTERVAL_SECONDS,
    ) -> None:
        self._default = default
        self._records = records
        self._connector = connector
        self._sealer = sealer
        self._record_serial = record_serial
        self._interval = follow_interval
        self._live: dict[str, ConnectedKeyStore] = {}
        self._known: dict[str, CustomKeyStore] = {}
        self._attempts: dict[str, _Attempt] = {}
        self._sync_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<KeyStoreDirectory default={self._default.key_store_id!r} connected={sorted(self._live)}>"

    # -- the KeyStores port --

    def key_store(self, key_store_id: str) -> SymmetricKeyStore:
        """The store holding material with this id; KMSInvalidStateException if it is a custom store
        that is not connected in this process, KMSInternalException if no store has the id."""
        if key_store_id == self._default.key_store_id:
            return self._default
        live = self._live.get(key_store_id)
        if live is not None:
            return live
        known = self._known.get(key_store_id)
        if known is None:
            raise errors.KMSInternalException(
                f"key store {key_store_id!r} is not configured on this server "
                "(the metadata DB names key material in it)"
            )
        status = self.status_of(known)
        raise errors.KMSInvalidStateException(
            f"the custom key store {key_store_id} is {status.state.value}, not CONNECTED; "
            "connect it with ConnectCustomKeyStore"
        )

    def default(self) -> SymmetricKeyStore:
        return self._default

    def all(self) -> Sequence[SymmetricKeyStore]:
        return (self._default, *self._live.values())

    # -- what the custom key store use case asks --

    def status_of(self, store: CustomKeyStore) -> ConnectionStatus:
        """This process's view of ``store``'s connection (DescribeCustomKeyStores, CreateKey)."""
        live = self._live.get(store.custom_key_store_id)
        if store.desired is DesiredConnection.DISCONNECTED:
            if live is not None:
                return ConnectionStatus(ConnectionState.DISCONNECTING)
            return ConnectionStatus(ConnectionState.DISCONNECTED)
        if live is not None:
            return live.connection_status()
        attempt = self._attempts.get(store.custom_key_store_id)
        if attempt is not None and attempt.generation == store.generation:
            return attempt.status
        return ConnectionStatus(ConnectionState.CONNECTING)

    def followed(self, custom_key_store_id: str) -> CustomKeyStore | None:
        """The store's row as the follower last read it (at most its interval old), or None."""
        return self._known.get(custom_key_store_id)

    def wake(self) -> None:
        """Follow the stored decisions now rather than at the next interval (after Connect/Disconnect)."""
        self._wake.set()

    # -- the follower --

    def start(self) -> None:
        """Follow the stored decisions in a daemon thread (call :meth:`sync` first to connect
        what is stored as connected before serving)."""
        self._thread = threading.Thread(target=self._follow, name="key-store-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following and close every custom store's connection (graceful stop)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._sync_lock:
            live, self._live = self._live, {}
            for store in live.values():
                store.close()

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception:  # a DB outage: keep the stores as they are, try again next interval
                log.warning("cannot read the custom key stores; keeping their connections as they are")

    def sync(self) -> None:
        """Open or close connections so this process matches the stored decisions."""
        with self._sync_lock:
            rows = {row.custom_key_store_id: row for row in self._records.list_all_custom_key_stores()}
            self._known = rows
            live = dict(self._live)
            for store_id in list(live):
                row = rows.get(store_id)
                if row is None or row.desired is DesiredConnection.DISCONNECTED:
                    store = live.pop(store_id)
                    self._live = dict(live)  # callers stop finding it before it closes
                    store.close()
                    log.info("custom key store %s disconnected in this process", store_id)
            for store_id, row in rows.items():
                if row.desired is DesiredConnection.CONNECTED and store_id not in live:
                    opened = self._try_connect(row)
                    if opened is not None:
                        live[store_id] = opened
            for store_id in list(self._attempts):
                row = rows.get(store_id)
                if row is None or row.desired is DesiredConnection.DISCONNECTED:
                    del self._attempts[store_id]
            self._live = live

    def _try_connect(self, row: CustomKeyStore) -> ConnectedKeyStore | None:
        store_id = row.custom_key_store_id
        attempt = self._attempts.get(store_id)
        now = time.monotonic()
        if attempt is not None and attempt.generation == row.generation and now < attempt.retry_at:
            return None
        try:
            opened, serial = self._connector.open(store_id, row.locator, pin_of(self._sealer, row))
        except KeyStoreConnectFailed as failure:
            self._note_failure(row, attempt, failure.code, failure.message)
            return None
        except errors.KMSError as exc:  # the PIN did not unseal: the default token is down, or the row is bad
            self._note_failure(row, attempt, ConnectionErrorCode.INTERNAL_ERROR, exc.message)
            return None
        if row.token_serial is not None and serial != row.token_serial:
            opened.close()
            self._note_failure(
                row,
                attempt,
                ConnectionErrorCode.TOKEN_NOT_FOUND,
                f"the token found has serial {serial}, not the store's {row.token_serial}",
            )
            return None
        first = row.token_serial is None and self._record_serial is not None
        if first and self._record_serial is not None and not self._record_serial(store_id, serial):
            opened.close()
            self._note_failure(
                row,
                attempt,
                ConnectionErrorCode.TOKEN_NOT_FOUND,
                f"the token found has serial {serial}, not the one the store first connected to",
            )
            return None
        self._attempts.pop(store_id, None)
        log.info("custom key store %s connected in this process (token serial %s)", store_id, serial)
        return opened

    def _note_failure(
        self, row: CustomKeyStore, attempt: _Attempt | None, code: ConnectionErrorCode, message: str
    ) -> None:
        """FAILED with the cause; retried later unless it is a credential error (no lockout)."""
        same = attempt is not None and attempt.generation == row.generation
        delay = (
            min(attempt.delay * 2, RETRY_MAX_DELAY_SECONDS) if same and attempt else RETRY_FIRST_DELAY_SECONDS
        )
        retry_at = float("inf") if code.stops_reconnecting else time.monotonic() + delay
        self._attempts[row.custom_key_store_id] = _Attempt(
            row.generation, ConnectionStatus(ConnectionState.FAILED, code, message), retry_at, delay
        )
        if not same:
            log.warning(
                "custom key store %s: connect failed: %s (%s)%s",
                row.custom_key_store_id,
                code.value,
                message,
                "; not retried until the store is disconnected and connected again"
                if code.stops_reconnecting
                else "; retrying with backoff",
            )
