"""Argument checks every part of the SQL store makes before SQL sees the values."""

from __future__ import annotations

from datetime import datetime


def require_aware(value: datetime, name: str) -> None:
    """Refuse naive datetimes (see ``schema.UtcDateTime``: a naive value has no defined instant)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def require_positive_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
