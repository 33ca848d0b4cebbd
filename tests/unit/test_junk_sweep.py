"""JunkSweep.sweep_junk_objects: only objects this DB knows it abandoned are destroyed, after a grace."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

import pytest

from hsmstore import errors
from hsmstore.core.keys.junk_sweep import JUNK_TOMBSTONE_DAYS
from hsmstore.core.keys.material import token_label
from hsmstore.core.model import (
    Caller,
    KeyManager,
    KeyMaterialRef,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
    RotationType,
    VersionState,
    new_key_id,
    new_token_id,
)
from hsmstore.core.use_cases import UseCases, build_use_cases
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

ALICE = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
GRACE = timedelta(minutes=5)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
UNKNOWN_WARNING = "this metadata DB does not know"


class StepClock:
    def __init__(self) -> None:
        self.current = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current


def make_service(
    vault: FakeKeyVault | None = None, clock: StepClock | None = None
) -> tuple[UseCases, FakeMetadataStore, FakeKeyVault, StepClock]:
    store, vault, clock = FakeMetadataStore(), vault or FakeKeyVault(), clock or StepClock()
    return build_use_cases(TokenKeyStores([vault]), store, clock, region="local"), store, vault, clock


def tombstoned(store: FakeMetadataStore) -> set[bytes]:
    return {t.token_id for t in store.list_abandoned_token_objects(FAR_FUTURE, 1000)}


def killed_create_key(store: FakeMetadataStore, clock: StepClock) -> KeyVersion:
    """What a CreateKey killed after its first step leaves: a CREATING key row, a PENDING version."""
    created = clock.current - timedelta(seconds=1)
    key = KeyRecord(
        key_id=new_key_id(),
        tenant=ALICE.tenant,
        description="",
        state=KeyState.CREATING,
        key_usage=KeyUsage.ENCRYPT_DECRYPT,
        key_spec=KeySpec.SYMMETRIC_DEFAULT,
        origin=Origin.AWS_KMS,
        key_manager=KeyManager.CUSTOMER,
        creation_date=created,
        current_version=1,
    )
    version = KeyVersion(key.key_id, 1, new_token_id(), VersionState.PENDING, created)
    store.insert_creating_key(key, version)
    return version


def late_object(vault: FakeKeyVault, version: KeyVersion) -> None:
    """The object the killed process was still writing: it lands after the rollback searched."""
    vault.create_key(version.material, token_label(version.key_id, version.version))


def junk_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "destroyed junk token object" in r.getMessage()]


def unknown_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if UNKNOWN_WARNING in r.getMessage()]


def test_an_object_left_by_a_killed_create_key_is_destroyed_once_seen_for_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, store, vault, clock = make_service()
    live = service.creation.create_key(ALICE).key
    [live_version] = store.list_versions(live.key_id)
    interrupted = killed_create_key(store, clock)
    assert service.recovery.recover_interrupted_work(timedelta(0)) == 1
    assert interrupted.token_id in tombstoned(store), "the rollback records the id it gave up on"
    late_object(vault, interrupted)

    assert service.junk_sweep.sweep_junk_objects(GRACE) == 0  # first sighting
    clock.current += GRACE - timedelta(seconds=1)
    assert service.junk_sweep.sweep_junk_objects(GRACE) == 0  # not seen for the grace period yet
    assert vault.key_exists(interrupted.material)

    clock.current += timedelta(seconds=1)
    with caplog.at_level(logging.WARNING, logger="hsmstore.core.keys.junk_sweep"):
        assert service.junk_sweep.sweep_junk_objects(GRACE) == 1
    assert not vault.key_exists(interrupted.material)
    assert vault.key_exists(live_version.material), "a key with its row is never swept"
    [line] = junk_lines(caplog)
    assert interrupted.token_id.hex() in line
    assert tombstoned(store) == set(), "the tombstone goes with its object"
    assert unknown_warnings(caplog) == []


def test_an_object_left_by_a_killed_rotation_is_destroyed_too() -> None:
    service, store, vault, clock = make_service()
    key = service.creation.create_key(ALICE).key
    pending = KeyVersion(
        key.key_id,
        2,
        new_token_id(),
        VersionState.PENDING,
        clock.current - timedelta(seconds=1),
        RotationType.ON_DEMAND,
    )
    assert store.insert_pending_version(pending, 25)
    assert service.recovery.recover_interrupted_work(timedelta(0)) == 1
    assert tombstoned(store) == {pending.token_id}
    late_object(vault, pending)

    service.junk_sweep.sweep_junk_objects(GRACE)
    clock.current += GRACE
    assert service.junk_sweep.sweep_junk_objects(GRACE) == 1
    assert not vault.key_exists(pending.material)
    assert service.crypto.encrypt(ALICE, key.key_id, b"still works", {}).ciphertext_blob


def test_an_abandoned_version_and_a_failed_creation_count_as_abandoned_without_a_tombstone() -> None:
    service, store, vault, clock = make_service()
    key = service.creation.create_key(ALICE).key
    rotation = KeyVersion(
        key.key_id, 2, new_token_id(), VersionState.PENDING, clock.current, RotationType.ON_DEMAND
    )
    store.insert_pending_version(rotation, 25)
    vault.create_key(rotation.material, token_label(key.key_id, 2))
    assert store.abandon_version(key.key_id, 2, rotation.token_id)  # recovery claimed it, then died
    creation = killed_create_key(store, clock)
    late_object(vault, creation)
    assert store.claim_failed_creation(creation.key_id)  # the same for a creation

    service.junk_sweep.sweep_junk_objects(GRACE)
    clock.current += GRACE
    assert service.junk_sweep.sweep_junk_objects(GRACE) == 2
    assert not vault.key_exists(rotation.material)
    assert not vault.key_exists(creation.material)


def test_a_fresh_db_on_a_token_full_of_live_keys_destroys_nothing_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong --db (a typo that makes an empty DB, the staging DB) or a second deployment on the token."""
    production, production_store, vault, clock = make_service()
    keys = [production.creation.create_key(ALICE).key.key_id for _ in range(3)]
    production.rotation.rotate_key_on_demand(ALICE, keys[0])
    blobs = {key_id: production.crypto.encrypt(ALICE, key_id, b"data", {}).ciphertext_blob for key_id in keys}
    wrong_db, wrong_store, _, _ = make_service(vault, clock)
    walks = []
    list_key_versions = vault.list_key_versions
    vault.list_key_versions = lambda: walks.append(1) or list_key_versions()  # type: ignore[method-assign]

    with caplog.at_level(logging.WARNING, logger="hsmstore.core.keys.junk_sweep"):
        for _ in range(5):
            assert wrong_db.junk_sweep.sweep_junk_objects(GRACE) == 0
            clock.current += GRACE * 10
        [warning] = unknown_warnings(caplog)
        assert "4 hsmstore key objects" in warning and "is --db the DB for this token?" in warning
        assert warning.split("(first: ")[1].startswith("hsmstore/")
        assert len(walks) == 1  # nothing abandoned, nothing waiting: the token is walked once a process

        production.creation.create_key(ALICE)
        restarted = build_use_cases(
            TokenKeyStores([vault]), wrong_store, clock, region="local"
        )  # the next process says it again
        assert restarted.junk_sweep.sweep_junk_objects(GRACE) == 0
    assert len(unknown_warnings(caplog)) == 2 and "5 hsmstore key objects" in unknown_warnings(caplog)[1]
    assert junk_lines(caplog) == []
    for key_id, blob in blobs.items():
        assert production.crypto.decrypt(ALICE, blob, {}).plaintext == b"data", key_id
    assert all(vault.key_exists(v.material) for k in keys for v in production_store.list_versions(k))


