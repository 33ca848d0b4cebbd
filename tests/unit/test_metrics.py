"""The metrics of one process (server/metrics.py) and what feeds them, without a server.

The counts are read back from a registry of their own, as a single-process
scrape would; tests/integration/test_metrics.py scrapes a real server, with
``--workers 2`` too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, values

from hsmstore.config import ConfigError, load_settings
from hsmstore.core.cache import TtlCache, cache_counts
from hsmstore.core.calls import UNIDENTIFIED, FinishedCall
from hsmstore.core.model import Caller, KeyState
from hsmstore.server import metrics
from hsmstore.server.metrics import MetricsSampler, ServerMetrics, SpoolMetrics, next_key_count

CALLER = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
REPOSITORY = Path(__file__).resolve().parents[2]


def call(name: str, reason: str | None, duration_s: float = 0.002) -> FinishedCall:
    return FinishedCall(name, CALLER, reason, (), duration_s, "req", "")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_calls_are_counted_by_operation_and_reason_with_ok_for_a_success() -> None:
    registry = CollectorRegistry()
    observed = ServerMetrics(registry)
    for finished in (
        call("Encrypt", None),
        call("Encrypt", None),
        call("Decrypt", "InvalidCiphertextException"),
        FinishedCall("Encrypt", UNIDENTIFIED, "UnauthenticatedException", (), 0.001, "req", ""),
    ):
        observed.call_started(finished.name)
        observed.call_finished(finished)
    assert sample(registry, "hsmstore_requests_total", operation="Encrypt", reason="OK") == 2
    assert (
        sample(registry, "hsmstore_requests_total", operation="Encrypt", reason="UnauthenticatedException")
        == 1
    )
    assert (
        sample(registry, "hsmstore_requests_total", operation="Decrypt", reason="InvalidCiphertextException")
        == 1
    )
    assert sample(registry, "hsmstore_request_duration_seconds_count", operation="Encrypt") == 3
    assert sample(registry, "hsmstore_request_duration_seconds_bucket", operation="Decrypt", le="0.0025") == 1
    assert sample(registry, "hsmstore_request_duration_seconds_bucket", operation="Decrypt", le="0.001") == 0
    assert sample(registry, "hsmstore_requests_in_flight") == 0


def test_in_flight_counts_calls_started_and_not_finished() -> None:
    registry = CollectorRegistry()
    observed = ServerMetrics(registry)
    observed.call_started("Encrypt")
    observed.call_started("Decrypt")
    assert sample(registry, "hsmstore_requests_in_flight") == 2
    observed.call_finished(call("Encrypt", None))
    assert sample(registry, "hsmstore_requests_in_flight") == 1


def test_token_calls_are_timed_and_failures_counted_per_key_store() -> None:
    registry = CollectorRegistry()
    observed = ServerMetrics(registry)
    default, other = observed.token_call_observer("default"), observed.token_call_observer("other")
    default(0.0003, False)
    default(0.2, True)
    other(0.0001, False)
    assert sample(registry, "hsmstore_token_call_duration_seconds_count", key_store="default") == 2
    assert sample(registry, "hsmstore_token_call_duration_seconds_count", key_store="other") == 1
    assert sample(registry, "hsmstore_token_errors_total", key_store="default") == 1
    assert sample(registry, "hsmstore_token_errors_total", key_store="other") == 0


def test_cache_counts_are_copied_as_increments_only() -> None:
    registry = CollectorRegistry()
    observed = ServerMetrics(registry)
    observed.copy_cache_counts({"keys": (5, 2)})
    observed.copy_cache_counts({"keys": (7, 2), "grants": (0, 1)})
    assert sample(registry, "hsmstore_cache_requests_total", cache="keys", result="hit") == 7
    assert sample(registry, "hsmstore_cache_requests_total", cache="keys", result="miss") == 2
    assert sample(registry, "hsmstore_cache_requests_total", cache="grants", result="miss") == 1


def test_key_counts_name_every_state_and_an_emptied_state_reads_zero() -> None:
    registry = CollectorRegistry()
    observed = ServerMetrics(registry)
    observed.set_key_counts({KeyState.ENABLED: 3, KeyState.DISABLED: 1})
    observed.set_key_counts({KeyState.ENABLED: 4})
    assert sample(registry, "hsmstore_keys", state="ENABLED") == 4
    assert registry.get_sample_value("hsmstore_keys", {"state": "DISABLED"}) == 0
    for state in KeyState:
        assert registry.get_sample_value("hsmstore_keys", {"state": state.value}) is not None


def test_the_sampler_says_once_that_keys_cannot_be_counted_and_once_that_they_can(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    answers: list[dict[KeyState, int] | Exception] = [OSError("down"), OSError("down"), {KeyState.ENABLED: 2}]

    def count_keys() -> dict[KeyState, int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sampler = MetricsSampler(ServerMetrics(registry), count_keys, caches=dict)
    with caplog.at_level(logging.INFO, logger=metrics.__name__):
        for _ in range(3):
            sampler.sample_keys()
    messages = [record.getMessage() for record in caplog.records]
    assert len([m for m in messages if "counting keys for the metrics failed" in m]) == 1
    assert len([m for m in messages if "works again" in m]) == 1
    assert sample(registry, "hsmstore_keys", state="ENABLED") == 2


def test_a_slow_key_count_is_made_less_often_so_it_takes_at_most_a_hundredth_of_the_time() -> None:
    assert next_key_count(15.0, 100.0, 100.02) == 100.02 + 15.0  # a small store: every 15 s
    assert next_key_count(15.0, 100.0, 100.3) == pytest.approx(100.3 + 30.0)  # a million keys
    assert next_key_count(15.0, 100.0, 103.0) == pytest.approx(103.0 + 300.0)


def test_spool_gauges_hold_the_last_measure() -> None:
    registry = CollectorRegistry()
    gauges = SpoolMetrics(registry)
    gauges.observe(4096, 2.5)
    gauges.observe(100, 0.5)
    assert sample(registry, "hsmstore_audit_spool_backlog_bytes") == 100
    assert sample(registry, "hsmstore_audit_ingest_lag_seconds") == 0.5


def test_named_caches_count_hits_and_misses_by_name() -> None:
    now = [0.0]
    first = TtlCache[str, int](1.0, clock=lambda: now[0], name="test-cache-counts")
    second = TtlCache[str, int](1.0, clock=lambda: now[0], name="test-cache-counts")
    TtlCache[str, int](1.0, clock=lambda: now[0]).get("x", lambda: 1)  # unnamed: not listed
    first.get("a", lambda: 1)  # miss
    first.get("a", lambda: 1)  # hit
    now[0] = 2.0
    first.get("a", lambda: 1)  # expired: miss
    second.get("b", lambda: None)  # miss (nothing cached)
    second.get("b", lambda: None)  # miss
    assert (first.hits, first.misses) == (1, 2)
    assert cache_counts()["test-cache-counts"] == (1, 4)
    assert "" not in cache_counts()


def test_the_metrics_directory_is_made_per_serve_and_dead_ones_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROCESS_ENV, "")  # restored afterwards (unset), as is ValueClass
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    dead_pid = int(exited.stdout)
    root = tmp_path / metrics.METRICS_DIRECTORY
    (root / str(dead_pid)).mkdir(parents=True)
    (root / str(dead_pid) / "counter_1.db").write_bytes(b"")
    live = root / str(os.getppid())  # the process that runs pytest: alive
    live.mkdir()
    own = metrics.prepare_multiprocess_directory(tmp_path)
    assert own == root / str(os.getpid())
    assert os.environ[metrics.MULTIPROCESS_ENV] == str(own)
    assert not (root / str(dead_pid)).exists()
    assert live.is_dir()
    assert oct(own.stat().st_mode & 0o777) == "0o700"
    assert getattr(values.ValueClass, "_multiprocess", False)


def test_every_metric_is_documented_in_operations_md() -> None:
    documented = (REPOSITORY / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [name for name in metrics.metric_names() if f"`{name}" not in documented]
    assert not missing, f"docs/operations.md does not describe {missing}"


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_malformed_metrics_listen_is_refused_naming_the_setting_and_its_source(listen: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"metrics_listen": listen}, environ={})
    assert str(refused.value).startswith(
        f"metrics_listen must be HOST:PORT, got {listen!r} (--metrics-listen flag)"
    )
    with pytest.raises(ConfigError, match=r"HSMSTORE_METRICS_LISTEN"):
        load_settings({}, environ={"HSMSTORE_METRICS_LISTEN": listen})


def test_metrics_are_off_unless_metrics_listen_is_given() -> None:
    assert load_settings({}, environ={}).metrics_listen == ""
    assert load_settings({}, environ={"HSMSTORE_METRICS_LISTEN": "[::1]:0"}).metrics_listen == "[::1]:0"
