"""Custom key stores as resources (issue 17) and CreateKey into them, with fakes.

The connection follower is played by the test: ``World.status`` is what "this
process sees" of each store's token, set by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from hsmstore.core.audit import capture
from hsmstore.core.audit.record import CallAudit
from hsmstore.core.key_stores.management import (
    CustomKeyStorePorts,
    CustomKeyStores,
    pin_of,
    record_token_serial,
)
from hsmstore.core.key_stores.model import (
    ConnectionErrorCode,
    ConnectionState,
    ConnectionStatus,
    CustomKeyStore,
    DesiredConnection,
    pin_seal_context,
)
from hsmstore.core.model import DEFAULT_KEY_STORE_ID, Caller, KeyState, Origin
from hsmstore.core.ports import SymmetricKeyStore
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import (
    AccessDeniedException,
    CustomKeyStoreHasCMKsException,
    CustomKeyStoreInvalidStateException,
    CustomKeyStoreNameInUseException,
    CustomKeyStoreNotFoundException,
    DependencyUnavailableException,
    IncorrectTrustAnchorException,
    InvalidMarkerException,
    KMSError,
    UnsupportedOperationException,
    ValidationException,
)
from tests.fakes.custom_key_stores import FakeLocatorChecks, FakeSecretSealer
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

ACME = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
GLOBEX = Caller("globex", "arn:hsmstore:iam::globex:role/admin")
ERIN = Caller("acme", "arn:hsmstore:iam::acme:user/erin", "user", "erin")  # no identity policy
PIN = "crypto-user-pin-1234"
CONNECTED = ConnectionStatus(ConnectionState.CONNECTED)


class FixedClock:
    def __init__(self) -> None:
        self.current = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current


class VaultsById:
    """``KeyStores`` over one fake token per key store id, made on first use."""

    def __init__(self) -> None:
        self.vaults: dict[str, FakeKeyVault] = {DEFAULT_KEY_STORE_ID: FakeKeyVault()}

    def key_store(self, key_store_id: str) -> SymmetricKeyStore:
        return self.vaults.setdefault(key_store_id, FakeKeyVault(key_store_id=key_store_id))

    def default(self) -> SymmetricKeyStore:
        return self.vaults[DEFAULT_KEY_STORE_ID]

    def all(self) -> Sequence[SymmetricKeyStore]:
        return list(self.vaults.values())


class World:
    def __init__(self) -> None:
        self.store = FakeMetadataStore()
        self.clock = FixedClock()
        self.vaults = VaultsById()
        self.sealer = FakeSecretSealer()
        self.status: dict[str, ConnectionStatus] = {}
        self.wakes = 0
        self.followed: dict[str, CustomKeyStore] = {}  # the follower's copies of rows
        ports = CustomKeyStorePorts(
            records=self.store,
            sealer=self.sealer,
            connector=FakeLocatorChecks(),
            status_of=lambda s: self.status.get(
                s.custom_key_store_id, ConnectionStatus(ConnectionState.DISCONNECTED)
            ),
            wake=self._wake,
            followed=self.followed.get,
        )
        self.service: UseCases = build_use_cases(
            self.vaults, self.store, self.clock, custom_key_store_ports=ports
        )
        assert self.service.custom_key_stores is not None
        self.stores: CustomKeyStores = self.service.custom_key_stores

    def _wake(self) -> None:
        self.wakes += 1

    def create(self, caller: Caller = ACME, name: str = "finance", **fields: str) -> str:
        arguments = {"module": "softhsm", "hsm_profile": "softhsm2", "token_label": "team-a", "pin": PIN}
        arguments.update(fields)
        return self.stores.create_custom_key_store(caller, name, **arguments)

    def connected(self, caller: Caller = ACME, name: str = "finance") -> str:
        """A store connected the way the follower would report it."""
        custom_key_store_id = self.create(caller, name)
        self.stores.connect_custom_key_store(caller, custom_key_store_id)
        self.status[custom_key_store_id] = CONNECTED
        return custom_key_store_id

    def row(self, custom_key_store_id: str) -> CustomKeyStore:
        store = self.store.get_custom_key_store(custom_key_store_id)
        assert store is not None
        return store

    def state(self, custom_key_store_id: str, caller: Caller = ACME) -> ConnectionState:
        [entry] = self.stores.describe_custom_key_stores(caller, custom_key_store_id).entries
        return entry.connection_state

    def allow(self, principal: str, *actions: str) -> None:
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
        }
        self.service.identity_policies.put_identity_policy(ACME, principal, "p", json.dumps(policy))


# -- CreateCustomKeyStore ----------------------------------------------------------


def test_a_new_store_is_disconnected_with_its_pin_only_sealed() -> None:
    world = World()
    custom_key_store_id = world.create()

    assert custom_key_store_id.startswith("cks-") and len(custom_key_store_id) == 21
    row = world.row(custom_key_store_id)
    assert row.desired is DesiredConnection.DISCONNECTED and row.tenant == "acme"
    assert PIN.encode() not in row.sealed_pin and PIN not in repr(row)
    assert world.sealer.unseal(row.sealed_pin, pin_seal_context(custom_key_store_id, "acme")) == PIN.encode()
    assert pin_of(world.sealer, row) == PIN
    assert world.state(custom_key_store_id) is ConnectionState.DISCONNECTED


def test_names_are_unique_within_a_tenant_only() -> None:
    world = World()
    world.create()
    with pytest.raises(CustomKeyStoreNameInUseException):
        world.create()
    world.create(GLOBEX)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("", {}),
        ("x" * 257, {}),
        ("tab\there", {}),
        ("finance", {"token_label": "", "token_serial": ""}),
        ("finance", {"token_label": "a", "token_serial": "b"}),
        ("finance", {"token_label": "é" * 17}),  # 34 bytes: over CK_TOKEN_INFO's 32
        ("finance", {"token_label": " padded"}),
        ("finance", {"token_label": "", "token_serial": "1" * 17}),
        ("finance", {"pin": "123"}),
        ("finance", {"pin": "p" * 256}),
        ("finance", {"pin": "pin\nwith-newline"}),
        ("finance", {"module": ""}),
        ("finance", {"module": "/usr/lib/softhsm/libsofthsm2.so"}),  # a path, not a configured name
        ("finance", {"hsm_profile": "nonesuch"}),
        ("finance", {"custom_key_store_type": "AWS_CLOUDHSM"}),
    ],
)
def test_create_refuses_invalid_fields_without_repeating_the_pin(name: str, fields: dict[str, str]) -> None:
    world = World()
    with pytest.raises(ValidationException) as refused:
        world.create(name=name, **fields)
    assert PIN not in refused.value.message and fields.get("pin", PIN) not in refused.value.message
    assert world.store.list_all_custom_key_stores() == []


def test_the_type_may_be_given_but_the_profile_may_not_be_left_out() -> None:
    """The real connector (hsm/connector.py) knows no default profile for a module, so an
    empty HsmProfile is refused here rather than stored and refused at every Connect."""
    world = World()
    custom_key_store_id = world.create(custom_key_store_type="PKCS11")
    assert world.row(custom_key_store_id).locator.hsm_profile == "softhsm2"
    with pytest.raises(ValidationException, match="HsmProfile"):
        world.create(name="no-profile", hsm_profile="")


def test_a_token_may_be_named_by_serial() -> None:
    world = World()
    custom_key_store_id = world.create(token_label="", token_serial="9f3a11c2")
    [entry] = world.stores.describe_custom_key_stores(ACME, custom_key_store_id).entries
    assert (entry.token_label, entry.token_serial) == (None, "9f3a11c2")


def test_every_operation_needs_its_identity_policy_action() -> None:
    world = World()
    custom_key_store_id = world.create()
    stores = world.stores
    calls = {
        "kms:CreateCustomKeyStore": lambda: world.create(ERIN, "erin's"),
        "kms:DescribeCustomKeyStores": lambda: stores.describe_custom_key_stores(ERIN),
        "kms:ConnectCustomKeyStore": lambda: stores.connect_custom_key_store(ERIN, custom_key_store_id),
        "kms:DisconnectCustomKeyStore": lambda: stores.disconnect_custom_key_store(ERIN, custom_key_store_id),
        "kms:UpdateCustomKeyStore": lambda: stores.update_custom_key_store(
            ERIN, custom_key_store_id, new_name="n"
        ),
        "kms:DeleteCustomKeyStore": lambda: stores.delete_custom_key_store(ERIN, custom_key_store_id),
    }
    for action, call in calls.items():
        with pytest.raises(AccessDeniedException, match=action):
            call()
    world.allow(ERIN.principal, "kms:DescribeCustomKeyStores", "kms:ConnectCustomKeyStore")
    assert [e.custom_key_store_id for e in stores.describe_custom_key_stores(ERIN).entries] == [
        custom_key_store_id
    ]
    stores.connect_custom_key_store(ERIN, custom_key_store_id)
    with pytest.raises(AccessDeniedException):
        stores.delete_custom_key_store(ERIN, custom_key_store_id)
    assert world.row(custom_key_store_id).desired is DesiredConnection.CONNECTED


def test_the_change_commits_its_audit_record_and_the_record_holds_no_pin() -> None:
    world = World()
    call = CallAudit("CreateCustomKeyStore", ACME, {"customKeyStoreName": "finance"}, world.clock.now())
    with capture.begin_call(call):
        custom_key_store_id = world.create()
    assert call.recorded
    [event] = list(world.store.iter_audit_events())
    assert event.event_name == "CreateCustomKeyStore"
    assert PIN not in json.dumps(event.record)
    sealed = world.row(custom_key_store_id).sealed_pin
    assert sealed.hex() not in json.dumps(event.record)


# -- DescribeCustomKeyStores ---------------------------------------------------------


def test_describe_by_id_by_name_and_paged() -> None:
    world = World()
    ids = [world.create(name=f"store-{n}") for n in range(5)]
    world.create(GLOBEX, "store-0")

    [by_name] = world.stores.describe_custom_key_stores(ACME, custom_key_store_name="store-3").entries
    assert by_name.custom_key_store_id == ids[3] and by_name.custom_key_store_type == "PKCS11"
    assert by_name.module == "softhsm" and by_name.token_label == "team-a"
    assert by_name.creation_date == world.clock.now()
    first = world.stores.describe_custom_key_stores(ACME, limit=2)
    assert first.truncated and len(first.entries) == 2
    rest = world.stores.describe_custom_key_stores(ACME, limit=10, marker=first.next_marker)
    assert not rest.truncated and rest.next_marker == ""
    assert [e.custom_key_store_id for e in [*first.entries, *rest.entries]] == sorted(ids)


def test_another_tenants_store_is_not_found_by_any_operation() -> None:
    world = World()
    theirs = world.create(GLOBEX)
    stores = world.stores
    for call in (
        lambda: stores.describe_custom_key_stores(ACME, theirs),
        lambda: stores.describe_custom_key_stores(ACME, custom_key_store_name="finance"),
        lambda: stores.connect_custom_key_store(ACME, theirs),
        lambda: stores.disconnect_custom_key_store(ACME, theirs),
        lambda: stores.update_custom_key_store(ACME, theirs, new_name="mine"),
        lambda: stores.delete_custom_key_store(ACME, theirs),
        lambda: stores.describe_custom_key_stores(ACME, "cks-ffffffffffffffff0"),
        lambda: stores.describe_custom_key_stores(ACME, "not-an-id"),
    ):
        with pytest.raises(CustomKeyStoreNotFoundException):
            call()
    assert world.row(theirs).name == "finance" and world.row(theirs).generation == 1
    assert world.stores.describe_custom_key_stores(ACME).entries == []


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"custom_key_store_id": "cks-ffffffffffffffff0", "custom_key_store_name": "x"}, ValidationException),
        ({"limit": 0}, ValidationException),
        ({"limit": 1001}, ValidationException),
        ({"custom_key_store_id": "c" * 65}, ValidationException),
        ({"marker": "not-a-marker"}, InvalidMarkerException),
    ],
)
def test_describe_refuses_bad_arguments(arguments: dict[str, object], error: type[KMSError]) -> None:
    with pytest.raises(error):
        World().stores.describe_custom_key_stores(ACME, **arguments)  # type: ignore[arg-type]


def test_describe_joins_the_decision_with_this_process_s_view() -> None:
    world = World()
    custom_key_store_id = world.create()
    world.status[custom_key_store_id] = CONNECTED  # a decision not yet followed elsewhere
    assert world.state(custom_key_store_id) is ConnectionState.DISCONNECTED

    world.stores.connect_custom_key_store(ACME, custom_key_store_id)
    del world.status[custom_key_store_id]
    assert world.state(custom_key_store_id) is ConnectionState.CONNECTING
    world.status[custom_key_store_id] = ConnectionStatus(
        ConnectionState.CONNECTING, ConnectionErrorCode.NETWORK_ERRORS, "token stopped answering"
    )
    [entry] = world.stores.describe_custom_key_stores(ACME, custom_key_store_id).entries
    assert (entry.connection_state, entry.connection_error_code) == (
        ConnectionState.CONNECTING,
        ConnectionErrorCode.NETWORK_ERRORS,
    )
    world.status[custom_key_store_id] = ConnectionStatus(
        ConnectionState.FAILED, ConnectionErrorCode.INVALID_CREDENTIALS
    )
    [entry] = world.stores.describe_custom_key_stores(ACME, custom_key_store_id).entries
    assert (entry.connection_state, entry.connection_error_code) == (
        ConnectionState.FAILED,
        ConnectionErrorCode.INVALID_CREDENTIALS,
    )


# -- Connect / Disconnect ------------------------------------------------------------


def test_connect_stores_the_decision_wakes_the_follower_and_is_idempotent() -> None:
    world = World()
    custom_key_store_id = world.create()
    world.stores.connect_custom_key_store(ACME, custom_key_store_id)
    assert world.row(custom_key_store_id).desired is DesiredConnection.CONNECTED
    assert world.row(custom_key_store_id).generation == 2 and world.wakes == 1

    world.stores.connect_custom_key_store(ACME, custom_key_store_id)  # CONNECTING: succeeds
    world.status[custom_key_store_id] = CONNECTED
    world.stores.connect_custom_key_store(ACME, custom_key_store_id)  # CONNECTED: succeeds
    assert world.row(custom_key_store_id).generation == 2


@pytest.mark.parametrize("live", [ConnectionState.FAILED, ConnectionState.DISCONNECTING])
def test_connect_is_refused_while_failed_or_disconnecting(live: ConnectionState) -> None:
    world = World()
    custom_key_store_id = world.connected()
    if live is ConnectionState.DISCONNECTING:
        world.stores.disconnect_custom_key_store(ACME, custom_key_store_id)
    world.status[custom_key_store_id] = ConnectionStatus(live, ConnectionErrorCode.INVALID_CREDENTIALS)
    with pytest.raises(CustomKeyStoreInvalidStateException, match=live.value):
        world.stores.connect_custom_key_store(ACME, custom_key_store_id)


def test_a_failed_store_is_disconnected_then_connected_again() -> None:
    world = World()
    custom_key_store_id = world.connected()
    world.status[custom_key_store_id] = ConnectionStatus(
        ConnectionState.FAILED, ConnectionErrorCode.INVALID_CREDENTIALS
    )
    world.stores.disconnect_custom_key_store(ACME, custom_key_store_id)
    world.status.pop(custom_key_store_id)
    world.stores.update_custom_key_store(ACME, custom_key_store_id, pin="the-right-pin")
    world.stores.connect_custom_key_store(ACME, custom_key_store_id)
    row = world.row(custom_key_store_id)
    assert row.desired is DesiredConnection.CONNECTED and pin_of(world.sealer, row) == "the-right-pin"


def test_disconnect_is_refused_when_already_disconnected() -> None:
    world = World()
    custom_key_store_id = world.connected()
    wakes = world.wakes
    world.stores.disconnect_custom_key_store(ACME, custom_key_store_id)
    assert (
        world.row(custom_key_store_id).desired is DesiredConnection.DISCONNECTED and world.wakes == wakes + 1
    )
    with pytest.raises(CustomKeyStoreInvalidStateException):
        world.stores.disconnect_custom_key_store(ACME, custom_key_store_id)


# -- UpdateCustomKeyStore ------------------------------------------------------------


def test_update_only_while_disconnected() -> None:
    world = World()
    custom_key_store_id = world.connected()
    with pytest.raises(CustomKeyStoreInvalidStateException, match="DisconnectCustomKeyStore"):
        world.stores.update_custom_key_store(ACME, custom_key_store_id, new_name="renamed")
    del world.status[custom_key_store_id]  # decided CONNECTED, not yet followed: CONNECTING
    with pytest.raises(CustomKeyStoreInvalidStateException):
        world.stores.update_custom_key_store(ACME, custom_key_store_id, new_name="renamed")
    assert world.row(custom_key_store_id).name == "finance"


def test_update_renames_reseals_and_renames_the_token() -> None:
    world = World()
    custom_key_store_id = world.create()
    before = world.row(custom_key_store_id)
    world.stores.update_custom_key_store(
        ACME,
        custom_key_store_id,
        new_name="renamed",
        pin="new-pin-5678",
        token_serial="77aa",
        hsm_profile="cloudhsm",
    )
    after = world.row(custom_key_store_id)
    assert after.name == "renamed" and after.generation == before.generation + 1
    assert after.locator.token_serial == "77aa" and after.locator.token_label is None
    assert after.locator.module == "softhsm" and after.locator.hsm_profile == "cloudhsm"
    assert pin_of(world.sealer, after) == "new-pin-5678" and b"new-pin-5678" not in after.sealed_pin
    assert after.creation_date == before.creation_date


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, ValidationException),
        ({"token_label": "a", "token_serial": "b"}, ValidationException),
        ({"module": "unconfigured"}, ValidationException),
        ({"pin": "123"}, ValidationException),
        ({"new_name": "x" * 257}, ValidationException),
        ({"new_name": "taken"}, CustomKeyStoreNameInUseException),
    ],
)
def test_update_refusals(fields: dict[str, str], error: type[KMSError]) -> None:
    world = World()
    world.create(name="taken")
    custom_key_store_id = world.create()
    with pytest.raises(error):
        world.stores.update_custom_key_store(ACME, custom_key_store_id, **fields)
    assert world.row(custom_key_store_id).generation == 1


def test_update_naming_another_tokens_serial_is_an_incorrect_trust_anchor() -> None:
    world = World()
    custom_key_store_id = world.create()
    assert record_token_serial(world.store, custom_key_store_id, "9f3a11")
    with pytest.raises(IncorrectTrustAnchorException):
        world.stores.update_custom_key_store(ACME, custom_key_store_id, token_serial="0000aa")
    world.stores.update_custom_key_store(ACME, custom_key_store_id, token_serial="9f3a11")
    world.stores.update_custom_key_store(ACME, custom_key_store_id, token_label="renamed-label")
    assert world.row(custom_key_store_id).locator.token_label == "renamed-label"


def test_the_first_serial_seen_is_kept_and_another_is_refused() -> None:
    world = World()
    custom_key_store_id = world.create()
    assert record_token_serial(world.store, custom_key_store_id, "9f3a11")
    assert record_token_serial(world.store, custom_key_store_id, "9f3a11")
    assert not record_token_serial(world.store, custom_key_store_id, "other")
    assert world.row(custom_key_store_id).token_serial == "9f3a11"
    assert not record_token_serial(world.store, "cks-ffffffffffffffff0", "9f3a11")
    [entry] = world.stores.describe_custom_key_stores(ACME, custom_key_store_id).entries
    assert entry.connected_token_serial == "9f3a11"


# -- DeleteCustomKeyStore ------------------------------------------------------------


def test_delete_only_disconnected_and_without_keys() -> None:
    world = World()
    custom_key_store_id = world.connected()
    key = world.service.creation.create_key(ACME, custom_key_store_id=custom_key_store_id).key
    with pytest.raises(CustomKeyStoreInvalidStateException):
        world.stores.delete_custom_key_store(ACME, custom_key_store_id)

    world.stores.disconnect_custom_key_store(ACME, custom_key_store_id)
    del world.status[custom_key_store_id]
    with pytest.raises(CustomKeyStoreHasCMKsException):
        world.stores.delete_custom_key_store(ACME, custom_key_store_id)
    world.service.deletion.schedule_key_deletion(ACME, key.key_id, 7)
    with pytest.raises(CustomKeyStoreHasCMKsException):  # pending deletion still counts
        world.stores.delete_custom_key_store(ACME, custom_key_store_id)

    world.store.delete_key(key.key_id)  # what the reaper does once the window has passed
    world.stores.delete_custom_key_store(ACME, custom_key_store_id)
    assert world.store.get_custom_key_store(custom_key_store_id) is None
    with pytest.raises(CustomKeyStoreNotFoundException):
        world.stores.delete_custom_key_store(ACME, custom_key_store_id)


# -- CreateKey in a custom key store ---------------------------------------------------


def test_create_key_puts_the_material_on_the_store_s_token_and_rotations_follow() -> None:
    world = World()
    custom_key_store_id = world.connected()
    key = world.service.creation.create_key(ACME, custom_key_store_id=custom_key_store_id).key

    assert (key.key_store_id, key.origin) == (custom_key_store_id, Origin.PKCS11)
    described = world.service.keys.describe_key(ACME, key.key_id).key
    assert (described.key_store_id, described.origin) == (custom_key_store_id, Origin.PKCS11)
    custom, default = world.vaults.vaults[custom_key_store_id], world.vaults.vaults[DEFAULT_KEY_STORE_ID]
    world.service.rotation.rotate_key_on_demand(ACME, key.key_id)
    versions = world.store.list_versions(key.key_id)
    assert [v.key_store_id for v in versions] == [custom_key_store_id] * 2
    assert all(custom.key_exists(v.material) for v in versions)
    assert default.object_count() == 0
    blob = world.service.crypto.encrypt(ACME, key.key_id, b"secret", {}).ciphertext_blob
    assert world.service.crypto.decrypt(ACME, blob, {}).plaintext == b"secret"


def test_a_default_key_is_unchanged() -> None:
    key = World().service.creation.create_key(ACME).key
    assert (key.key_store_id, key.origin) == (DEFAULT_KEY_STORE_ID, Origin.AWS_KMS)


@pytest.mark.parametrize(
    "live",
    [
        None,  # decided DISCONNECTED
        ConnectionStatus(ConnectionState.CONNECTING),
        ConnectionStatus(ConnectionState.FAILED, ConnectionErrorCode.INVALID_CREDENTIALS),
        ConnectionStatus(ConnectionState.CONNECTING, ConnectionErrorCode.NETWORK_ERRORS),
    ],
)
def test_create_key_needs_a_connected_store(live: ConnectionStatus | None) -> None:
    world = World()
    if live is None:
        custom_key_store_id = world.create()
    else:
        custom_key_store_id = world.connected()
        world.status[custom_key_store_id] = live
    with pytest.raises(CustomKeyStoreInvalidStateException, match="not CONNECTED"):
        world.service.creation.create_key(ACME, custom_key_store_id=custom_key_store_id)
    assert world.store.count_keys_in_key_store(custom_key_store_id) == 0


def test_create_key_in_another_tenants_or_no_store_is_not_found() -> None:
    world = World()
    theirs = world.connected(GLOBEX)
    for custom_key_store_id in (theirs, "cks-ffffffffffffffff0", "nonsense"):
        with pytest.raises(CustomKeyStoreNotFoundException):
            world.service.creation.create_key(ACME, custom_key_store_id=custom_key_store_id)
    assert world.store.count_keys_in_key_store(theirs) == 0


def test_create_key_origin_must_match_the_key_store() -> None:
    world = World()
    custom_key_store_id = world.connected()
    with pytest.raises(ValidationException, match="PKCS11"):
        world.service.creation.create_key(ACME, origin="AWS_KMS", custom_key_store_id=custom_key_store_id)
    with pytest.raises(ValidationException, match="CustomKeyStoreId"):
        world.service.creation.create_key(ACME, origin="PKCS11")
    key = world.service.creation.create_key(
        ACME, origin="PKCS11", custom_key_store_id=custom_key_store_id
    ).key
    assert key.origin is Origin.PKCS11


def test_create_key_in_a_custom_store_on_a_server_without_them_is_unsupported() -> None:
    store, clock = FakeMetadataStore(), FixedClock()
    service = build_use_cases(VaultsById(), store, clock)
    assert service.custom_key_stores is None
    with pytest.raises(UnsupportedOperationException):
        service.creation.create_key(ACME, custom_key_store_id="cks-0123456789abcdef0")


def test_an_interrupted_create_key_rolls_back_on_the_custom_token() -> None:
    world = World()
    custom_key_store_id = world.connected()
    key = world.service.creation.create_key(ACME, custom_key_store_id=custom_key_store_id).key
    [version] = world.store.list_versions(key.key_id)
    assert world.store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.CREATING)  # as if it crashed
    world.clock.current += timedelta(seconds=61)

    assert world.service.recovery.recover_interrupted_work(timedelta(seconds=60)) == 1

    assert world.store.get_key(key.key_id) is None
    assert not world.vaults.vaults[custom_key_store_id].key_exists(version.material)
    assert world.store.count_keys_in_key_store(custom_key_store_id) == 0


# -- GenerateRandom with CustomKeyStoreId ----------------------------------------------


def test_generate_random_in_a_custom_store_draws_from_that_store_s_token() -> None:
    """AWS: GenerateRandom with CustomKeyStoreId "generates the random byte string in the
    [HSM] associated with the specified ... key store"."""
    world = World()
    custom_key_store_id = world.connected()
    drawn: list[int] = []
    vault = world.vaults.vaults.setdefault(
        custom_key_store_id, FakeKeyVault(key_store_id=custom_key_store_id)
    )
    original = vault.generate_random

    def counted(number_of_bytes: int) -> bytes:
        drawn.append(number_of_bytes)
        return original(number_of_bytes)

    vault.generate_random = counted  # type: ignore[method-assign]
    assert len(world.service.crypto.generate_random(ACME, 24, custom_key_store_id)) == 24
    assert drawn == [24]