def test_a_creation_in_flight_is_never_swept_even_with_no_grace() -> None:
    store, vault, clock = FakeMetadataStore(), FakeKeyVault(), StepClock()
    swept: list[int] = []

    def sweep_mid_creation(name: str) -> None:
        if name == "create_key.after_token_create":  # the object exists, the key is still CREATING
            swept.append(service.junk_sweep.sweep_junk_objects(timedelta(0)))

    service = build_use_cases(
        TokenKeyStores([vault]), store, clock, region="local", failpoint=sweep_mid_creation
    )
    key = service.creation.create_key(ALICE).key
    [version] = store.list_versions(key.key_id)
    assert swept == [0]
    assert vault.key_exists(version.material)


def test_objects_without_an_hsmstore_label_and_unknown_twins_of_live_versions_are_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, vault, clock = make_service()
    key = service.creation.create_key(ALICE).key
    foreign = os.urandom(16)
    vault.create_key(KeyMaterialRef.token_object(foreign), "someone-elses-key")
    twin = os.urandom(16)  # the live version's label, another CKA_ID this DB never recorded
    vault.create_key(KeyMaterialRef.token_object(twin), token_label(key.key_id, 1))
    with caplog.at_level(logging.WARNING, logger="hsmstore.core.keys.junk_sweep"):
        service.junk_sweep.sweep_junk_objects(GRACE)
        clock.current += GRACE
        assert service.junk_sweep.sweep_junk_objects(GRACE) == 0
    assert vault.key_exists(KeyMaterialRef.token_object(foreign)) and vault.key_exists(
        KeyMaterialRef.token_object(twin)
    )
    [warning] = unknown_warnings(caplog)
    assert "1 hsmstore key objects" in warning and token_label(key.key_id, 1) in warning
    assert service.crypto.encrypt(ALICE, key.key_id, b"x", {}).ciphertext_blob


