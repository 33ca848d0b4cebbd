"""``KeyStoreDirectory``: this process follows the stored connect decisions of custom key stores.

Issue 17: Connect/Disconnect are stored; every process follows within 1 s; a
key in a store that is not connected answers KMSInvalidStateException; a
credential error is never retried (no lockout); other failures are retried.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from hsmstore import errors
from hsmstore.core.key_stores.directory import KeyStoreDirectory
from hsmstore.core.key_stores.model import (
    ConnectionErrorCode,
    ConnectionState,
    ConnectionStatus,
    CustomKeyStore,
    DesiredConnection,
    TokenLocator,
    pin_seal_context,
)
from hsmstore.core.model import DEFAULT_KEY_STORE_ID
from hsmstore.core.ports.key_store import KeyStoreConnectFailed

STORE_ID = "cks-0123456789abcdef0"


class FakeStore:
    def __init__(self, key_store_id: str) -> None:
        self.key_store_id = key_store_id
        self.closed = False
        self.status = ConnectionStatus(ConnectionState.CONNECTED)

    def connection_status(self) -> ConnectionStatus:
        return self.status

    def close(self) -> None:
        self.closed = True

    def ping(self) -> None:
        pass


class FakeRecords:
    def __init__(self) -> None:
        self.rows: dict[str, CustomKeyStore] = {}

    def list_all_custom_key_stores(self) -> Sequence[CustomKeyStore]:
        return list(self.rows.values())


class FakeSealer:
    def seal(self, secret: bytes, context: bytes) -> bytes:
        return context + b"|" + secret

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        prefix = context + b"|"
        if not sealed.startswith(prefix):
            raise errors.KMSInternalException("does not verify")
        return sealed[len(prefix) :]


class FakeConnector:
    def __init__(self) -> None:
        self.opened: list[tuple[str, str]] = []
        self.fail_with: ConnectionErrorCode | None = None
        self.serial = "serial-1"
        self.stores: list[FakeStore] = []

    def check_locator(self, locator: TokenLocator) -> None:
        pass

    def open(self, key_store_id: str, locator: TokenLocator, pin: str) -> tuple[FakeStore, str]:
        self.opened.append((key_store_id, pin))
        if self.fail_with is not None:
            raise KeyStoreConnectFailed(self.fail_with, "refused")
        store = FakeStore(key_store_id)
        self.stores.append(store)
        return store, self.serial


def a_store(desired: DesiredConnection, generation: int = 1) -> CustomKeyStore:
    return CustomKeyStore(
        custom_key_store_id=STORE_ID,
        tenant="t1",
        name="mine",
        locator=TokenLocator(module="softhsm2", hsm_profile="softhsm2", token_label="A"),
        sealed_pin=FakeSealer().seal(b"1234", pin_seal_context(STORE_ID, "t1")),
        desired=desired,
        creation_date=datetime(2026, 12, 6, tzinfo=UTC),
        generation=generation,
    )


@pytest.fixture
def parts() -> tuple[KeyStoreDirectory, FakeRecords, FakeConnector, list[tuple[str, str]]]:
    records, connector = FakeRecords(), FakeConnector()
    seen: list[tuple[str, str]] = []
    directory = KeyStoreDirectory(
        FakeStore(DEFAULT_KEY_STORE_ID),  # type: ignore[arg-type]
        records,  # type: ignore[arg-type]
        connector,  # type: ignore[arg-type]
        FakeSealer(),
        record_serial=lambda store_id, serial: seen.append((store_id, serial)) is None,
    )
    return directory, records, connector, seen


def test_connected_decision_opens_the_store_with_the_unsealed_pin(parts) -> None:  # type: ignore[no-untyped-def]
    directory, records, connector, seen = parts
    records.rows[STORE_ID] = a_store(DesiredConnection.CONNECTED)
    directory.sync()
    assert connector.opened == [(STORE_ID, "1234")]
    assert directory.key_store(STORE_ID) is connector.stores[0]
    assert directory.status_of(records.rows[STORE_ID]).state is ConnectionState.CONNECTED
    assert seen == [(STORE_ID, "serial-1")]


def test_disconnect_decision_closes_the_store_and_its_keys_answer_invalid_state(parts) -> None:  # type: ignore[no-untyped-def]
    directory, records, connector, _ = parts
    records.rows[STORE_ID] = a_store(DesiredConnection.CONNECTED)
    directory.sync()
    records.rows[STORE_ID] = a_store(DesiredConnection.DISCONNECTED, generation=2)
    directory.sync()
    assert connector.stores[0].closed
    with pytest.raises(errors.KMSInvalidStateException, match="DISCONNECTED"):
        directory.key_store(STORE_ID)
    assert directory.status_of(records.rows[STORE_ID]).state is ConnectionState.DISCONNECTED


def test_default_store_is_always_found_and_unknown_ids_are_internal_errors(parts) -> None:  # type: ignore[no-untyped-def]
    directory, _, _, _ = parts
    assert directory.key_store(DEFAULT_KEY_STORE_ID) is directory.default()
    with pytest.raises(errors.KMSInternalException):
        directory.key_store("cks-ffffffffffffffff0")


def test_wrong_pin_is_failed_invalid_credentials_and_never_retried(parts) -> None:  # type: ignore[no-untyped-def]
    directory, records, connector, _ = parts
    connector.fail_with = ConnectionErrorCode.INVALID_CREDENTIALS
    records.rows[STORE_ID] = a_store(DesiredConnection.CONNECTED)
    for _ in range(5):
        directory.sync()
    assert len(connector.opened) == 1
    status = directory.status_of(records.rows[STORE_ID])
    assert (status.state, status.error_code) == (
        ConnectionState.FAILED,
        ConnectionErrorCode.INVALID_CREDENTIALS,
    )


def test_a_changed_row_is_tried_again_after_a_credential_error(parts) -> None:  # type: ignore[no-untyped-def]
    directory, records, connector, _ = parts
    connector.fail_with = ConnectionErrorCode.INVALID_CREDENTIALS
    records.rows[STORE_ID] = a_store(DesiredConnection.CONNECTED)
    directory.sync()
    connector.fail_with = None
    records.rows[STORE_ID] = a_store(DesiredConnection.CONNECTED, generation=3)
    directory.sync()
    assert len(connector.opened) == 2
    assert directory.status_of(records.rows[STORE_ID]).state is ConnectionState.CONNECTED


def test_unreachable_token_at_connect_is_retried_with_backoff(parts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    directory, records, connector, _ = parts
    connector.fail_with = ConnectionErrorCode.NETWORK_ERRORS
    records.rows[STORE_ID] = a_store(DesiredConnection.CONNECTED)
    directory.sync()
    directory.sync()  # within the backoff: not tried again
    assert len(connector.opened) == 1
    monkeypatch.setattr("hsmstore.core.key_stores.directory.time.monotonic", lambda: 10**9)
    connector.fail_with = None
    directory.sync()
    assert len(connector.opened) == 2
    assert directory.key_store(STORE_ID) is connector.stores[0]


def test_a_token_with_another_serial_is_refused(parts) -> None:  # type: ignore[no-untyped-def]
    directory, records, connector, _ = parts
    records.rows[STORE_ID] = replace(a_store(DesiredConnection.CONNECTED), token_serial="serial-0")
    directory.sync()
    assert connector.stores[0].closed
    status = directory.status_of(records.rows[STORE_ID])
    assert (status.state, status.error_code) == (ConnectionState.FAILED, ConnectionErrorCode.TOKEN_NOT_FOUND)


def test_a_deleted_row_closes_the_store(parts) -> None:  # type: ignore[no-untyped-def]
    directory, records, connector, _ = parts
    records.rows[STORE_ID] = a_store(DesiredConnection.CONNECTED)
    directory.sync()
    del records.rows[STORE_ID]
    directory.sync()
    assert connector.stores[0].closed
    assert list(directory.all()) == [directory.default()]


def test_the_follower_thread_applies_a_decision_after_wake(parts) -> None:  # type: ignore[no-untyped-def]
    directory, records, connector, _ = parts
    directory.start()
    try:
        row = records.rows[STORE_ID] = a_store(DesiredConnection.CONNECTED)
        directory.wake()
        deadline = time.monotonic() + 5  # only the follower thread syncs here, never this one
        while directory.status_of(row).state is not ConnectionState.CONNECTED:
            assert time.monotonic() < deadline, "the follower did not connect the store"
            time.sleep(0.02)
        assert directory.key_store(STORE_ID) is connector.stores[0]
    finally:
        directory.close()
    assert connector.stores[0].closed
