"""The rate limiter port: token buckets, by name, that every serving process of a node shares.

``core/quotas.py`` decides which bucket a call draws from and at what rate;
``store/rate_buckets.py`` keeps the buckets in a file under the data
directory that every ``--workers`` process maps, so the rate holds for the
node, not for each process. ``tests/fakes/rate_limiter.py`` is the in-memory
fake.
"""

from __future__ import annotations

from typing import Protocol


class RateLimiter(Protocol):
    """Token buckets: ``rate`` tokens a second, at most ``burst`` saved up, one token a call."""

    def try_acquire(self, bucket: str, rate: float, burst: float) -> bool:
        """Take one token from ``bucket`` (made full on first use); False if it has none.

        ``rate`` and ``burst`` are the caller's to give on every call (a bucket
        is only a name and its state), both positive, ``burst`` at least 1.
        Never blocks for long and never raises for a refusal.
        """
        ...
