"""The metadata cache: bounded staleness, invalidation, no stale write-back."""

from __future__ import annotations

from hsmstore.core.cache import TtlCache


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_served_from_the_cache_until_it_expires() -> None:
    clock = FakeMonotonic()
    cache: TtlCache[str, str] = TtlCache(0.5, clock)
    loads: list[str] = []
    assert cache.get("k", lambda: loads.append("db") or "v1") == "v1"
    assert cache.get("k", lambda: loads.append("db") or "v2") == "v1"
    clock.now += 0.5
    assert cache.get("k", lambda: loads.append("db") or "v2") == "v2"
    assert loads == ["db", "db"]


def test_invalidation_is_seen_at_once() -> None:
    cache: TtlCache[str, str] = TtlCache(10.0, FakeMonotonic())
    cache.get("k", lambda: "old")
    cache.invalidate("k")
    assert cache.get("k", lambda: "new") == "new"


def test_a_read_racing_an_invalidation_does_not_cache_the_old_value() -> None:
    cache: TtlCache[str, str] = TtlCache(10.0, FakeMonotonic())

    def load_while_someone_writes() -> str:
        cache.invalidate("k")  # the write lands while this read is in flight
        return "old"

    assert cache.get("k", load_while_someone_writes) == "old"
    assert cache.get("k", lambda: "new") == "new"


def test_missing_values_are_not_cached() -> None:
    cache: TtlCache[str, str] = TtlCache(10.0, FakeMonotonic())
    assert cache.get("k", lambda: None) is None
    assert cache.get("k", lambda: "now there") == "now there"


def test_zero_ttl_disables_caching() -> None:
    cache: TtlCache[str, int] = TtlCache(0.0, FakeMonotonic())
    values = iter([1, 2])
    assert cache.get("k", lambda: next(values)) == 1
    assert cache.get("k", lambda: next(values)) == 2
