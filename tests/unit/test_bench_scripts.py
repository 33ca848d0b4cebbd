"""Issue 18's bench scripts import and refuse what they must, without starting a server.

``bench/scale.py`` and ``bench/residency.py`` run real servers for minutes
(``make bench``, ``make bench-scale``); ``make lint`` type-checks them
(``mypy --strict bench/*.py``). This checks, in seconds, that both start and
parse their flags, and that the scale bench refuses a token store SoftHSM2
cannot hold (one file per key version) with one line saying why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("script", ["bench/scale.py", "bench/residency.py"])
def test_bench_script_starts(script: str) -> None:
    done = bench(script, "--help")
    assert done.returncode == 0, done.stderr
    assert "issue 18" in done.stdout.lower()


def test_scale_refuses_more_token_keys_than_softhsm2_can_hold(tmp_path: Path) -> None:
    done = bench("bench/scale.py", "--keys", "50001", "--residency", "token", "--dir", str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "50,000" in lines[0]
    assert not any(tmp_path.iterdir())  # refused before anything was made