def test_a_tombstone_whose_object_never_appears_goes_one_grace_period_after_it_was_written() -> None:
    service, store, _, clock = make_service()
    interrupted = killed_create_key(store, clock)
    service.recovery.recover_interrupted_work(timedelta(0))
    abandoned_at = clock.current

    clock.current = abandoned_at + GRACE  # not yet *older* than the grace period
    service.junk_sweep.sweep_junk_objects(GRACE)
    assert tombstoned(store) == {interrupted.token_id}, "an object may still be landing"
    clock.current = abandoned_at + GRACE + timedelta(seconds=1)
    service.junk_sweep.sweep_junk_objects(GRACE)
    assert tombstoned(store) == set()


def test_the_reaper_leaves_tombstones_that_the_sweep_clears_once_the_objects_are_gone() -> None:
    service, store, vault, clock = make_service()
    key = service.creation.create_key(ALICE).key
    service.rotation.rotate_key_on_demand(ALICE, key.key_id)
    token_ids = {v.token_id for v in store.list_versions(key.key_id)}
    service.deletion.schedule_key_deletion(ALICE, key.key_id, 7)
    clock.current += timedelta(days=7)
    assert service.deletion.destroy_due_keys() == 1
    assert tombstoned(store) == token_ids
    assert not any(vault.key_exists(KeyMaterialRef.token_object(token_id)) for token_id in token_ids)

    clock.current += GRACE + timedelta(seconds=1)
    assert service.junk_sweep.sweep_junk_objects(GRACE) == 0
    assert tombstoned(store) == set()


def test_a_tombstone_is_pruned_after_a_week_and_its_object_is_then_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No sweep ran for a week (the server was down): the tombstone goes, and the object is
    from then on unknown, so it is reported, never destroyed (the safe side)."""
    service, store, vault, clock = make_service()
    interrupted = killed_create_key(store, clock)
    service.recovery.recover_interrupted_work(timedelta(0))
    late_object(vault, interrupted)

    clock.current += timedelta(days=JUNK_TOMBSTONE_DAYS, seconds=1)
    with caplog.at_level(logging.WARNING, logger="hsmstore.core.keys.junk_sweep"):
        assert service.junk_sweep.sweep_junk_objects(GRACE) == 0  # first sighting; the tombstone is pruned
        assert tombstoned(store) == set()
        clock.current += GRACE
        assert service.junk_sweep.sweep_junk_objects(GRACE) == 0
    assert vault.key_exists(interrupted.material)
    assert len(unknown_warnings(caplog)) == 1


def test_a_sighting_is_forgotten_once_the_object_is_gone() -> None:
    service, store, vault, clock = make_service()
    interrupted = killed_create_key(store, clock)
    service.recovery.recover_interrupted_work(timedelta(0))
    late_object(vault, interrupted)
    assert service.junk_sweep.sweep_junk_objects(GRACE) == 0
    vault.destroy_key(interrupted.material)
    assert service.junk_sweep.sweep_junk_objects(GRACE) == 0
    late_object(vault, interrupted)  # the same CKA_ID again, much later
    clock.current += GRACE
    assert service.junk_sweep.sweep_junk_objects(GRACE) == 0, "a new first sighting"
    assert vault.key_exists(interrupted.material)


def test_the_reaper_leaves_a_key_whose_token_is_down_destroying_and_goes_on_with_the_others() -> None:
    """Issue 17: a key in a disconnected custom key store, or on a token that does not answer,
    stays DESTROYING (finished by a later run); the reaper does not stop at it."""
    service, store, vault, clock = make_service()
    stuck = service.creation.create_key(ALICE).key
    other = service.creation.create_key(ALICE).key
    for key in (stuck, other):
        service.deletion.schedule_key_deletion(ALICE, key.key_id, 7)
    clock.current += timedelta(days=7)
    stuck_material = {v.token_id for v in store.list_versions(stuck.key_id)}
    destroy = vault.destroy_key

    def token_down_for_stuck(material: KeyMaterialRef) -> bool:
        if material.handle in stuck_material:
            raise errors.DependencyUnavailableException("the HSM token does not answer")
        return destroy(material)

    vault.destroy_key = token_down_for_stuck  # type: ignore[method-assign]
    assert service.deletion.destroy_due_keys() == 1
    assert store.get_key(other.key_id) is None
    still = store.get_key(stuck.key_id)
    assert still is not None and still.state is KeyState.DESTROYING

    vault.destroy_key = destroy  # type: ignore[method-assign]
    assert service.deletion.destroy_due_keys() == 1
    assert store.get_key(stuck.key_id) is None
