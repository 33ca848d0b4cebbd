"""First-use reservations (issue 18, migration 0015): a process's first encryption under a version
takes no lease on the call, and first uses and leases together never pass the AES-GCM limit."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from hsmstore.core.keys.material import VersionMaterial
from hsmstore.core.keys.usage_limit import (
    BACKGROUND_QUEUE,
    FIRST_USE_MIN_LIMIT,
    FIRST_USES_PER_VERSION,
    RESERVATION_REFRESH_SECONDS,
    UsageLimit,
    _BackgroundJobs,
    first_use_headroom,
    first_uses_per_version,
)
from hsmstore.core.model import KeyRecord
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.vault import FakeKeyVault
from tests.unit.test_usage_limit import ALICE, LeasingStore, process


class Exhausted(Exception):
    """Raised by the test's ``rotate``: the version's leases ran out."""


def refuse_rotation(_key: KeyRecord) -> bool:
    raise Exhausted


class Jobs:
    """The background of a UsageLimit, run when the test says so; ``refusing``: a full queue."""

    def __init__(self) -> None:
        self.queued: list[Callable[[], None]] = []
        self.refusing = False

    def submit(self, job: Callable[[], None]) -> bool:
        if self.refusing:
            return False
        self.queued.append(job)
        return True

    def run(self) -> int:
        ran = 0
        while self.queued:
            self.queued.pop(0)()
            ran += 1
        return ran


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def usage_limit(
    store: LeasingStore,
    vault: FakeKeyVault,
    limit: int,
    background: Callable[[Callable[[], None]], bool],
    clock: Callable[[], float] | None = None,
    **sizes: int,
) -> UsageLimit:
    """One process's usage limit over the shared fake DB."""
    material = VersionMaterial(store, TokenKeyStores([vault]))
    return UsageLimit(
        store, store, material, refuse_rotation, limit, background=background, clock=clock or Clock(), **sizes
    )


def test_a_limit_lowered_for_a_test_has_no_first_uses_and_no_headroom() -> None:
    assert first_uses_per_version(1000) == 0 and first_use_headroom(1000) == 0
    assert first_uses_per_version(FIRST_USE_MIN_LIMIT) == FIRST_USES_PER_VERSION
    assert first_use_headroom(2**32) == 2**24


def test_first_uses_under_a_version_older_than_the_reservation_take_no_lease_on_the_call() -> None:
    """A key used once writes nothing; one used again leases its next block in the background
    once half of its first uses are spent."""
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 2**32)
    warm, cold = (service.creation.create_key(ALICE).key for _ in range(2))
    jobs, clock = Jobs(), Clock()
    limit = usage_limit(store, vault, 2**32, jobs.submit, clock)

    assert limit.spend(warm)[0] == 1
    assert store.lease_calls == 1, "no reservation yet: the first call leases"
    assert jobs.run() == 1 and store.reserved_total() == FIRST_USES_PER_VERSION, (
        "and one reservation is made aside"
    )

    assert limit.spend(cold)[0] == 1
    assert store.lease_calls == 1, "a version older than the reservation: no lease on the call"
    assert store.leased_invocations(cold.key_id, 1) == 0 and jobs.queued == []
    half = first_uses_per_version(2**32) // 2
    for _ in range(half - 1):
        limit.spend(cold)
    assert store.lease_calls == 1 and len(jobs.queued) == 1, "half spent: a lease is queued"
    assert jobs.run() == 1 and store.lease_calls == 2
    for _ in range(100):
        limit.spend(cold)
    assert store.lease_calls == 2 and jobs.queued == []


def test_a_version_made_after_the_reservation_is_leased_and_asks_for_a_new_one_later() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 2**32)
    warm = service.creation.create_key(ALICE).key
    jobs, clock = Jobs(), Clock()
    limit = usage_limit(store, vault, 2**32, jobs.submit, clock)
    limit.spend(warm)
    jobs.run()
    newer = service.creation.create_key(ALICE).key

    limit.spend(newer)
    assert store.lease_calls == 2, "made after the reservation: leased on the call"
    assert jobs.queued == [], "the reservation is recent: no new one"
    later = service.creation.create_key(ALICE).key
    clock.now += RESERVATION_REFRESH_SECONDS
    limit.spend(later)
    assert store.lease_calls == 3 and jobs.run() == 1 and store.reserved_total() == 2 * FIRST_USES_PER_VERSION
    last = service.creation.create_key(ALICE).key  # made after the second reservation
    other = usage_limit(store, vault, 2**32, jobs.submit, clock)
    other.spend(warm)
    jobs.run()  # a third reservation, which covers ``last``
    other.spend(last)
    assert store.lease_calls == 4 and store.leased_invocations(last.key_id, 1) == 0


def test_a_first_use_is_spent_once_per_version_in_a_process() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 2**32)
    warm, cold = (service.creation.create_key(ALICE).key for _ in range(2))
    jobs = Jobs()
    limit = usage_limit(store, vault, 2**32, jobs.submit, first_uses=1)
    limit.spend(warm)
    jobs.run()
    jobs.refusing = True  # no lease ahead: no allowance follows the first use
    limit.spend(cold)
    assert store.lease_calls == 1
    limit.spend(cold)
    assert store.lease_calls == 2, "its first use is spent: the second use leases"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("first_uses", "headroom"), [(1, 8), (4, 16), (3, 8)])
def test_first_uses_and_leases_of_many_processes_never_pass_the_limit(
    seed: int, first_uses: int, headroom: int
) -> None:
    """Twenty processes, each reserving ``first_uses``, at a limit of 100: leases stop at
    ``100 - headroom``, the reservations that fit whole in the version's headroom are spent and
    the rest are not, so spending until every lease is refused makes exactly ``100 - headroom``
    plus what fitted, and never more than 100."""
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 2**32)
    warm, key = (service.creation.create_key(ALICE).key for _ in range(2))
    processes = []
    for _ in range(20):
        jobs = Jobs()
        limit = usage_limit(store, vault, 100, jobs.submit, first_uses=first_uses, headroom=headroom)
        limit.spend(warm)  # makes its reservation
        jobs.run()
        processes.append((limit, jobs))
    assert store.reserved_total() == 20 * first_uses

    made, order = 0, random.Random(seed)
    live = list(processes)
    while live:
        limit, jobs = order.choice(live)
        try:
            assert limit.spend(key)[0] == 1
            made += 1
        except Exhausted:
            live.remove((limit, jobs))
        if order.random() < 0.5:
            jobs.run()
    fitted = headroom // first_uses * first_uses
    assert made == 100 - headroom + fitted <= 100
    assert store.leased_invocations(key.key_id, 1) == 100 - headroom


def test_background_jobs_run_in_order_on_one_thread_and_a_full_queue_refuses() -> None:
    jobs = _BackgroundJobs()
    started, release = threading.Event(), threading.Event()
    ran: list[tuple[int, str]] = []

    def blocking() -> None:
        started.set()
        release.wait(10)

    assert jobs.submit(blocking)
    assert started.wait(10)
    accepted = [
        jobs.submit(lambda n=n: ran.append((n, threading.current_thread().name)))
        for n in range(BACKGROUND_QUEUE + 1)
    ]
    assert accepted == [True] * BACKGROUND_QUEUE + [False], "a full queue refuses; the use leases"
    release.set()
    deadline = time.monotonic() + 10
    while len(ran) < BACKGROUND_QUEUE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [n for n, _ in ran] == list(range(BACKGROUND_QUEUE))
    assert {name for _, name in ran} == {"usage-leases"}
