"""The clock port: the core never reads the time itself, so tests can move it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real clock, timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
