"""CreateKey and rotation in the ``wrapped`` residency (issue 18) with fakes: which versions are
wrapped, that nothing stays on the token, and that every interruption rolls back to a usable key
or no key."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding, aes_key_wrap_with_padding

from hsmstore import errors
from hsmstore.core.keys.residency import VersionResidency, discard_material
from hsmstore.core.model import (
    DEFAULT_KEY_STORE_ID,
    Caller,
    DomainKey,
    DomainKeyState,
    KeyMaterialRef,
    KeyState,
    KeyVersion,
    Residency,
    VersionState,
    WrappedMaterial,
    new_token_id,
)
from hsmstore.core.ports.wrapped_keys import WrappedKeys
from hsmstore.core.use_cases import UseCases, build_use_cases
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import IV_BYTES, FakeKeyVault

ALICE = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
MECHANISM = "AES_KEY_WRAP_PAD"
GRACE = timedelta(seconds=60)


class Clock:
    def __init__(self) -> None:
        self.current = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current


class FakeWrappingVault(FakeKeyVault):
    """The fake token with domain keys (RFC 5649 through ``cryptography``): a wrapped version's
    material exists only inside a blob, unwrapped for each use; nothing per version is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.domain_keys: dict[str, bytes] = {}
        self.released: list[bytes] = []
        self.destroyed: list[KeyMaterialRef] = []
        self.fail_wrap = False

    @property
    def wrap_mechanism(self) -> str:
        return MECHANISM

    def create_domain_key(self, domain_key_id: str) -> None:
        self.domain_keys.setdefault(domain_key_id, os.urandom(32))

    def destroy_domain_key(self, domain_key_id: str) -> bool:
        return self.domain_keys.pop(domain_key_id, None) is not None

    def domain_key_exists(self, domain_key_id: str) -> bool:
        return domain_key_id in self.domain_keys

    def create_wrapped_key(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        if self.fail_wrap:
            raise errors.KMSInternalException("the token failed to wrap")
        blob = aes_key_wrap_with_padding(self.domain_keys[domain_key_id], os.urandom(32))
        return WrappedMaterial(domain_key_id, MECHANISM, blob)

    def rewrap(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        raw = self._unwrap(material)
        return WrappedMaterial(
            domain_key_id, MECHANISM, aes_key_wrap_with_padding(self.domain_keys[domain_key_id], raw)
        )

    def release(self, token_ids: Collection[bytes]) -> None:
        self.released.extend(token_ids)

    def release_domain_key(self, domain_key_id: str) -> None:
        """Nothing is cached here."""

    def cached_material_count(self) -> int:
        return 0

    def encrypt(self, material: KeyMaterialRef, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        if material.residency is not Residency.WRAPPED:
            return super().encrypt(material, plaintext, aad)
        iv = os.urandom(IV_BYTES)
        return iv, AESGCM(self._unwrap(material)).encrypt(iv, plaintext, aad)

    def decrypt(self, material: KeyMaterialRef, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if material.residency is not Residency.WRAPPED:
            return super().decrypt(material, iv, ciphertext, aad)
        try:
            return AESGCM(self._unwrap(material)).decrypt(iv, ciphertext, aad)
        except InvalidTag:
            raise errors.CiphertextAuthenticationFailed("ciphertext did not authenticate") from None

    def destroy_key(self, material: KeyMaterialRef) -> bool:
        self.destroyed.append(material)
        return super().destroy_key(material)

    def _unwrap(self, material: KeyMaterialRef) -> bytes:
        assert material.wrapped is not None, "a wrapped version is used only once its blob is stored"
        return aes_key_unwrap_with_padding(
            self.domain_keys[material.wrapped.domain_key_id], material.wrapped.blob
        )


class DomainKeys:
    """One ACTIVE domain key per key store, as the domain key service keeps it."""

    def __init__(self, store: FakeMetadataStore, vault: FakeWrappingVault, clock: Clock) -> None:
        self.active = os.urandom(16).hex()
        store.insert_domain_key(
            DomainKey(self.active, DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, clock.now())
        )
        vault.create_domain_key(self.active)
        assert store.activate_domain_key(self.active, clock.now(), replacing=None)

    def active_domain_key_id(self, key_store_id: str) -> str:
        assert key_store_id == DEFAULT_KEY_STORE_ID
        return self.active


class Setup:
    def __init__(self, failpoint: str = "") -> None:
        def crash(name: str) -> None:
            if name == failpoint:
                raise SystemExit(f"simulated interruption at {name}")

        self.store, self.vault, self.clock = FakeMetadataStore(), FakeWrappingVault(), Clock()
        self.domain_keys = DomainKeys(self.store, self.vault, self.clock)
        self.service: UseCases = build_use_cases(
            TokenKeyStores([self.vault]),
            self.store,
            self.clock,
            failpoint=crash,
            key_residency=Residency.WRAPPED,
            domain_keys=self.domain_keys,
        )

    def versions(self, key_id: str) -> list[KeyVersion]:
        return list(self.store.list_versions(key_id))


def round_trip(service: UseCases, key_id: str) -> bytes:
    blob = service.crypto.encrypt(ALICE, key_id, b"secret", {"a": "1"}).ciphertext_blob
    assert service.crypto.decrypt(ALICE, blob, {"a": "1"}).plaintext == b"secret"
    return blob


def test_a_new_aes_key_is_wrapped_and_leaves_nothing_on_the_token() -> None:
    setup = Setup()
    key = setup.service.creation.create_key(ALICE).key
    [version] = setup.versions(key.key_id)
    assert version.state is VersionState.ACTIVE and version.residency is Residency.WRAPPED
    assert version.wrapped is not None
    assert version.wrapped.domain_key_id == setup.domain_keys.active
    assert version.wrapped.mechanism == MECHANISM
    assert setup.vault.object_count() == 0
    round_trip(setup.service, key.key_id)


def test_a_rotation_wraps_the_new_version_and_the_old_one_still_decrypts() -> None:
    setup = Setup()
    key = setup.service.creation.create_key(ALICE).key
    old = round_trip(setup.service, key.key_id)
    setup.service.rotation.rotate_key_on_demand(ALICE, key.key_id)
    first, second = setup.versions(key.key_id)
    assert second.residency is Residency.WRAPPED and second.wrapped is not None
    assert first.wrapped != second.wrapped
    assert setup.service.crypto.decrypt(ALICE, old, {"a": "1"}).plaintext == b"secret"
    assert setup.vault.object_count() == 0


@pytest.mark.parametrize(
    ("arguments", "why"),
    [
        ({"key_spec": "RSA_2048", "key_usage": "ENCRYPT_DECRYPT"}, "a key pair"),
        ({"key_spec": "HMAC_256", "key_usage": "GENERATE_VERIFY_MAC"}, "an HMAC key"),
        ({"origin": "EXTERNAL"}, "imported material"),
    ],
)
def test_keys_other_than_aes_with_kms_origin_stay_token_objects(arguments: dict[str, str], why: str) -> None:
    setup = Setup()
    key = setup.service.creation.create_key(
        ALICE,
        key_spec=arguments.get("key_spec", ""),
        key_usage=arguments.get("key_usage", ""),
        origin=arguments.get("origin", ""),
    ).key
    [version] = setup.versions(key.key_id)
    assert version.residency is Residency.TOKEN_OBJECT, why


def test_a_custom_key_store_keeps_token_objects() -> None:
    """Issue 17's stores hold their keys on their own token; the setting is the default store's."""
    setup = Setup()
    stores = TokenKeyStores([setup.vault, FakeKeyVault(key_store_id="cks-1")])
    residency = VersionResidency(stores, Residency.WRAPPED, setup.domain_keys, setup.store)
    key = setup.service.creation.create_key(ALICE).key
    assert residency.residency_for(key) is Residency.WRAPPED
    assert residency.residency_for(replace(key, key_store_id="cks-1")) is Residency.TOKEN_OBJECT


def test_a_blob_the_db_refuses_rolls_the_creation_back() -> None:
    setup = Setup()
    setup.domain_keys.active = "f" * 32  # on the token, but not ACTIVE or RETIRING in the DB
    setup.vault.create_domain_key(setup.domain_keys.active)
    with pytest.raises(errors.KMSInternalException, match="rolled back"):
        setup.service.creation.create_key(ALICE)
    assert list(setup.store.list_keys("acme", 10, None)) == []
    assert setup.store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    assert setup.vault.destroyed == [], "a wrapped version has no token object to destroy"


def test_a_failing_wrap_rolls_the_creation_back() -> None:
    setup = Setup()
    setup.vault.fail_wrap = True
    with pytest.raises(errors.KMSInternalException, match="wrap"):
        setup.service.creation.create_key(ALICE)
    assert list(setup.store.list_keys("acme", 10, None)) == []
    assert setup.store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []


def test_a_creation_without_tags_writes_the_whole_key_once() -> None:
    setup = Setup()
    key = setup.service.creation.create_key(ALICE).key
    [version] = setup.versions(key.key_id)
    assert (key.state, version.state) == (KeyState.ENABLED, VersionState.ACTIVE)
    assert version.wrapped is not None
    assert setup.store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    round_trip(setup.service, key.key_id)


def test_a_creation_interrupted_after_its_wrap_leaves_nothing() -> None:
    setup = Setup("create_key.after_wrap")
    with pytest.raises(SystemExit):
        setup.service.creation.create_key(ALICE)
    assert list(setup.store.list_keys("acme", 10, None)) == []
    assert setup.store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    assert setup.vault.object_count() == 0 and setup.vault.destroyed == []


def test_a_creation_interrupted_after_its_write_leaves_a_whole_key() -> None:
    setup = Setup("create_key.after_db_insert")
    with pytest.raises(SystemExit):
        setup.service.creation.create_key(ALICE)
    setup.clock.current += GRACE + timedelta(seconds=1)
    assert setup.service.recovery.recover_interrupted_work(GRACE) == 0
    [key] = setup.store.list_keys("acme", 10, None)
    assert key.state is KeyState.ENABLED
    round_trip(setup.service, key.key_id)


@pytest.mark.parametrize(
    "failpoint", ["create_key.after_db_insert", "create_key.after_wrap", "create_key.after_token_create"]
)
def test_an_interrupted_creation_with_tags_leaves_no_key(failpoint: str) -> None:
    setup = Setup(failpoint)
    with pytest.raises(SystemExit):
        setup.service.creation.create_key(ALICE, tags=[("team", "crash")])
    setup.clock.current += GRACE + timedelta(seconds=1)  # what the rollback left, recovery finds
    setup.service.recovery.recover_interrupted_work(GRACE)
    assert list(setup.store.list_keys("acme", 10, None)) == []
    assert setup.store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    assert setup.vault.object_count() == 0 and setup.vault.destroyed == []


@pytest.mark.parametrize(
    "failpoint", ["rotate.after_db_insert", "rotate.after_wrap", "rotate.after_token_create"]
)
def test_an_interrupted_rotation_leaves_the_key_working(failpoint: str) -> None:
    setup = Setup(failpoint)
    key = setup.service.creation.create_key(ALICE).key
    with pytest.raises(SystemExit):
        setup.service.rotation.rotate_key_on_demand(ALICE, key.key_id)
    setup.clock.current += GRACE + timedelta(seconds=1)
    setup.service.recovery.recover_interrupted_work(GRACE)
    assert [v.version for v in setup.versions(key.key_id)] == [1]
    round_trip(setup.service, key.key_id)
    assert setup.vault.destroyed == []


def test_recovery_deletes_a_crashed_creation_and_releases_its_cached_material() -> None:
    setup = Setup()
    key = setup.service.creation.create_key(ALICE).key
    [version] = setup.versions(key.key_id)
    assert setup.store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.CREATING)
    setup.clock.current += GRACE + timedelta(seconds=1)
    assert setup.service.recovery.recover_interrupted_work(GRACE) == 1
    assert setup.store.get_key(key.key_id) is None
    assert setup.vault.released == [version.token_id]
    assert setup.vault.destroyed == []


def test_recovery_deletes_a_crashed_wrapped_rotation_and_the_key_keeps_working() -> None:
    """As a kill -9 after the blob was stored leaves it: a PENDING version with its blob."""
    setup = Setup()
    key = setup.service.creation.create_key(ALICE).key
    pending = KeyVersion(
        key.key_id, 2, new_token_id(), VersionState.PENDING, setup.clock.now(), residency=Residency.WRAPPED
    )
    assert setup.store.insert_pending_version(pending, 25)
    blob = setup.vault.create_wrapped_key(pending.material, setup.domain_keys.active)
    assert setup.store.set_wrapped_material(key.key_id, 2, pending.token_id, blob)
    setup.clock.current += GRACE + timedelta(seconds=1)
    assert setup.service.recovery.recover_interrupted_work(GRACE) == 1
    assert [v.version for v in setup.versions(key.key_id)] == [1]
    assert setup.vault.released == [pending.token_id] and setup.vault.destroyed == []
    round_trip(setup.service, key.key_id)
    setup.service.rotation.rotate_key_on_demand(ALICE, key.key_id)  # version 2 can be made again
    assert [v.version for v in setup.versions(key.key_id)] == [1, 2]


def test_the_wrapped_residency_needs_domain_keys() -> None:
    with pytest.raises(ValueError, match="domain keys"):
        build_use_cases(
            TokenKeyStores([FakeWrappingVault()]),
            FakeMetadataStore(),
            Clock(),
            key_residency=Residency.WRAPPED,
        )


def test_discarding_wrapped_material_releases_and_destroys_nothing() -> None:
    vault = FakeWrappingVault()
    assert isinstance(vault, WrappedKeys)
    token_id = new_token_id()
    discard_material(
        TokenKeyStores([vault]), KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, token_id)
    )
    assert vault.released == [token_id] and vault.destroyed == []
