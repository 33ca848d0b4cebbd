"""The metadata cache following the change feed (issue 18): long-lived while the follower is on time,
the short TTL as soon as it is late, and no stale write-back either way (core/cache.py)."""

from __future__ import annotations

from hsmstore.core.cache import (
    FEED_STALENESS_SECONDS,
    FEED_TTL_IN_ORDER_SECONDS,
    FEED_TTL_SECONDS,
    ChangeFeedWatch,
    TtlCache,
)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def followed_cache(
    clock: FakeMonotonic, entry_ttl_seconds: float = FEED_TTL_SECONDS
) -> tuple[TtlCache[str, str], ChangeFeedWatch]:
    watch = ChangeFeedWatch(clock=clock, entry_ttl_seconds=entry_ttl_seconds)
    watch.following_since(clock.now)
    return TtlCache(0.5, clock, watch=watch), watch


def counting(values: list[str], loads: list[str]) -> str:
    loads.append("db")
    return values[len(loads) - 1]


def test_an_entry_lives_past_the_short_ttl_while_the_follower_polls() -> None:
    clock = FakeMonotonic()
    cache, watch = followed_cache(clock)
    loads: list[str] = []
    values = ["v1", "v2"]
    assert cache.get("k", lambda: counting(values, loads)) == "v1"
    for _ in range(200):  # 50 s of polls every 0.25 s
        clock.now += 0.25
        watch.polled(clock.now)
        assert cache.get("k", lambda: counting(values, loads)) == "v1"
    assert loads == ["db"]


def test_the_safety_ttl_ends_an_entry_even_while_the_follower_polls() -> None:
    clock = FakeMonotonic()
    cache, watch = followed_cache(clock)
    loads: list[str] = []
    values = ["v1", "v2"]
    cache.get("k", lambda: counting(values, loads))
    clock.now += FEED_TTL_SECONDS
    watch.polled(clock.now)
    assert cache.get("k", lambda: counting(values, loads)) == "v2"


def test_a_feed_whose_ids_commit_in_order_keeps_an_entry_for_the_hour() -> None:
    clock = FakeMonotonic()
    cache, watch = followed_cache(clock, FEED_TTL_IN_ORDER_SECONDS)
    loads: list[str] = []
    values = ["v1", "v2"]
    cache.get("k", lambda: counting(values, loads))
    clock.now += FEED_TTL_SECONDS * 10
    watch.polled(clock.now)
    assert cache.get("k", lambda: counting(values, loads)) == "v1"
    clock.now = 100.0 + FEED_TTL_IN_ORDER_SECONDS
    watch.polled(clock.now)
    assert cache.get("k", lambda: counting(values, loads)) == "v2"


def test_a_late_follower_brings_back_the_short_ttl() -> None:
    clock = FakeMonotonic()
    cache, watch = followed_cache(clock)
    loads: list[str] = []
    values = ["v1", "v2", "v3"]
    watch.polled(clock.now)
    cache.get("k", lambda: counting(values, loads))
    clock.now += FEED_STALENESS_SECONDS - 0.01
    assert cache.get("k", lambda: counting(values, loads)) == "v1"  # the last poll is recent enough
    clock.now += 0.02  # no poll started in the last FEED_STALENESS_SECONDS: the follower is late
    assert cache.get("k", lambda: counting(values, loads)) == "v2"
    clock.now += 0.49
    assert cache.get("k", lambda: counting(values, loads)) == "v2"  # the short TTL still holds
    clock.now += 0.01
    assert cache.get("k", lambda: counting(values, loads)) == "v3"


def test_a_follower_that_never_polled_vouches_for_nothing() -> None:
    clock = FakeMonotonic()
    cache, _ = followed_cache(clock)
    cache.get("k", lambda: "v1")
    clock.now += 0.5
    assert cache.get("k", lambda: "v2") == "v2"


def test_entries_loaded_before_the_follower_began_keep_the_short_ttl() -> None:
    clock = FakeMonotonic()
    watch = ChangeFeedWatch(clock=clock)
    cache: TtlCache[str, str] = TtlCache(0.5, clock, watch=watch)
    cache.get("k", lambda: "before")
    clock.now += 0.1
    watch.following_since(clock.now)  # changes committed before this instant may be missed
    watch.polled(clock.now)
    clock.now += 0.45
    assert cache.get("k", lambda: "after") == "after"
    clock.now += 0.1
    watch.polled(clock.now)
    assert cache.get("k", lambda: "later") == "after"  # loaded while followed: kept


def test_a_poll_marks_its_start_not_its_end() -> None:
    """A poll that began before a change committed may not have seen it: only its start counts."""
    clock = FakeMonotonic()
    watch = ChangeFeedWatch(clock=clock)
    watch.following_since(clock.now)
    started = clock.now
    clock.now += 0.7  # a slow poll
    watch.polled(started)
    assert watch.vouches_for(started, clock.now)
    clock.now += 0.06
    assert not watch.vouches_for(started, clock.now)
    watch.polled(started - 1.0)  # an older poll finishing late never moves the mark back
    clock.now = started + 0.5
    assert watch.vouches_for(started, clock.now)


def test_the_follower_drop_is_seen_at_once() -> None:
    clock = FakeMonotonic()
    cache, watch = followed_cache(clock)
    watch.polled(clock.now)
    cache.get("k", lambda: "old")
    clock.now += 5.0
    watch.polled(clock.now)
    cache.invalidate("k")
    assert cache.get("k", lambda: "new") == "new"


def test_a_read_racing_the_follower_cannot_put_the_old_value_back() -> None:
    clock = FakeMonotonic()
    cache, watch = followed_cache(clock)
    watch.polled(clock.now)

    def load_while_the_follower_drops() -> str:
        cache.invalidate("k")  # the change committed and was dropped while this read was in flight
        return "old"

    assert cache.get("k", load_while_the_follower_drops) == "old"
    clock.now += 5.0
    watch.polled(clock.now)
    assert cache.get("k", lambda: "new") == "new"


def test_a_read_racing_a_full_generation_table_cannot_put_the_old_value_back() -> None:
    clock = FakeMonotonic()
    watch = ChangeFeedWatch(clock=clock)
    cache: TtlCache[int, str] = TtlCache(0.5, clock, max_entries=3, watch=watch)

    def load_while_many_change() -> str:
        for key in range(5):  # more invalidations than the table keeps: it is dropped whole
            cache.invalidate(key)
        return "old"

    assert cache.get(0, load_while_many_change) == "old"
    assert cache.get(0, lambda: "new") == "new"


def test_zero_ttl_caches_nothing_even_when_followed() -> None:
    clock = FakeMonotonic()
    watch = ChangeFeedWatch(clock=clock)
    watch.following_since(clock.now)
    watch.polled(clock.now)
    cache: TtlCache[str, int] = TtlCache(0.0, clock, watch=watch)
    values = iter([1, 2])
    assert cache.get("k", lambda: next(values)) == 1
    assert cache.get("k", lambda: next(values)) == 2


def test_follow_attaches_the_watch_later() -> None:
    clock = FakeMonotonic()
    watch = ChangeFeedWatch(clock=clock)
    cache: TtlCache[str, str] = TtlCache(0.5, clock)
    cache.follow(watch)
    watch.following_since(clock.now)
    cache.get("k", lambda: "v1")
    clock.now += 2.0
    watch.polled(clock.now)
    assert cache.get("k", lambda: "v2") == "v1"
