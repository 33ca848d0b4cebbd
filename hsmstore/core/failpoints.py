"""Failpoints: named places where the crash-safety tests kill the process (``HSMSTORE_TEST_*``)."""

from __future__ import annotations

from collections.abc import Callable

Failpoint = Callable[[str], None]


def no_failpoint(_name: str) -> None:
    """The production failpoint: nothing happens."""
    return None
