"""The MetadataStore's domain keys and re-wrap records (issue 18), on the fake, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import traceback
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import select

from hsmstore import errors
from hsmstore.core.model import (
    DEFAULT_KEY_STORE_ID,
    DomainKey,
    DomainKeyState,
    KeyRecord,
    KeyState,
    KeyVersion,
    Residency,
    RotationType,
    VersionState,
    WrappedMaterial,
    new_token_id,
)
from hsmstore.core.ports import MetadataStore
from hsmstore.store import migrate
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.schema import key_versions
from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    sqlite_engine_fixture,
    store_fixture,
)
from tests.contract.test_metadata_store import (
    T0,
    add_enabled_key_as_an_older_release,
    make_key,
)

MECHANISM = "AES_KEY_WRAP_PAD"
LATER = T0 + timedelta(minutes=5)
CLAIM_UNTIL = T0 + timedelta(minutes=1)


def domain_key_id(n: int) -> str:
    return f"{n:032x}"


def add_domain_key(
    store: MetadataStore, n: int, key_store_id: str = DEFAULT_KEY_STORE_ID, created_at: datetime = T0
) -> str:
    """An ACTIVE domain key (the previous ACTIVE one of its store becomes RETIRING)."""
    active = [
        k.domain_key_id for k in store.list_domain_keys(key_store_id) if k.state is DomainKeyState.ACTIVE
    ]
    store.insert_domain_key(
        DomainKey(domain_key_id(n), key_store_id, DomainKeyState.PENDING, MECHANISM, created_at)
    )
    assert store.activate_domain_key(domain_key_id(n), created_at, replacing=active[0] if active else None)
    return domain_key_id(n)


def blob(under: str, tag: bytes = b"") -> WrappedMaterial:
    return WrappedMaterial(under, MECHANISM, b"wrapped:" + under.encode() + tag)


def add_wrapped_key(store: MetadataStore, under: str, *, finish: bool = True) -> tuple[KeyRecord, KeyVersion]:
    """A key whose first version is WRAPPED under ``under``: PENDING row, blob, then finished."""
    key, version = make_key()
    version = replace(version, residency=Residency.WRAPPED)
    store.insert_creating_key(key, version)
    wrapped = blob(under, version.token_id)
    assert store.set_wrapped_material(key.key_id, 1, version.token_id, wrapped)
    version = replace(version, wrapped=wrapped)
    if finish:
        assert store.finish_creating_key(key.key_id)
        key, version = key.with_state(KeyState.ENABLED), replace(version, state=VersionState.ACTIVE)
    return key, version


def states(store: MetadataStore) -> dict[str, DomainKeyState]:
    return {key.domain_key_id: key.state for key in store.list_domain_keys()}


# -- the domain keys' life -----------------------------------------------------


def test_a_domain_key_is_pending_then_active_and_retires_the_previous_one(store: MetadataStore) -> None:
    pending = DomainKey(domain_key_id(1), DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, T0)
    store.insert_domain_key(pending)
    assert store.list_domain_keys() == [pending]

    assert store.activate_domain_key(domain_key_id(1), T0, replacing=None) is True
    assert store.activate_domain_key(domain_key_id(1), T0, replacing=None) is False  # not PENDING any more
    add_domain_key(store, 2, created_at=LATER)

    first, second = store.list_domain_keys()
    assert first == replace(pending, state=DomainKeyState.RETIRING, activated_at=T0, retiring_since=LATER)
    assert second.domain_key_id == domain_key_id(2)
    assert (second.state, second.activated_at, second.retiring_since) == (DomainKeyState.ACTIVE, LATER, None)
    assert first.created_at.utcoffset() == timedelta(0)


def test_each_key_store_has_its_own_active_domain_key(store: MetadataStore) -> None:
    add_domain_key(store, 1)
    add_domain_key(store, 2, key_store_id="cks-1234567890abcdef0")
    add_domain_key(store, 3, created_at=LATER)
    assert states(store) == {
        domain_key_id(1): DomainKeyState.RETIRING,
        domain_key_id(2): DomainKeyState.ACTIVE,
        domain_key_id(3): DomainKeyState.ACTIVE,
    }
    assert [k.domain_key_id for k in store.list_domain_keys("cks-1234567890abcdef0")] == [domain_key_id(2)]
    assert [k.domain_key_id for k in store.list_domain_keys(DEFAULT_KEY_STORE_ID)] == [
        domain_key_id(1),
        domain_key_id(3),
    ]
    assert store.list_domain_keys("cks-none") == []


def test_an_activation_that_expected_another_active_key_changes_nothing(store: MetadataStore) -> None:
    """Two processes saw no ACTIVE key and each made one: the second activation must not retire
    the first's (a compare-and-set on the store's ACTIVE key)."""
    for n in (1, 2):
        store.insert_domain_key(
            DomainKey(domain_key_id(n), DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, T0)
        )
    assert store.activate_domain_key(domain_key_id(1), T0, replacing=None) is True
    assert store.activate_domain_key(domain_key_id(2), LATER, replacing=None) is False
    assert states(store) == {
        domain_key_id(1): DomainKeyState.ACTIVE,
        domain_key_id(2): DomainKeyState.PENDING,
    }

    store.insert_domain_key(
        DomainKey(domain_key_id(3), DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, LATER)
    )
    assert store.activate_domain_key(domain_key_id(3), LATER, replacing=domain_key_id(2)) is False
    assert store.activate_domain_key(domain_key_id(3), LATER, replacing=domain_key_id(1)) is True
    assert states(store) == {
        domain_key_id(1): DomainKeyState.RETIRING,
        domain_key_id(2): DomainKeyState.PENDING,
        domain_key_id(3): DomainKeyState.ACTIVE,
    }


def test_insert_refuses_a_taken_id_and_a_key_that_is_not_pending(store: MetadataStore) -> None:
    add_domain_key(store, 1)
    with pytest.raises(errors.AlreadyExistsException):
        store.insert_domain_key(
            DomainKey(domain_key_id(1), DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, T0)
        )
    with pytest.raises(ValueError, match="PENDING"):
        store.insert_domain_key(
            DomainKey(domain_key_id(2), DEFAULT_KEY_STORE_ID, DomainKeyState.ACTIVE, MECHANISM, T0)
        )
    assert list(states(store)) == [domain_key_id(1)]


def test_only_a_pending_domain_key_is_deleted(store: MetadataStore) -> None:
    add_domain_key(store, 1)
    store.insert_domain_key(
        DomainKey(domain_key_id(2), DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, LATER)
    )
    assert store.delete_pending_domain_key(domain_key_id(1)) is False
    assert store.delete_pending_domain_key(domain_key_id(2)) is True
    assert store.delete_pending_domain_key(domain_key_id(2)) is False
    assert store.activate_domain_key(domain_key_id(2), LATER, replacing=domain_key_id(1)) is False
    assert states(store) == {domain_key_id(1): DomainKeyState.ACTIVE}


# -- wrapped material ---------------------------------------------------------------


def test_a_wrapped_versions_material_round_trips(store: MetadataStore) -> None:
    under = add_domain_key(store, 1)
    key, version = add_wrapped_key(store, under)

    assert store.get_version(key.key_id, 1) == version
    assert store.list_versions(key.key_id) == [version]
    assert version.material.wrapped == version.wrapped == blob(under, version.token_id)
    assert version.material.handle == version.token_id
    # Recovery reads a creation's versions through a join (VERSION_COLUMNS): the blob comes too.
    _, pending = add_wrapped_key(store, under, finish=False)
    [creation] = store.list_pending_creations(T0 + timedelta(days=1))
    assert creation.versions == [pending]


def test_set_wrapped_material_only_on_a_pending_wrapped_version_under_a_usable_domain_key(
    store: MetadataStore,
) -> None:
    under = add_domain_key(store, 1)
    key, version = make_key()
    version = replace(version, residency=Residency.WRAPPED)
    store.insert_creating_key(key, version)
    token_object, plain = make_key()
    store.insert_creating_key(token_object, plain)
    store.insert_domain_key(
        DomainKey(domain_key_id(2), DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, T0)
    )

    assert store.set_wrapped_material(key.key_id, 1, new_token_id(), blob(under)) is False  # another row
    assert store.set_wrapped_material(key.key_id, 2, version.token_id, blob(under)) is False  # no row
    assert store.set_wrapped_material(token_object.key_id, 1, plain.token_id, blob(under)) is False
    assert store.set_wrapped_material(key.key_id, 1, version.token_id, blob(domain_key_id(2))) is False
    assert store.set_wrapped_material(key.key_id, 1, version.token_id, blob(domain_key_id(9))) is False
    assert store.get_version(key.key_id, 1) == version  # nothing stored

    assert store.set_wrapped_material(key.key_id, 1, version.token_id, blob(under)) is True
    store.finish_creating_key(key.key_id)
    assert store.set_wrapped_material(key.key_id, 1, version.token_id, blob(under, b"again")) is False
    stored = store.get_version(key.key_id, 1)
    assert stored is not None and stored.wrapped == blob(under)


def test_finish_creating_key_stores_the_blob_with_the_enabled_key_in_one_step(store: MetadataStore) -> None:
    under = add_domain_key(store, 1)
    key, version = make_key()
    version = replace(version, residency=Residency.WRAPPED)
    store.insert_creating_key(key, version)
    assert store.finish_creating_key(key.key_id, wrapped=blob(under)) is True
    assert store.get_key(key.key_id) == key.with_state(KeyState.ENABLED)
    finished = replace(version, state=VersionState.ACTIVE, wrapped=blob(under))
    assert store.get_version(key.key_id, 1) == finished


def test_finish_creating_key_changes_nothing_when_the_blobs_domain_key_no_longer_wraps(
    store: MetadataStore,
) -> None:
    store.insert_domain_key(
        DomainKey(domain_key_id(2), DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, T0)
    )
    key, version = make_key()
    version = replace(version, residency=Residency.WRAPPED)
    store.insert_creating_key(key, version)
    assert store.finish_creating_key(key.key_id, wrapped=blob(domain_key_id(2))) is False
    assert store.get_key(key.key_id) == key  # still CREATING: recovery rolls it back
    assert store.get_version(key.key_id, 1) == version


def whole_wrapped_key(under: str) -> tuple[KeyRecord, KeyVersion]:
    key, version = make_key()
    return key.with_state(KeyState.ENABLED), replace(
        version, state=VersionState.ACTIVE, residency=Residency.WRAPPED, wrapped=blob(under)
    )


def test_insert_wrapped_key_writes_the_enabled_key_with_its_blob_at_once(store: MetadataStore) -> None:
    under = add_domain_key(store, 1)
    key, version = whole_wrapped_key(under)
    assert store.insert_wrapped_key(key, version, '{"policy": 1}') is True
    assert store.get_key(key.key_id) == key
    assert store.get_version(key.key_id, 1) == version
    assert store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    assert store.count_customer_keys(key.tenant) == 1
    assert store.count_wrapped_under(under) == 1
    with pytest.raises(errors.AlreadyExistsException):
        store.insert_wrapped_key(key, version)


def test_insert_wrapped_key_writes_nothing_under_a_domain_key_that_no_longer_wraps(
    store: MetadataStore,
) -> None:
    store.insert_domain_key(
        DomainKey(domain_key_id(2), DEFAULT_KEY_STORE_ID, DomainKeyState.PENDING, MECHANISM, T0)
    )
    add_domain_key(store, 3, key_store_id="cks-1234567890abcdef0")
    for under in (domain_key_id(2), domain_key_id(3), domain_key_id(9)):
        key, version = whole_wrapped_key(under)
        assert store.insert_wrapped_key(key, version) is False
        assert store.get_key(key.key_id) is None


def test_insert_wrapped_key_takes_only_an_enabled_key_and_its_active_wrapped_version(
    store: MetadataStore,
) -> None:
    under = add_domain_key(store, 1)
    key, version = whole_wrapped_key(under)
    for wrong_key, wrong_version in (
        (key.with_state(KeyState.CREATING), version),
        (key, replace(version, state=VersionState.PENDING)),
        (key, replace(version, wrapped=None)),
        (key, replace(version, residency=Residency.TOKEN_OBJECT)),
    ):
        with pytest.raises(ValueError, match=r"ENABLED|ACTIVE|WRAPPED"):
            store.insert_wrapped_key(wrong_key, wrong_version)
    assert store.get_key(key.key_id) is None


def test_a_blob_goes_only_to_a_version_of_the_domain_keys_key_store(store: MetadataStore) -> None:
    add_domain_key(store, 1, key_store_id="cks-1234567890abcdef0")
    key, version = make_key()
    store.insert_creating_key(key, replace(version, residency=Residency.WRAPPED))
    assert store.set_wrapped_material(key.key_id, 1, version.token_id, blob(domain_key_id(1))) is False


def test_a_rotations_wrapped_version_gets_its_blob_while_pending(store: MetadataStore) -> None:
    under = add_domain_key(store, 1)
    key, first = add_wrapped_key(store, under)
    second = KeyVersion(
        key.key_id, 2, new_token_id(), VersionState.PENDING, LATER, RotationType.ON_DEMAND,
        residency=Residency.WRAPPED,
    )  # fmt: skip
    assert store.insert_pending_version(second, 25)
    assert store.set_wrapped_material(key.key_id, 2, second.token_id, blob(under, b"2"))
    assert store.list_pending_versions(LATER + timedelta(seconds=1)) == [
        replace(second, wrapped=blob(under, b"2"))
    ]
    assert store.finish_rotation(key.key_id, 2, second.token_id, None)
    assert [v.wrapped for v in store.list_versions(key.key_id)] == [first.wrapped, blob(under, b"2")]
    assert store.count_wrapped_under(under) == 2


# -- the re-wrap ----------------------------------------------------------------------


def test_rewrap_claims_batches_and_finishes_by_compare_and_set(store: MetadataStore) -> None:
    old = add_domain_key(store, 1)
    wrapped = [add_wrapped_key(store, old)[1] for _ in range(5)]
    _, pending = add_wrapped_key(store, old, finish=False)  # a creation in progress counts too
    new = add_domain_key(store, 2, created_at=LATER)
    assert store.count_wrapped_under(old) == 6

    first = store.claim_rewrap_batch(old, "node-a", T0, CLAIM_UNTIL, 4)
    second = store.claim_rewrap_batch(old, "node-b", T0, CLAIM_UNTIL, 4)
    assert len(first) == 4 and len(second) == 2
    assert {v.token_id for v in first} | {v.token_id for v in second} == {
        v.token_id for v in [*wrapped, pending]
    }
    assert [(v.key_id, v.version) for v in first] == sorted((v.key_id, v.version) for v in first)
    assert store.claim_rewrap_batch(old, "node-c", T0, CLAIM_UNTIL, 10) == []  # all claimed

    claimed = first[0]
    assert claimed.wrapped is not None and claimed.wrapped.domain_key_id == old
    rewrapped = blob(new, claimed.token_id)
    assert store.finish_rewrap(claimed.key_id, claimed.version, old, "node-b", rewrapped) is False
    assert store.finish_rewrap(claimed.key_id, claimed.version, new, "node-a", rewrapped) is False
    assert store.finish_rewrap(claimed.key_id, claimed.version, old, "node-a", rewrapped) is True
    assert store.finish_rewrap(claimed.key_id, claimed.version, old, "node-a", rewrapped) is False
    after = store.get_version(claimed.key_id, claimed.version)
    assert after is not None and after.wrapped == rewrapped and after.state is claimed.state
    assert (store.count_wrapped_under(old), store.count_wrapped_under(new)) == (5, 1)

    # Expired claims are taken over; the first claimant can no longer finish those.
    taken_over = store.claim_rewrap_batch(old, "node-c", CLAIM_UNTIL + timedelta(seconds=1), LATER, 10)
    assert {v.token_id for v in taken_over} == {v.token_id for v in [*first[1:], *second]}
    late = first[1]
    assert store.finish_rewrap(late.key_id, late.version, old, "node-a", blob(new, late.token_id)) is False
    for version in taken_over:
        assert store.finish_rewrap(
            version.key_id, version.version, old, "node-c", blob(new, version.token_id)
        )
    assert (store.count_wrapped_under(old), store.count_wrapped_under(new)) == (0, 6)
    assert store.claim_rewrap_batch(new, "node-a", T0, CLAIM_UNTIL, 10) != []  # claims were cleared


def test_a_rewrap_to_a_domain_key_being_destroyed_is_refused(store: MetadataStore) -> None:
    old = add_domain_key(store, 1)
    _, version = add_wrapped_key(store, old)
    doomed = add_domain_key(store, 2, created_at=LATER)
    add_domain_key(store, 3, created_at=LATER)
    assert store.begin_domain_key_destruction(doomed, LATER)
    [claimed] = store.claim_rewrap_batch(old, "node-a", T0, CLAIM_UNTIL, 10)
    assert store.finish_rewrap(claimed.key_id, 1, old, "node-a", blob(doomed)) is False
    assert store.get_version(claimed.key_id, 1) == version


def test_claim_rewrap_batch_checks_its_arguments(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.claim_rewrap_batch(domain_key_id(1), "node-a", T0, CLAIM_UNTIL, 0)
    with pytest.raises(ValueError, match="aware"):
        store.claim_rewrap_batch(domain_key_id(1), "node-a", T0.replace(tzinfo=None), CLAIM_UNTIL, 1)


def test_concurrent_claimants_never_get_the_same_row(store: MetadataStore) -> None:
    """Issue 18: "two nodes on PostgreSQL re-wrap each version exactly once" (SKIP LOCKED)."""
    old = add_domain_key(store, 1)
    rows = {add_wrapped_key(store, old)[1].token_id for _ in range(40)}
    new = add_domain_key(store, 2, created_at=LATER)
    done: list[bytes] = []
    failures: list[str] = []
    record = threading.Lock()
    start = threading.Barrier(4)

    def rewrap(claimant: str) -> None:
        try:
            start.wait()
            while batch := store.claim_rewrap_batch(old, claimant, T0, CLAIM_UNTIL, 3):
                for version in batch:
                    moved = store.finish_rewrap(version.key_id, version.version, old, claimant, blob(new))
                    assert moved, "a claimed row was finished by someone else"
                    with record:
                        done.append(version.token_id)
        except BaseException:
            with record:
                failures.append(traceback.format_exc())

    threads = [threading.Thread(target=rewrap, args=(f"node-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert sorted(done) == sorted(rows)
    assert (store.count_wrapped_under(old), store.count_wrapped_under(new)) == (0, 40)


# -- retirement ---------------------------------------------------------------------------


def test_a_domain_key_is_destroyed_only_when_retiring_and_unreferenced(store: MetadataStore) -> None:
    old = add_domain_key(store, 1)
    key, version = add_wrapped_key(store, old)
    assert store.begin_domain_key_destruction(old, LATER) is False  # ACTIVE
    new = add_domain_key(store, 2, created_at=LATER)
    assert store.begin_domain_key_destruction(old, LATER) is False  # a blob is under it
    assert store.mark_domain_key_destroyed(old, LATER) is False  # not DESTROYING

    [claimed] = store.claim_rewrap_batch(old, "node-a", LATER, LATER + timedelta(minutes=1), 10)
    assert store.finish_rewrap(claimed.key_id, claimed.version, old, "node-a", blob(new))
    assert store.begin_domain_key_destruction(old, LATER) is True
    assert store.begin_domain_key_destruction(old, LATER) is False
    assert store.set_wrapped_material(key.key_id, 1, version.token_id, blob(old)) is False
    gone = LATER + timedelta(hours=1)
    assert store.mark_domain_key_destroyed(old, gone) is True
    assert store.mark_domain_key_destroyed(old, gone) is False

    [destroyed, active] = store.list_domain_keys()
    assert (destroyed.state, destroyed.destroying_since, destroyed.destroyed_at) == (
        DomainKeyState.DESTROYED,
        LATER,
        gone,
    )
    assert active.state is DomainKeyState.ACTIVE


def test_a_pending_blob_and_the_destruction_of_its_domain_key_exclude_each_other(
    store: MetadataStore,
) -> None:
    """Whichever commits first wins; never a blob under a key that is being destroyed."""
    old = add_domain_key(store, 1)
    add_domain_key(store, 2, created_at=LATER)
    pending: list[KeyVersion] = []
    for _ in range(20):
        key, version = make_key()
        version = replace(version, residency=Residency.WRAPPED)
        store.insert_creating_key(key, version)
        pending.append(version)
    destroyed: list[bool] = []
    failures: list[str] = []
    start = threading.Barrier(2)

    def store_blobs() -> None:
        try:
            start.wait()
            for version in pending:
                store.set_wrapped_material(version.key_id, 1, version.token_id, blob(old, version.token_id))
        except BaseException:
            failures.append(traceback.format_exc())

    def destroy() -> None:
        try:
            start.wait()
            destroyed.append(store.begin_domain_key_destruction(old, LATER))
        except BaseException:
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=store_blobs), threading.Thread(target=destroy)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    if destroyed == [True]:
        assert store.count_wrapped_under(old) == 0
    else:
        assert store.count_wrapped_under(old) > 0


def test_a_wrapped_versions_destruction_record_names_its_domain_key(store: MetadataStore) -> None:
    under = add_domain_key(store, 1)
    key, _ = add_wrapped_key(store, under)
    plain, plain_version = make_key()
    store.insert_creating_key(plain, plain_version)
    store.finish_creating_key(plain.key_id)
    for doomed in (key, plain):
        assert store.schedule_deletion(doomed.key_id, KeyState.ENABLED, T0, 7)
        assert store.begin_destruction(doomed.key_id)
        store.delete_key(doomed.key_id)
    [record] = store.list_destructions(key.key_id)
    assert (record.residency, record.domain_key_id) == (Residency.WRAPPED, under)
    [plain_record] = store.list_destructions(plain.key_id)
    assert (plain_record.residency, plain_record.domain_key_id) == (Residency.TOKEN_OBJECT, None)


# -- migration 0012 (SQL only) ----------------------------------------------------------------


def test_upgrading_from_0011_keeps_every_version_as_unwrapped_and_unleased(database_url: str) -> None:
    migrate.upgrade(database_url, "0011")
    engine = create_engine_for_url(database_url)
    try:
        key, version = add_enabled_key_as_an_older_release(engine)
        migrate.upgrade(database_url)
        sql_store = SqlMetadataStore(engine)
        assert sql_store.get_key(key.key_id) == key
        assert sql_store.list_versions(key.key_id) == [version]
        assert version.wrapped is None
        assert sql_store.leased_invocations(key.key_id, 1) == 0
        assert sql_store.list_domain_keys() == []
        assert sql_store.latest_material_change_id() == 0
    finally:
        engine.dispose()


def test_downgrading_0012_keeps_every_key_and_version(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = create_engine_for_url(database_url)
    try:
        sql_store = SqlMetadataStore(engine)
        under = add_domain_key(sql_store, 1)
        key, _ = add_wrapped_key(sql_store, under)
        with engine.connect() as connection:
            command.downgrade(migrate.alembic_config(connection), "0011")
        assert migrate.current_revision(database_url) == "0011"
        with engine.connect() as connection:
            assert connection.execute(select(key_versions.c.key_id)).scalars().all() == [key.key_id]
        migrate.upgrade(database_url)
        assert sql_store.get_key(key.key_id) == key
        [version] = sql_store.list_versions(key.key_id)
        assert version.residency is Residency.WRAPPED and version.wrapped is None  # the blob went with 0012
    finally:
        engine.dispose()
