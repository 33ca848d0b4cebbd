"""Domain keys (issue 18): creation, rotation, the re-wrap, retirement, recovery and the followers.

The DB side is an in-memory ``DomainKeyRecords`` with the port's compare-and-sets and claims;
the token side a fake ``WrappedKeys`` whose "blob" names the domain key it was wrapped under,
so a blob only unwraps while that key exists on the fake token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hsmstore.core.keys.domain_keys import DomainKeyService, domain_key_status
from hsmstore.core.keys.material import VersionMaterial
from hsmstore.core.keys.material_follower import MaterialFollower
from hsmstore.core.model import (
    DestructionRecord,
    DomainKey,
    DomainKeyState,
    KeyMaterialRef,
    KeyVersion,
    Residency,
    VersionState,
    WrappedMaterial,
)
from hsmstore.core.ports.wrapped_keys import DomainKeyRecords, MaterialChanges, WrappedKeys
from hsmstore.errors import KeyUnavailableException

STORE_ID = "default"
MECHANISM = "AES_KEY_WRAP_PAD"


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


class FakeRecords:
    """``DomainKeyRecords`` in memory, one lock per call (one transaction)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.keys: dict[str, DomainKey] = {}
        self.versions: dict[tuple[str, int], KeyVersion] = {}
        self.claims: dict[tuple[str, int], tuple[str, datetime]] = {}
        self.rewraps: list[tuple[str, int, str]] = []  # every successful finish_rewrap
        self.destructions: list[DestructionRecord] = []

    def add_version(self, key_id: str, version: int, domain_key_id: str) -> KeyVersion:
        token_id = f"{key_id}-{version}".encode().ljust(16, b"\0")[:16]
        row = KeyVersion(
            key_id=key_id,
            version=version,
            token_id=token_id,
            state=VersionState.ACTIVE,
            creation_date=datetime(2026, 1, 1, tzinfo=UTC),
            residency=Residency.WRAPPED,
            wrapped=WrappedMaterial(domain_key_id, MECHANISM, blob_of(domain_key_id, token_id)),
        )
        self.versions[(key_id, version)] = row
        return row

    def insert_domain_key(self, key: DomainKey) -> None:
        with self.lock:
            assert key.domain_key_id not in self.keys
            self.keys[key.domain_key_id] = key

    def activate_domain_key(self, domain_key_id: str, now: datetime, *, replacing: str | None) -> bool:
        with self.lock:
            key = self.keys.get(domain_key_id)
            if key is None or key.state is not DomainKeyState.PENDING:
                return False
            active = [
                other
                for other in self.keys.values()
                if other.key_store_id == key.key_store_id and other.state is DomainKeyState.ACTIVE
            ]
            if [other.domain_key_id for other in active] != ([] if replacing is None else [replacing]):
                return False
            for other in active:
                self.keys[other.domain_key_id] = replace(
                    other, state=DomainKeyState.RETIRING, retiring_since=now
                )
            self.keys[domain_key_id] = replace(key, state=DomainKeyState.ACTIVE, activated_at=now)
            return True

    def delete_pending_domain_key(self, domain_key_id: str) -> bool:
        with self.lock:
            key = self.keys.get(domain_key_id)
            if key is None or key.state is not DomainKeyState.PENDING:
                return False
            del self.keys[domain_key_id]
            return True

    def list_domain_keys(self, key_store_id: str | None = None) -> Sequence[DomainKey]:
        with self.lock:
            return sorted(
                (k for k in self.keys.values() if key_store_id in (None, k.key_store_id)),
                key=lambda k: k.created_at,
            )

    def set_wrapped_material(
        self, key_id: str, version: int, token_id: bytes, wrapped: WrappedMaterial
    ) -> bool:
        raise NotImplementedError

    def claim_rewrap_batch(
        self, domain_key_id: str, claimant: str, now: datetime, claim_until: datetime, limit: int
    ) -> Sequence[KeyVersion]:
        with self.lock:
            claimed: list[KeyVersion] = []
            for entry, row in sorted(self.versions.items()):
                if len(claimed) == limit:
                    break
                if row.wrapped is None or row.wrapped.domain_key_id != domain_key_id:
                    continue
                claim = self.claims.get(entry)
                if claim is not None and claim[1] > now:
                    continue
                self.claims[entry] = (claimant, claim_until)
                claimed.append(row)
            return claimed

    def finish_rewrap(
        self, key_id: str, version: int, old_domain_key_id: str, claimant: str, wrapped: WrappedMaterial
    ) -> bool:
        with self.lock:
            row = self.versions.get((key_id, version))
            claim = self.claims.get((key_id, version))
            target = self.keys.get(wrapped.domain_key_id)
            if (
                row is None
                or row.wrapped is None
                or row.wrapped.domain_key_id != old_domain_key_id
                or claim is None
                or claim[0] != claimant
                or target is None
                or target.state not in (DomainKeyState.ACTIVE, DomainKeyState.RETIRING)
            ):
                return False
            self.versions[(key_id, version)] = replace(row, wrapped=wrapped)
            del self.claims[(key_id, version)]
            self.rewraps.append((key_id, version, claimant))
            return True

    def count_wrapped_under(self, domain_key_id: str) -> int:
        with self.lock:
            return sum(
                1 for r in self.versions.values() if r.wrapped and r.wrapped.domain_key_id == domain_key_id
            )

    def begin_domain_key_destruction(self, domain_key_id: str, now: datetime) -> bool:
        with self.lock:
            key = self.keys[domain_key_id]
            if key.state is not DomainKeyState.RETIRING or self.count_wrapped_under(domain_key_id):
                return False
            self.keys[domain_key_id] = replace(key, state=DomainKeyState.DESTROYING, destroying_since=now)
            return True

    def mark_domain_key_destroyed(self, domain_key_id: str, now: datetime) -> bool:
        with self.lock:
            key = self.keys[domain_key_id]
            if key.state is not DomainKeyState.DESTROYING:
                return False
            self.keys[domain_key_id] = replace(key, state=DomainKeyState.DESTROYED, destroyed_at=now)
            return True

    def list_destructions(self, key_id: str | None = None) -> Sequence[DestructionRecord]:
        return list(self.destructions)

    def get_version(self, key_id: str, version: int) -> KeyVersion | None:
        return self.versions.get((key_id, version))