def test_generate_random_in_a_store_that_is_not_connected_or_not_the_tenant_s_is_refused() -> None:
    world = World()
    disconnected = world.create()
    with pytest.raises(CustomKeyStoreInvalidStateException):
        world.service.crypto.generate_random(ACME, 8, disconnected)
    theirs = world.connected(GLOBEX)
    with pytest.raises(CustomKeyStoreNotFoundException):
        world.service.crypto.generate_random(ACME, 8, theirs)


def test_generate_random_in_a_store_whose_token_is_down_goes_to_the_token_for_the_retryable_error() -> None:
    """Issue 17: during an outage the store's calls answer the contract's retryable error
    (the token's DependencyUnavailableException), not CustomKeyStoreInvalidStateException."""
    world = World()
    custom_key_store_id = world.connected()
    world.status[custom_key_store_id] = ConnectionStatus(
        ConnectionState.CONNECTING, ConnectionErrorCode.NETWORK_ERRORS, "the token does not answer"
    )
    vault = world.vaults.vaults.setdefault(
        custom_key_store_id, FakeKeyVault(key_store_id=custom_key_store_id)
    )

    def token_down(number_of_bytes: int) -> bytes:
        raise DependencyUnavailableException("the HSM token does not answer")

    vault.generate_random = token_down  # type: ignore[method-assign]
    with pytest.raises(DependencyUnavailableException):
        world.service.crypto.generate_random(ACME, 8, custom_key_store_id)


def test_generate_random_in_a_store_the_follower_knows_reads_no_custom_key_store_row() -> None:
    """A cryptographic call: the follower's copy of the row (at most 0.5 s old) decides,
    not a DB read per call; another tenant's store is still not found."""
    world = World()
    custom_key_store_id = world.connected()
    world.followed[custom_key_store_id] = world.row(custom_key_store_id)
    reads: list[str] = []
    read = world.store.get_custom_key_store

    def counted(store_id: str) -> CustomKeyStore | None:
        reads.append(store_id)
        return read(store_id)

    world.store.get_custom_key_store = counted  # type: ignore[method-assign]
    assert len(world.service.crypto.generate_random(ACME, 8, custom_key_store_id)) == 8
    assert reads == []
    with pytest.raises(CustomKeyStoreNotFoundException):
        world.service.crypto.generate_random(GLOBEX, 8, custom_key_store_id)
