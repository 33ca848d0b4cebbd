"""The MetadataStore's imported key material records (issue 22), on the fake, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta

import pytest

from hsmstore import errors
from hsmstore.core.model import ExpirationModel, KeyRecord, KeyState, Origin, new_token_id
from hsmstore.core.ports import MetadataStore
from hsmstore.core.ports.key_imports import ImportParametersRecord
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    sqlite_engine_fixture,
    store_fixture,
)
from tests.contract.test_metadata_store import T0, make_key

KCV = b"\x01\x02\x03"
LATER = T0 + timedelta(days=30)


def pending_import_key(store: MetadataStore) -> KeyRecord:
    key, version = make_key()
    key = replace(key, origin=Origin.EXTERNAL)
    store.insert_creating_key(key, version)
    assert store.finish_creating_key(key.key_id, state=KeyState.PENDING_IMPORT)
    stored = store.get_key(key.key_id)
    assert stored is not None
    return stored


def parameters(key_id: str, token: bytes = b"token", valid_to_hours: int = 24) -> ImportParametersRecord:
    return ImportParametersRecord(
        wrapping_token_id=new_token_id(),
        key_id=key_id,
        key_store_id="default",
        token_hash=hashlib.sha256(token).digest(),
        wrapping_algorithm="RSAES_OAEP_SHA_1",
        wrapping_key_spec="RSA_2048",
        created_at=T0,
        valid_to=T0 + timedelta(hours=valid_to_hours),
    )


def test_an_external_key_is_finished_in_pending_import_with_no_validity(store: MetadataStore) -> None:
    key = pending_import_key(store)
    assert key.state is KeyState.PENDING_IMPORT
    assert key.valid_to is None and key.expiration_model is None
    assert store.get_key_check_value(key.key_id) is None


def test_import_parameters_are_found_by_the_token_hash_only(store: MetadataStore) -> None:
    key = pending_import_key(store)
    record = parameters(key.key_id)
    store.insert_import_parameters(record)
    assert store.set_import_public_key(record.wrapping_token_id, b"spki") is True
    found = store.find_import_parameters(record.token_hash)
    assert found == replace(record, public_key=b"spki")
    assert store.find_import_parameters(hashlib.sha256(b"other").digest()) is None


def test_the_same_import_token_twice_is_refused(store: MetadataStore) -> None:
    key = pending_import_key(store)
    store.insert_import_parameters(parameters(key.key_id))
    with pytest.raises(errors.AlreadyExistsException):
        store.insert_import_parameters(parameters(key.key_id))


def test_expired_import_parameters_are_listed_oldest_first_and_deleted(store: MetadataStore) -> None:
    key = pending_import_key(store)
    late, early = parameters(key.key_id, b"a", 48), parameters(key.key_id, b"b", 24)
    store.insert_import_parameters(late)
    store.insert_import_parameters(early)
    assert store.list_expired_import_parameters(T0 + timedelta(hours=25), 10) == [early]
    assert [p.wrapping_token_id for p in store.list_expired_import_parameters(LATER, 10)] == [
        early.wrapping_token_id,
        late.wrapping_token_id,
    ]
    store.delete_import_parameters(early.wrapping_token_id)
    assert store.list_expired_import_parameters(LATER, 10) == [late]
    assert store.set_import_public_key(early.wrapping_token_id, b"spki") is False


def test_one_import_claim_at_a_time_until_it_is_stale(store: MetadataStore) -> None:
    key = pending_import_key(store)
    assert store.claim_import(key.key_id, "a", T0, T0 - timedelta(minutes=5)) is True
    assert store.claim_import(key.key_id, "b", T0, T0 - timedelta(minutes=5)) is False
    stale_now = T0 + timedelta(minutes=6)
    assert store.claim_import(key.key_id, "b", stale_now, stale_now - timedelta(minutes=5)) is True
    store.release_import_claim(key.key_id, "a")  # no longer its claim: nothing happens
    assert store.claim_import(key.key_id, "c", stale_now, stale_now - timedelta(minutes=5)) is False
    store.release_import_claim(key.key_id, "b")
    assert store.claim_import(key.key_id, "c", stale_now, stale_now - timedelta(minutes=5)) is True


def test_finish_import_enables_the_key_and_keeps_the_first_key_check_value(store: MetadataStore) -> None:
    key = pending_import_key(store)
    assert store.claim_import(key.key_id, "c", T0, T0)
    assert not store.finish_import(
        key.key_id,
        "other",
        KeyState.PENDING_IMPORT,
        KeyState.ENABLED,
        KCV,
        LATER,
        ExpirationModel.KEY_MATERIAL_EXPIRES,
    )
    assert store.finish_import(
        key.key_id,
        "c",
        KeyState.PENDING_IMPORT,
        KeyState.ENABLED,
        KCV,
        LATER,
        ExpirationModel.KEY_MATERIAL_EXPIRES,
    )
    stored = store.get_key(key.key_id)
    assert stored is not None
    assert stored.state is KeyState.ENABLED
    assert stored.valid_to == LATER
    assert stored.expiration_model is ExpirationModel.KEY_MATERIAL_EXPIRES
    assert store.get_key_check_value(key.key_id) == KCV
    # The claim went with the finish.
    assert store.claim_import(key.key_id, "d", T0, T0 - timedelta(minutes=5))


def test_finish_import_with_another_key_check_value_changes_nothing(store: MetadataStore) -> None:
    key = pending_import_key(store)
    store.claim_import(key.key_id, "c", T0, T0)
    store.finish_import(
        key.key_id,
        "c",
        KeyState.PENDING_IMPORT,
        KeyState.ENABLED,
        KCV,
        None,
        ExpirationModel.KEY_MATERIAL_DOES_NOT_EXPIRE,
    )
    assert store.delete_imported_material(key.key_id, KeyState.ENABLED, KeyState.PENDING_IMPORT)
    store.claim_import(key.key_id, "d", T0, T0)
    assert not store.finish_import(
        key.key_id,
        "d",
        KeyState.PENDING_IMPORT,
        KeyState.ENABLED,
        b"xyz",
        None,
        ExpirationModel.KEY_MATERIAL_DOES_NOT_EXPIRE,
    )
    assert store.get_key(key.key_id).state is KeyState.PENDING_IMPORT  # type: ignore[union-attr]
    assert store.get_key_check_value(key.key_id) == KCV


def test_expired_material_is_listed_and_deleted_only_once_expired(store: MetadataStore) -> None:
    key = pending_import_key(store)
    forever = pending_import_key(store)
    for k, valid_to, model in (
        (key, LATER, ExpirationModel.KEY_MATERIAL_EXPIRES),
        (forever, None, ExpirationModel.KEY_MATERIAL_DOES_NOT_EXPIRE),
    ):
        store.claim_import(k.key_id, "c", T0, T0)
        store.finish_import(k.key_id, "c", KeyState.PENDING_IMPORT, KeyState.ENABLED, KCV, valid_to, model)
    assert store.list_keys_with_expired_material(LATER, 10) == []
    after = LATER + timedelta(seconds=1)
    [expired] = store.list_keys_with_expired_material(after, 10)
    assert expired.key_id == key.key_id
    assert not store.delete_imported_material(
        key.key_id, KeyState.ENABLED, KeyState.PENDING_IMPORT, expired_before=LATER
    )
    assert store.delete_imported_material(
        key.key_id, KeyState.ENABLED, KeyState.PENDING_IMPORT, expired_before=after
    )
    stored = store.get_key(key.key_id)
    assert stored is not None
    assert (
        stored.state is KeyState.PENDING_IMPORT
        and stored.valid_to is None
        and stored.expiration_model is None
    )
    assert store.list_keys_with_expired_material(after, 10) == []


def test_cancelled_deletion_of_an_external_key_without_material_is_pending_import(
    store: MetadataStore,
) -> None:
    key = pending_import_key(store)
    assert store.schedule_deletion(key.key_id, KeyState.PENDING_IMPORT, LATER, 7)
    assert store.cancel_deletion(key.key_id)
    assert store.get_key(key.key_id).state is KeyState.PENDING_IMPORT  # type: ignore[union-attr]


def test_cancelled_deletion_of_an_external_key_with_material_is_disabled(store: MetadataStore) -> None:
    key = pending_import_key(store)
    store.claim_import(key.key_id, "c", T0, T0)
    store.finish_import(
        key.key_id,
        "c",
        KeyState.PENDING_IMPORT,
        KeyState.ENABLED,
        KCV,
        None,
        ExpirationModel.KEY_MATERIAL_DOES_NOT_EXPIRE,
    )
    assert store.schedule_deletion(key.key_id, KeyState.ENABLED, LATER, 7)
    assert store.cancel_deletion(key.key_id)
    assert store.get_key(key.key_id).state is KeyState.DISABLED  # type: ignore[union-attr]
