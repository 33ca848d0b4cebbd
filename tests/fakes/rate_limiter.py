"""An in-memory RateLimiter on a clock the test moves (core/ports/rate_limiter.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeRateLimiter:
    """Token buckets in a dict; ``now`` is the clock (seconds), moved by the test.

    ``calls`` records every (bucket, rate, burst) asked for, so a test can see
    which bucket a call drew from and at what rate.
    """

    now: float = 0.0
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (tokens, last)
    calls: list[tuple[str, float, float]] = field(default_factory=list)
    fail: bool = False

    def try_acquire(self, bucket: str, rate: float, burst: float) -> bool:
        if self.fail:
            raise OSError("the limiter is broken")
        self.calls.append((bucket, rate, burst))
        tokens, last = self.buckets.get(bucket, (burst, self.now))
        tokens = min(burst, tokens + (self.now - last) * rate)
        allowed = tokens >= 1
        self.buckets[bucket] = (tokens - 1 if allowed else tokens, self.now)
        return allowed
