"""The MetadataStore's public keys of asymmetric versions (issue 23), on the fake, SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

from hsmstore.core.model import KeySpec, KeyUsage, KeyVersion, RotationType, VersionState, new_token_id
from hsmstore.core.ports import MetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    sqlite_engine_fixture,
    store_fixture,
)
from tests.contract.test_metadata_store import T0, make_key

SPKI = bytes(range(256)) * 2  # any bytes: the store keeps them as given


def test_public_key_written_while_pending_reads_back_after_the_key_is_finished(store: MetadataStore) -> None:
    key, version = make_key()
    key = replace(key, key_spec=KeySpec.ECC_NIST_P256, key_usage=KeyUsage.SIGN_VERIFY)
    store.insert_creating_key(key, version)

    assert store.get_public_key(key.key_id, 1) is None
    assert store.set_public_key(key.key_id, 1, SPKI) is True
    store.finish_creating_key(key.key_id)

    assert store.get_public_key(key.key_id, 1) == SPKI
    assert store.get_key(key.key_id) is not None


def test_public_key_of_an_active_version_cannot_change(store: MetadataStore) -> None:
    key, version = make_key()
    store.insert_creating_key(key, version)
    store.set_public_key(key.key_id, 1, SPKI)
    store.finish_creating_key(key.key_id)

    assert store.set_public_key(key.key_id, 1, b"other") is False
    assert store.get_public_key(key.key_id, 1) == SPKI


def test_symmetric_and_missing_versions_have_no_public_key(store: MetadataStore) -> None:
    key, version = make_key()
    store.insert_creating_key(key, version)
    store.finish_creating_key(key.key_id)

    assert store.get_public_key(key.key_id, 1) is None
    assert store.get_public_key(key.key_id, 2) is None
    assert store.get_public_key("no-such-key", 1) is None
    assert store.set_public_key("no-such-key", 1, SPKI) is False


def test_public_key_goes_with_its_deleted_key_and_versions(store: MetadataStore) -> None:
    key, version = make_key()
    store.insert_creating_key(key, version)
    store.set_public_key(key.key_id, 1, SPKI)
    store.delete_key(key.key_id, abandoned_at=T0)

    assert store.get_public_key(key.key_id, 1) is None


def test_rotated_version_keeps_its_own_public_key(store: MetadataStore) -> None:
    key, version = make_key()
    store.insert_creating_key(key, version)
    store.set_public_key(key.key_id, 1, SPKI)
    store.finish_creating_key(key.key_id)
    second = KeyVersion(key.key_id, 2, new_token_id(), VersionState.PENDING, T0, RotationType.ON_DEMAND)
    assert store.insert_pending_version(second, 25)
    assert store.set_public_key(key.key_id, 2, b"second")
    store.delete_version(key.key_id, 2, second.token_id, abandoned_at=T0)

    assert store.get_public_key(key.key_id, 1) == SPKI
    assert store.get_public_key(key.key_id, 2) is None