def blob_of(domain_key_id: str, token_id: bytes) -> bytes:
    return domain_key_id.encode() + b"|" + token_id


class FakeWrappedKeys:
    """The token side: domain keys as a set; a blob unwraps only while its domain key exists."""

    def __init__(self, key_store_id: str = STORE_ID) -> None:
        self.key_store_id = key_store_id
        self.domain_keys: set[str] = set()
        self.released: list[bytes] = []
        self.released_domain_keys: list[str] = []
        self.rewrapped = 0
        self.on_create: list[Callable[[], None]] = []
        self.unwrappable: set[bytes] = set()  # token ids whose blob is corrupt

    @property
    def wrap_mechanism(self) -> str:
        return MECHANISM

    def create_domain_key(self, domain_key_id: str) -> None:
        for hook in self.on_create:
            hook()
        self.domain_keys.add(domain_key_id)

    def destroy_domain_key(self, domain_key_id: str) -> bool:
        self.release_domain_key(domain_key_id)
        if domain_key_id in self.domain_keys:
            self.domain_keys.discard(domain_key_id)
            return True
        return False

    def domain_key_exists(self, domain_key_id: str) -> bool:
        return domain_key_id in self.domain_keys

    def create_wrapped_key(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        return WrappedMaterial(domain_key_id, MECHANISM, blob_of(domain_key_id, material.handle))

    def rewrap(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        assert material.wrapped is not None
        old = material.wrapped.domain_key_id
        if old not in self.domain_keys or material.handle in self.unwrappable:
            raise KeyUnavailableException("the blob does not unwrap")
        assert domain_key_id in self.domain_keys
        self.rewrapped += 1
        return WrappedMaterial(domain_key_id, MECHANISM, blob_of(domain_key_id, material.handle))

    def release(self, token_ids: Collection[bytes]) -> None:
        self.released.extend(token_ids)

    def release_domain_key(self, domain_key_id: str) -> None:
        self.released_domain_keys.append(domain_key_id)

    def cached_material_count(self) -> int:
        return 0


class KeyStoresOf:
    def __init__(self, *stores: FakeWrappedKeys) -> None:
        self.stores = {store.key_store_id: store for store in stores}

    def key_store(self, key_store_id: str) -> FakeWrappedKeys:
        return self.stores[key_store_id]

    def default(self) -> FakeWrappedKeys:
        return next(iter(self.stores.values()))

    def all(self) -> tuple[FakeWrappedKeys, ...]:
        return tuple(self.stores.values())


def _ports_hold(records: FakeRecords, token: FakeWrappedKeys) -> tuple[DomainKeyRecords, WrappedKeys]:
    return records, token


class Crash(Exception):
    """A kill -9 at a failpoint, as the process sees it."""


def crash_at(name: str) -> object:
    def failpoint(reached: str) -> None:
        if reached == name:
            raise Crash(name)

    return failpoint


def run_passes(keys: DomainKeyService, passes: int) -> None:
    for _ in range(passes):
        keys.run_rewrap()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def records() -> FakeRecords:
    return FakeRecords()


@pytest.fixture
def token() -> FakeWrappedKeys:
    return FakeWrappedKeys()


def service(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock, claimant: str = "a", **options: object
) -> DomainKeyService:
    return DomainKeyService(
        records,
        KeyStoresOf(token),  # type: ignore[arg-type]
        clock,
        claimant=claimant,
        poll_seconds=0.0,
        **options,  # type: ignore[arg-type]
    )


def states(records: FakeRecords) -> list[str]:
    return [key.state.value for key in records.list_domain_keys()]


def test_the_fakes_are_the_ports(records: FakeRecords, token: FakeWrappedKeys) -> None:
    _ports_hold(records, token)
    assert isinstance(token, WrappedKeys)


def test_ensure_active_makes_one_domain_key_and_reuses_it(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    keys = service(records, token, clock)
    first = keys.ensure_active(STORE_ID)
    assert keys.ensure_active(STORE_ID) == first
    assert keys.active_domain_key_id(STORE_ID) == first
    assert len(first) == 32 and int(first, 16) >= 0
    assert token.domain_keys == {first}
    assert states(records) == ["ACTIVE"]
    assert records.keys[first].mechanism == MECHANISM


def test_active_domain_key_id_makes_the_first_key_lazily(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    active = service(records, token, clock).active_domain_key_id(STORE_ID)
    assert token.domain_keys == {active}


def test_a_creation_crash_after_the_token_step_is_rolled_back_by_recovery(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    crashing = service(records, token, clock, failpoint=crash_at("domain_key.after_token_create"))
    with pytest.raises(Crash):
        crashing.ensure_active(STORE_ID)
    assert states(records) == ["PENDING"] and len(token.domain_keys) == 1
    restarted = service(records, token, clock, recovery_grace_seconds=60)
    assert restarted.recover() == 0, "a young PENDING row may be another process's creation"
    clock.advance(seconds=61)
    assert restarted.recover() == 1
    assert states(records) == [] and token.domain_keys == set()


def test_a_creation_crash_before_the_token_step_leaves_only_a_row_to_delete(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    with pytest.raises(Crash):
        service(records, token, clock, failpoint=crash_at("domain_key.after_insert")).ensure_active(STORE_ID)
    assert token.domain_keys == set()
    assert service(records, token, clock, recovery_grace_seconds=0).recover() == 1
    assert states(records) == []


def test_a_rotation_racing_another_uses_the_winner_and_leaves_nothing(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    a, b = service(records, token, clock, "a"), service(records, token, clock, "b")
    first = a.ensure_active(STORE_ID)
    won: list[str] = []

    def a_rotates_first() -> None:
        token.on_create.clear()
        won.append(a.rotate(STORE_ID))

    token.on_create.append(a_rotates_first)
    answered = b.rotate(STORE_ID)  # a rotates while b makes its token object
    assert answered == won[0] != first
    assert token.domain_keys == {first, won[0]}, "the loser destroyed its object"
    assert [(k.domain_key_id, k.state.value) for k in records.list_domain_keys()] == [
        (first, "RETIRING"),
        (won[0], "ACTIVE"),
    ]


def test_two_processes_starting_at_once_agree_on_one_domain_key(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both saw no ACTIVE key and both made one; a activates between b's look and b's
    activation. b's activation is refused (it expected none): b rolls back and uses a's key."""
    a, b = service(records, token, clock, "a"), service(records, token, clock, "b")
    activate = records.activate_domain_key
    won: list[str] = []

    def a_activates_first(domain_key_id: str, now: datetime, *, replacing: str | None) -> bool:
        monkeypatch.setattr(records, "activate_domain_key", activate)
        won.append(a.ensure_active(STORE_ID))
        return activate(domain_key_id, now, replacing=replacing)

    monkeypatch.setattr(records, "activate_domain_key", a_activates_first)
    assert b.ensure_active(STORE_ID) == won[0]
    assert token.domain_keys == {won[0]}, "the loser destroyed its object"
    assert [(k.domain_key_id, k.state.value) for k in records.list_domain_keys()] == [(won[0], "ACTIVE")]


def test_rotation_rewraps_every_version_then_destroys_the_old_key_after_the_grace(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    keys = service(records, token, clock, batch=7, grace_seconds=2.0)
    dropped: list[str] = []
    keys.on_drop(dropped.append)
    old = keys.ensure_active(STORE_ID)
    for number in range(50):
        records.add_version(f"key-{number}", 1, old)
    new = keys.rotate(STORE_ID)
    assert states(records) == ["RETIRING", "ACTIVE"]
    progress: list[tuple[str, int, int]] = []
    done = keys.run_rewrap(lambda *seen: progress.append(seen))
    assert (done.rewrapped, done.retired, done.destroyed) == (50, 1, 0)
    assert progress[-1] == (old, 50, 0)
    assert records.count_wrapped_under(new) == 50 and records.count_wrapped_under(old) == 0
    assert states(records) == ["DESTROYING", "ACTIVE"]
    assert old in token.domain_keys, "destroyed only after every process had time to drop it"
    keys.poll()
    assert dropped == [old] and token.released_domain_keys == [old]
    clock.advance(seconds=1)
    assert keys.run_rewrap().destroyed == 0
    clock.advance(seconds=1.5)
    assert keys.run_rewrap().destroyed == 1
    assert token.domain_keys == {new}
    assert states(records) == ["DESTROYED", "ACTIVE"]
    assert records.keys[old].destroyed_at == clock.now()
    keys.poll()
    assert dropped == [old], "dropped once"


def test_two_processes_rewrap_each_version_exactly_once(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    a, b = service(records, token, clock, "a", batch=5), service(records, token, clock, "b", batch=5)
    old = a.ensure_active(STORE_ID)
    for number in range(400):
        records.add_version(f"key-{number:03}", 1, old)
    a.rotate(STORE_ID)
    threads = [threading.Thread(target=s.run_rewrap) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(records.rewraps) == 400
    assert len({(key_id, version) for key_id, version, _ in records.rewraps}) == 400
    assert records.count_wrapped_under(old) == 0


def test_a_rewrap_killed_midway_resumes_after_its_claims_expire(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    for failpoint in ("domain_key.after_rewrap", "domain_key.after_finish_rewrap"):
        records, token = FakeRecords(), FakeWrappedKeys()
        crashing = service(records, token, clock, "a", batch=10, failpoint=crash_at(failpoint))
        old = crashing.ensure_active(STORE_ID)
        for number in range(30):
            records.add_version(f"key-{number:02}", 1, old)
        new = crashing.rotate(STORE_ID)
        with pytest.raises(Crash):
            crashing.run_rewrap()
        restarted = service(records, token, clock, "b", batch=10, claim_seconds=60)
        restarted.run_rewrap()
        assert 0 < records.count_wrapped_under(old) <= 10, "the crashed batch stays claimed"
        clock.advance(seconds=61)
        done = restarted.run_rewrap()
        assert done.retired == 1 and records.count_wrapped_under(new) == 30
        assert len(records.rewraps) == 30


def test_a_crash_between_retirement_steps_is_finished_by_the_next_run(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    for failpoint in ("domain_key.after_begin_destruction", "domain_key.after_token_destroy"):
        records, token = FakeRecords(), FakeWrappedKeys()
        crashing = service(records, token, clock, "a", grace_seconds=0, failpoint=crash_at(failpoint))
        old = crashing.ensure_active(STORE_ID)
        records.add_version("key", 1, old)
        new = crashing.rotate(STORE_ID)
        with pytest.raises(Crash):
            run_passes(crashing, 2)  # retire, then destroy
        service(records, token, clock, "b", grace_seconds=0).run_rewrap()
        assert states(records) == ["DESTROYED", "ACTIVE"]
        assert token.domain_keys == {new}


def test_a_blob_that_does_not_unwrap_keeps_its_domain_key(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    keys = service(records, token, clock)
    old = keys.ensure_active(STORE_ID)
    broken = records.add_version("broken", 1, old)
    records.add_version("fine", 1, old)
    token.unwrappable.add(broken.token_id)
    keys.rotate(STORE_ID)
    done = keys.run_rewrap()
    assert done.rewrapped == 1 and done.retired == 0
    assert states(records) == ["RETIRING", "ACTIVE"] and old in token.domain_keys


def test_the_schedule_rotates_an_old_active_key_once(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    a = service(records, token, clock, "a", rotation_days=7)
    b = service(records, token, clock, "b", rotation_days=7)
    first = a.ensure_active(STORE_ID)
    assert a.rotate_due() == 0
    clock.advance(days=7)
    assert a.rotate_due() == 1
    assert b.rotate_due() == 0, "the other process sees the new ACTIVE key"
    assert states(records) == ["RETIRING", "ACTIVE"]
    assert b.active_domain_key_id(STORE_ID) != first


def test_status_lists_keys_and_deleted_versions_deadlines(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    keys = service(records, token, clock, grace_seconds=0)
    old = keys.ensure_active(STORE_ID)
    records.add_version("live", 1, old)
    deleted_at = clock.now()
    records.destructions.append(
        DestructionRecord(
            "gone", "t", 1, b"t" * 16, deleted_at, deleted_at, residency=Residency.WRAPPED, domain_key_id=old
        )
    )
    _, versions = domain_key_status(records, records)
    assert versions[0].unusable_since is None, "pending the next retirement"
    new = keys.rotate(STORE_ID)
    records.destructions.append(
        DestructionRecord(
            "later", "t", 1, b"u" * 16, deleted_at, deleted_at, residency=Residency.WRAPPED, domain_key_id=new
        )
    )
    keys.run_rewrap()
    clock.advance(seconds=1)
    keys.run_rewrap()
    statuses, versions = domain_key_status(records, records)
    assert [
        (s.key.domain_key_id, s.key.state.value, s.wrapped_versions, s.deleted_versions) for s in statuses
    ] == [
        (old, "DESTROYED", 0, 1),
        (new, "ACTIVE", 1, 1),
    ]
    assert {v.key_id: v.unusable_since for v in versions} == {
        "gone": records.keys[old].destroyed_at,
        "later": None,
    }


# -- VersionMaterial --


def test_version_material_is_a_bounded_lru_that_drops_a_domain_keys_references(records: FakeRecords) -> None:
    for number in range(5):
        records.add_version(f"key-{number}", 1, "dk-old" if number < 3 else "dk-new")
    material = VersionMaterial(records, KeyStoresOf(FakeWrappedKeys()), max_entries=4)  # type: ignore[arg-type]
    for number in range(5):
        assert material.of(f"key-{number}", 1) is not None
    assert material.cached_count() == 4
    material.of("key-1", 1)  # used: kept over key-2
    material.of("key-0", 1)  # read again, key-2 (least recently used) goes
    assert material.cached_count() == 4
    assert material.drop_domain_key("dk-old") == 2
    assert material.cached_count() == 2
    records.versions[("key-1", 1)] = replace(
        records.versions[("key-1", 1)], wrapped=WrappedMaterial("dk-new", MECHANISM, b"x")
    )
    ref = material.of("key-1", 1)
    assert ref is not None and ref.wrapped is not None and ref.wrapped.domain_key_id == "dk-new"


# -- the material change follower --


class FakeChanges:
    def __init__(self) -> None:
        self.rows: list[tuple[int, bytes]] = []
        self.pruned_before: datetime | None = None

    def material_changes_after(self, after_id: int, limit: int) -> Sequence[tuple[int, bytes]]:
        return sorted(row for row in self.rows if row[0] > after_id)[:limit]

    def latest_material_change_id(self) -> int:
        return max((row[0] for row in self.rows), default=0)

    def prune_material_changes(self, before: datetime) -> int:
        self.pruned_before = before
        return 0


def _changes_port(changes: FakeChanges) -> FakeChanges:
    port: MaterialChanges = changes  # the type checker holds the fake to the port
    assert port is changes
    return changes


def test_the_follower_releases_changes_committed_out_of_order(clock: Clock, token: FakeWrappedKeys) -> None:
    changes: FakeChanges = _changes_port(FakeChanges())
    other = FakeWrappedKeys("other")
    follower = MaterialFollower(changes, KeyStoresOf(token, other), None, clock, gap_seconds=3600)  # type: ignore[arg-type]
    follower.follow_once()
    changes.rows += [(1, b"a"), (2, b"b"), (4, b"d")]
    assert follower.follow_once() == 3
    assert follower.follow_once() == 0, "nothing is released twice"
    changes.rows.append((3, b"c"))  # its transaction committed after 4's
    assert follower.follow_once() == 1
    assert sorted(token.released) == [b"a", b"b", b"c", b"d"]
    assert sorted(other.released) == sorted(token.released)
    follower.prune()
    assert changes.pruned_before == clock.now() - timedelta(minutes=10)


def test_the_follower_gives_up_on_a_gap_after_its_time_and_polls_domain_keys(
    clock: Clock, records: FakeRecords, token: FakeWrappedKeys
) -> None:
    changes = FakeChanges()
    keys = service(records, token, clock)
    follower = MaterialFollower(changes, KeyStoresOf(token), keys, clock, gap_seconds=0.0)  # type: ignore[arg-type]
    follower.follow_once()
    changes.rows += [(1, b"a"), (3, b"c")]
    follower.follow_once()
    assert follower._cursor.floor == 3, "the missing id 2 (a rolled-back sequence value) no longer holds it"
    records.insert_domain_key(
        DomainKey("d" * 32, STORE_ID, DomainKeyState.DESTROYING, MECHANISM, clock.now())
    )
    follower.follow_once()
    assert token.released_domain_keys == ["d" * 32]


def test_the_follower_starts_a_window_below_the_newest_change(clock: Clock, token: FakeWrappedKeys) -> None:
    changes = FakeChanges()
    changes.rows += [(number, bytes([number % 256])) for number in range(1, 3001)]
    follower = MaterialFollower(changes, KeyStoresOf(token), None, clock)  # type: ignore[arg-type]
    assert follower.follow_once() == 1000


def test_a_scheduled_rotation_of_a_key_already_replaced_makes_none(
    records: FakeRecords, token: FakeWrappedKeys, clock: Clock
) -> None:
    a, b = service(records, token, clock, "a"), service(records, token, clock, "b")
    old = a.ensure_active(STORE_ID)
    new = a.rotate(STORE_ID)  # after b listed ``old`` as due, before b rotates it
    assert b.rotate(STORE_ID, replacing=old) == new
    assert len(records.keys) == 2 and token.domain_keys == {old, new}
