"""Test hooks (a moved clock, failpoints) need an explicit second opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsmstore import bootstrap
from hsmstore.core.ports import SystemClock


def test_clock_file_without_the_opt_in_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "offset").write_text(str(30 * 86400))
    monkeypatch.setenv("HSMSTORE_TEST_CLOCK_FILE", str(tmp_path / "offset"))
    monkeypatch.delenv("HSMSTORE_ENABLE_TEST_HOOKS", raising=False)
    assert isinstance(bootstrap.clock_from_env(), SystemClock)


def test_clock_file_with_the_opt_in_moves_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "offset").write_text(str(30 * 86400))
    monkeypatch.setenv("HSMSTORE_TEST_CLOCK_FILE", str(tmp_path / "offset"))
    monkeypatch.setenv("HSMSTORE_ENABLE_TEST_HOOKS", "1")
    moved = bootstrap.clock_from_env().now() - SystemClock().now()
    assert 29.9 < moved.total_seconds() / 86400 < 30.1


def test_failpoint_without_the_opt_in_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSMSTORE_FAILPOINT", "create_key.after_db_insert")
    monkeypatch.delenv("HSMSTORE_ENABLE_TEST_HOOKS", raising=False)
    bootstrap.failpoint_from_env()("create_key.after_db_insert")  # still alive
