"""Issue 18's bench scripts import and refuse what they must, without starting a server.

``bench/scale.py`` and ``bench/residency.py`` run real servers for minutes
(``make bench``, ``make bench-scale``); ``make lint`` type-checks them
(``mypy --strict bench/*.py``). This checks, in seconds, that both start and
parse their flags, and that the scale bench refuses a token store SoftHSM2
cannot hold (one file per key version) with one line saying why.
"""

from __future__ import annotations

import importlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench_module(name: str) -> ModuleType:
    """A module of bench/, imported as its scripts import each other (bench/ and the root on the path)."""
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))
        sys.path.remove(str(ROOT))


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


def test_scale_measures_rss_only_at_marks_its_creation_reaches() -> None:
    scale = bench_module("scale")
    marks = [1_000, 100_000, 1_000_000]
    assert scale.marks_passed(marks, 0, 1_000_000) == [1_000, 100_000]
    # A store extended from 100,000 keys: RSS "at 1,000" now would be RSS at 100,000.
    assert scale.marks_passed(marks, 100_000, 1_000_000) == [100_000]
    assert scale.marks_passed(marks, 100_001, 2_000_000) == [1_000_000]
    assert scale.marks_passed([], 0, 1_000) == []


def test_scale_puts_one_warm_call_after_each_cold_one() -> None:
    scale = bench_module("scale")
    assert scale.alternate(["c1", "c2", "c3"], ["w1", "w2"]) == ["c1", "w1", "c2", "w2", "c3", "w1"]
    assert scale.alternate([], ["w1"]) == []


def test_scale_charges_each_server_process_to_its_role() -> None:
    procs = bench_module("procs")
    titled = (
        "import setproctitle, sys, time; setproctitle.setproctitle(sys.argv[1]); "
        "print(flush=True); time.sleep(30)"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", titled, title], stdout=subprocess.PIPE, text=True)
        for title in ("hsmstore: worker 1", "hsmstore: worker 2", "hsmstore: audit ingester", "python3")
    ]
    try:
        for child in children:
            assert child.stdout is not None
            child.stdout.readline()  # titled
        roles_seen = [procs.role_of(c.pid) for c in children]
        assert roles_seen == ["workers", "workers", "audit ingester", "other"]
        roles = procs.cpu_seconds_by_role([c.pid for c in children])
        assert set(roles) == {"workers", "audit ingester", "other"}
        assert all(user >= 0 and system >= 0 for user, system in roles.values())
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert procs.role_of(children[0].pid) == "gone"


def test_scale_splits_cpu_per_request_by_role() -> None:
    scale = bench_module("scale")
    before = {"workers": (1.0, 0.5)}
    after = {"workers": (3.0, 1.0), "audit ingester": (0.2, 0.1)}
    driven = scale.Driven(1000, 1.0, [], scale.role_change(before, after))
    assert driven.server_cpu_seconds == pytest.approx(2.8)
    assert driven.role_cpu_us() == {
        "audit ingester": {"user": 200.0, "system": 100.0},
        "workers": {"user": 2000.0, "system": 500.0},
    }
    assert driven.roles_line() == "audit ingester 200+100, workers 2000+500 µs user+sys"


def test_scale_reads_the_key_tables_of_a_migrated_store(tmp_path: Path) -> None:
    """The cached cold round's scans name the primary-key indexes SQLite made for the schema:
    a renamed one fails here, not in an hour-long bench run."""
    from hsmstore.store.migrate import upgrade

    upgrade(f"sqlite:///{tmp_path / 'hsmstore.db'}")
    with sqlite3.connect(tmp_path / "hsmstore.db") as connection:
        connection.execute(
            "INSERT INTO keys (key_id, tenant, description, key_state, key_usage, key_spec, origin,"
            " key_manager, creation_date, current_version) VALUES ('k1', 't', 'four', 'Enabled',"
            " 'ENCRYPT_DECRYPT', 'SYMMETRIC_DEFAULT', 'AWS_KMS', 'CUSTOMER', '2026-12-08 00:00:00', 1)"
        )
    scale = bench_module("scale")
    assert scale.cache_key_tables(tmp_path) == [4, 1, 0, 0]
