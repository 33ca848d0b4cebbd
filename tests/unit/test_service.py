"""The use cases with fakes: the decisions the core makes, without gRPC, token or SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hsmstore.core.model import Caller, KeyMaterialRef, KeyState
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import (
    IncorrectKeyException,
    InvalidCiphertextException,
    KMSInternalException,
    KMSInvalidStateException,
    NotFoundException,
    ValidationException,
)
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

ALICE = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
MALLORY = Caller("evil", "arn:hsmstore:iam::evil:role/admin")


class FixedClock:
    def __init__(self) -> None:
        self.current = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current


class BrokenVault(FakeKeyVault):
    def create_key(self, material: KeyMaterialRef, label: str) -> None:
        super().create_key(material, label)
        raise KMSInternalException("token failed after generating")


def make_service(
    vault: FakeKeyVault | None = None,
) -> tuple[UseCases, FakeMetadataStore, FakeKeyVault, FixedClock]:
    store, clock = FakeMetadataStore(), FixedClock()
    vault = vault or FakeKeyVault()
    return build_use_cases(TokenKeyStores([vault]), store, clock, region="local"), store, vault, clock


def test_create_key_is_enabled_with_one_active_token_object() -> None:
    service, store, vault, _ = make_service()
    key = service.creation.create_key(ALICE, description="d").key
    assert key.state is KeyState.ENABLED
    [version] = store.list_versions(key.key_id)
    assert vault.key_exists(version.material)


def test_create_key_failing_on_the_token_leaves_nothing_behind() -> None:
    service, store, vault, _ = make_service(BrokenVault())
    with pytest.raises(KMSInternalException):
        service.creation.create_key(ALICE)
    assert list(store.list_keys("acme", 10, None)) == []
    assert store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    assert vault.object_count() == 0


def test_create_key_interrupted_after_the_token_step_rolls_back_in_process() -> None:
    def crash_after_token(name: str) -> None:
        if name == "create_key.after_token_create":
            raise SystemExit("simulated interruption")

    store, clock, vault = FakeMetadataStore(), FixedClock(), FakeKeyVault()
    service = build_use_cases(TokenKeyStores([vault]), store, clock, failpoint=crash_after_token)
    with pytest.raises(SystemExit):
        service.creation.create_key(ALICE)
    assert store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    assert list(store.list_keys("acme", 10, None)) == []
    assert vault.object_count() == 0


def test_recovery_destroys_the_token_object_of_an_interrupted_creation() -> None:
    service, store, vault, clock = make_service()
    key = service.creation.create_key(ALICE).key
    [version] = store.list_versions(key.key_id)
    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.CREATING)
    assert service.recovery.recover_interrupted_work(timedelta(seconds=60)) == 0, "too young to roll back"
    clock.current += timedelta(seconds=61)
    assert service.recovery.recover_interrupted_work(timedelta(seconds=60)) == 1
    assert store.get_key(key.key_id) is None
    assert not vault.key_exists(version.material)


def test_encrypt_decrypt_round_trip_binds_the_context() -> None:
    service, *_ = make_service()
    key = service.creation.create_key(ALICE).key
    blob = service.crypto.encrypt(ALICE, key.key_id, b"secret", {"a": "1"}).ciphertext_blob
    assert service.crypto.decrypt(ALICE, blob, {"a": "1"}).plaintext == b"secret"
    with pytest.raises(InvalidCiphertextException):
        service.crypto.decrypt(ALICE, blob, {"a": "2"})


def test_another_tenants_blob_looks_like_a_bad_ciphertext() -> None:
    service, *_ = make_service()
    key = service.creation.create_key(ALICE).key
    blob = service.crypto.encrypt(ALICE, key.key_id, b"secret", {}).ciphertext_blob
    with pytest.raises(InvalidCiphertextException):
        service.crypto.decrypt(MALLORY, blob, {})
    with pytest.raises(NotFoundException):
        service.keys.describe_key(MALLORY, key.key_id)


def test_decrypt_with_other_key_id_is_incorrect_key() -> None:
    service, *_ = make_service()
    first, second = service.creation.create_key(ALICE).key, service.creation.create_key(ALICE).key
    blob = service.crypto.encrypt(ALICE, first.key_id, b"secret", {}).ciphertext_blob
    with pytest.raises(IncorrectKeyException):
        service.crypto.decrypt(ALICE, blob, {}, key_id=second.key_id)


def test_version_token_ids_are_read_from_the_store_once() -> None:
    service, store, _, _ = make_service()
    key = service.creation.create_key(ALICE).key
    reads = 0
    original = store.get_version

    def counting_get_version(key_id: str, version: int):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return original(key_id, version)

    store.get_version = counting_get_version  # type: ignore[method-assign]
    for _ in range(5):
        blob = service.crypto.encrypt(ALICE, key.key_id, b"x", {}).ciphertext_blob
        service.crypto.decrypt(ALICE, blob, {})
    assert reads == 1


def test_disable_uses_compare_and_set_against_a_concurrent_change() -> None:
    service, store, _, _ = make_service()
    key = service.creation.create_key(ALICE).key
    original = store.update_key_state
    interleaved = []

    def racing_update(key_id: str, expected: KeyState, new_state: KeyState) -> bool:
        if not interleaved:
            interleaved.append(True)
            original(key_id, KeyState.ENABLED, KeyState.DISABLED)  # someone else disabled it first
        return original(key_id, expected, new_state)

    store.update_key_state = racing_update  # type: ignore[method-assign]
    service.keys.enable_key(ALICE, key.key_id)
    assert store.get_key(key.key_id).state is KeyState.ENABLED  # type: ignore[union-attr]


def test_list_keys_pages_through_every_key_once() -> None:
    service, *_ = make_service()
    created = {service.creation.create_key(ALICE).key.key_id for _ in range(7)}
    seen: list[str] = []
    marker = ""
    while True:
        page = service.keys.list_keys(ALICE, 3, marker)
        seen += [entry.key_id for entry in page.entries]
        if not page.truncated:
            break
        marker = page.next_marker
    assert sorted(seen) == sorted(created)


def test_generate_data_key_rejects_both_sizes() -> None:
    service, *_ = make_service()
    key = service.creation.create_key(ALICE).key
    with pytest.raises(ValidationException):
        service.crypto.generate_data_key(ALICE, key.key_id, {}, 32, "AES_256")


def test_schedule_deletion_losing_to_a_concurrent_one_is_invalid_state_not_internal() -> None:
    """Two ScheduleKeyDeletion at once (found by the fuzzer): the loser sees PendingDeletion."""
    service, store, _, clock = make_service()
    key = service.creation.create_key(ALICE).key
    original = store.schedule_deletion
    raced = []

    def racing_schedule(key_id: str, expected: KeyState, *args: Any, **kwargs: Any) -> bool:
        if not raced:
            raced.append(True)
            original(key_id, KeyState.ENABLED, clock.now() + timedelta(days=7), 7)  # the other call won
        return original(key_id, expected, *args, **kwargs)

    store.schedule_deletion = racing_schedule  # type: ignore[method-assign]
    with pytest.raises(KMSInvalidStateException):
        service.deletion.schedule_key_deletion(ALICE, key.key_id, 30)
    assert store.get_key(key.key_id).pending_window_days == 7  # type: ignore[union-attr]
