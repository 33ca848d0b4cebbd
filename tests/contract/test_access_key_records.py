"""The AccessKeyRecords port (core/ports/access_keys.py): the fake, SQLite and PostgreSQL alike.

And the access key use cases (core/access_keys.py) on the real records with a
sealed secret: the DB holds only the sealed blob, bound to its row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from hsmstore import errors
from hsmstore.core.access_keys import AccessKeys
from hsmstore.core.access_keys_model import (
    ACCESS_KEY_ID_PATTERN,
    AccessKeyRecord,
    AccessKeyStatus,
    new_access_key_id,
)
from hsmstore.core.ports.access_keys import AccessKeyRecords
from hsmstore.store.access_keys_sql import SqlAccessKeys
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.migrate import upgrade
from hsmstore.store.schema import access_keys
from tests.contract.conftest_store import ALL_BACKENDS, fresh_database
from tests.fakes.access_keys import FakeAccessKeyRecords, FakeSecretSealer

NOW = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW


@pytest.fixture(params=ALL_BACKENDS)
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccessKeyRecords]:
    if request.param == "fake":
        yield FakeAccessKeyRecords()
        return
    with fresh_database(request.param, request, tmp_path) as url:
        upgrade(url)
        engine = create_engine_for_url(url)
        try:
            yield SqlAccessKeys.on(engine)
        finally:
            engine.dispose()


def record(tenant: str = "local", name: str = "ci", **changes: object) -> AccessKeyRecord:
    made = AccessKeyRecord(
        access_key_id=new_access_key_id(),
        tenant=tenant,
        principal=f"arn:hsmstore:iam::{tenant}:user/{name}",
        sealed_secret=b"\x01sealed-bytes",
        status=AccessKeyStatus.ACTIVE,
        created_at=NOW,
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def test_inserted_key_reads_back_exactly(records: AccessKeyRecords) -> None:
    key = record()
    records.insert_access_key(key)
    assert records.get_access_key(key.access_key_id) == key
    assert records.get_access_key(new_access_key_id()) is None


def test_second_key_with_the_same_id_already_exists(records: AccessKeyRecords) -> None:
    key = record()
    records.insert_access_key(key)
    with pytest.raises(errors.AlreadyExistsException):
        records.insert_access_key(replace(key, principal="arn:hsmstore:iam::local:user/other"))
    assert records.get_access_key(key.access_key_id) == key


def test_list_is_ordered_by_tenant_principal_id_and_filters(records: AccessKeyRecords) -> None:
    made = [record("team-b", "z"), record("team-a", "b"), record("team-a", "a"), record("team-a", "a")]
    for key in made:
        records.insert_access_key(key)
    listed = records.list_access_keys(None, None)
    assert [(k.tenant, k.principal, k.access_key_id) for k in listed] == sorted(
        (k.tenant, k.principal, k.access_key_id) for k in made
    )
    assert {k.access_key_id for k in records.list_access_keys("team-a", None)} == {
        k.access_key_id for k in made[1:]
    }
    only = records.list_access_keys("team-a", "arn:hsmstore:iam::team-a:user/a")
    assert {k.access_key_id for k in only} == {made[2].access_key_id, made[3].access_key_id}


def test_status_changes_and_revoked_is_final(records: AccessKeyRecords) -> None:
    key = record()
    records.insert_access_key(key)
    assert records.set_access_key_status(key.access_key_id, AccessKeyStatus.INACTIVE)
    assert records.get_access_key(key.access_key_id).status is AccessKeyStatus.INACTIVE  # type: ignore[union-attr]
    assert records.set_access_key_status(key.access_key_id, AccessKeyStatus.REVOKED)
    assert records.set_access_key_status(key.access_key_id, AccessKeyStatus.REVOKED)
    assert not records.set_access_key_status(key.access_key_id, AccessKeyStatus.ACTIVE)
    assert records.get_access_key(key.access_key_id).status is AccessKeyStatus.REVOKED  # type: ignore[union-attr]
    assert not records.set_access_key_status(new_access_key_id(), AccessKeyStatus.REVOKED)


def test_last_use_is_noted(records: AccessKeyRecords) -> None:
    key = record()
    records.insert_access_key(key)
    records.note_access_key_used(key.access_key_id, NOW + timedelta(minutes=3))
    assert records.get_access_key(key.access_key_id).last_used == NOW + timedelta(minutes=3)  # type: ignore[union-attr]


def test_created_key_is_shown_once_and_its_secret_is_stored_only_sealed(records: AccessKeyRecords) -> None:
    keys = AccessKeys(records, FakeSecretSealer(), FixedClock())
    created = keys.create("service/billing", tenant="team-a")
    assert ACCESS_KEY_ID_PATTERN.fullmatch(created.access_key_id)
    assert len(created.secret_access_key) == 40
    stored = records.get_access_key(created.access_key_id)
    assert stored is not None
    assert created.secret_access_key.encode() not in stored.sealed_secret
    (listed,) = keys.list(tenant="team-a")
    assert created.secret_access_key not in repr(listed)
    assert (listed.principal, listed.status) == ("arn:hsmstore:iam::team-a:service/billing", "Active")
    identity = keys.signing_identity(created.access_key_id)
    assert identity is not None and identity.secret == created.secret_access_key


def test_sealed_secret_moved_to_another_principal_does_not_unseal(records: AccessKeyRecords) -> None:
    sealer = FakeSecretSealer()
    keys = AccessKeys(records, sealer, FixedClock())
    created = keys.create("user/reader")
    stolen = records.get_access_key(created.access_key_id)
    assert stolen is not None
    records.insert_access_key(
        replace(stolen, access_key_id=new_access_key_id(), principal="arn:hsmstore:iam::local:role/admin")
    )
    forged = next(k for k in records.list_access_keys(None, "arn:hsmstore:iam::local:role/admin"))
    with pytest.raises(errors.KMSInternalException):
        keys.signing_identity(forged.access_key_id)


def test_revoked_key_has_no_signing_identity_and_unknown_revoke_is_not_found(
    records: AccessKeyRecords,
) -> None:
    keys = AccessKeys(records, FakeSecretSealer(), FixedClock())
    created = keys.create("user/ci")
    assert keys.signing_identity(created.access_key_id) is not None
    assert keys.revoke(created.access_key_id).status == "Revoked"
    assert keys.signing_identity(created.access_key_id) is None
    with pytest.raises(errors.NotFoundException):
        keys.revoke(new_access_key_id())


def test_unsealed_secrets_are_cached_so_a_request_costs_no_token_call(records: AccessKeyRecords) -> None:
    sealer = FakeSecretSealer()
    keys = AccessKeys(records, sealer, FixedClock())
    created = keys.create("user/ci")
    for _ in range(5):
        keys.signing_identity(created.access_key_id)
    assert sealer.unseals == 1


@pytest.mark.parametrize(
    ("principal", "tenant"),
    [("root", None), ("user", None), ("arn:hsmstore:iam::t:root", None), ("user/a", "Bad Tenant"),
     ("arn:hsmstore:iam::t1:user/a", "t2"), ("group/a", None)],
)  # fmt: skip
def test_principal_that_is_no_caller_is_refused(
    records: AccessKeyRecords, principal: str, tenant: str | None
) -> None:
    with pytest.raises(errors.ValidationException):
        AccessKeys(records, FakeSecretSealer(), FixedClock()).create(principal, tenant)
    assert records.list_access_keys(None, None) == []


def test_sql_row_holds_no_secret_in_clear(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    engine = create_engine_for_url(url)
    try:
        keys = AccessKeys(SqlAccessKeys.on(engine), FakeSecretSealer(), FixedClock())
        created = keys.create("user/ci")
        with engine.connect() as connection:
            (row,) = connection.execute(select(access_keys)).all()
        assert created.secret_access_key not in repr(row)
        assert created.secret_access_key.encode() not in bytes(row.sealed_secret)
    finally:
        engine.dispose()
