"""hsmstore encrypt/decrypt helpers: context pairs, the atomic output, the progress reader (issue 20)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from hsmstore.cli import files


def test_context_pairs_split_at_the_first_equals_sign() -> None:
    assert files.parse_context(["app=orders", "expr=a=b", "empty="]) == {
        "app": "orders",
        "expr": "a=b",
        "empty": "",
    }


@pytest.mark.parametrize("pair", ["noequals", "=value"])
def test_a_pair_without_a_name_is_a_usage_error(pair: str) -> None:
    with pytest.raises(files.UsageError, match="KEY=VALUE"):
        files.parse_context([pair])


def test_the_output_appears_only_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with files._atomic_output(str(target)) as sink:
        sink.write(b"done")
        assert not target.exists()
    assert target.read_bytes() == b"done"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failure_removes_the_temporary_file_and_keeps_the_old_output(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"old")

    def half_written() -> None:
        with files._atomic_output(str(target)) as sink:
            sink.write(b"half")
            raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError):
        half_written()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_context_check_names_the_missing_pairs() -> None:
    with pytest.raises(files.FileCommandError, match="env"):
        files._check_context({b"app": b"orders"}, {"app": "orders", "env": "prod"})
    files._check_context({b"app": b"orders", "env": "prod"}, {"app": "orders"})


class Bar:
    def __init__(self) -> None:
        self.count, self.closed = 0, False

    def update(self, n: int) -> None:
        self.count += n

    def close(self) -> None:
        self.closed = True


def test_the_progress_reader_counts_what_is_read() -> None:
    bar = Bar()
    reader = files._ProgressReader(io.BytesIO(b"x" * 10), bar)
    assert reader.read(4) + reader.read() == b"x" * 10
    assert reader.read() == b""
    assert (bar.count, bar.closed) == (10, True)
