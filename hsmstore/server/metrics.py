"""Prometheus metrics: what a server is doing, for ``--metrics-listen`` (docs/operations.md, "Metrics").

Issue 16, "Observability": per-operation request counts by outcome reason,
latency histograms, in-flight requests, token call latency and errors per key
store, audit spool backlog and ingest lag, cache hit rates, key counts by
state, with ``prometheus_client`` "with its multiprocess mode for --workers".

One endpoint per ``hsmstore serve``, whatever its number of processes: the
serving processes (``--workers``) and the audit ingester each write their
values to memory-mapped files in one directory (prometheus_client's
multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``), and the endpoint, in the
``serve`` process itself, adds them up on each scrape
(:func:`start_endpoint`). The directory is ``<data dir>/metrics/<serve pid>``,
made at start, with the directories of ``serve`` processes that are gone
removed (:func:`prepare_multiprocess_directory`); a second ``serve`` on the same
data dir (say one that fails because the port is taken) never touches the
files of the one that runs. Counters and histograms of a process that exited
stay in the sums (a restarted ingester does not reset them); its gauges go
(:func:`process_exited`, prometheus_client's ``mark_process_dead``).

Where each value comes from, and nothing else is read:

* requests: :class:`ServerMetrics` is a ``CallObserver`` of the call envelope
  (core/calls.py); ``reason`` is the KMSError reason of the answer (docs/api.md,
  "Errors"), :data:`SUCCESS_REASON` for a success. No label holds a tenant, a
  principal or a key: their number is unbounded, and the access log has them.
* token calls: the key store's observer (hsm/token_calls.py), by key store id;
* caches: the hit and miss counts of core/cache.py, copied every second by
  :class:`MetricsSampler`;
* keys by state: the metadata DB, one ``GROUP BY`` every 15 s per serving process, or less often
  when it is slow, so that it takes at most 1 % of the process's time (a scan: 0.3 s on a store
  of a million keys, issue 18);
* audit spool: the ingester's own measure before each round (store/spool.py),
  through :class:`SpoolMetrics`.

This module imports no other adapter: ``bootstrap.py`` wires it to the token,
the DB and the spool with plain callables.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from hsmstore.core.cache import cache_counts
from hsmstore.core.calls import FinishedCall
from hsmstore.core.model import KeyState

log = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIRECTORY = "metrics"  # under the data directory
SUCCESS_REASON = "OK"  # the ``reason`` label of a call answered without an error

# A call is about a millisecond on SoftHSM2 (docs/performance.md) and a network round trip or
# more on CloudHSM; the buckets cover both, and the stalls of an outage up to the 10 s deadlines.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOKEN_CALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

SAMPLE_INTERVAL_SECONDS = 1.0  # cache counts are copied this often
KEY_COUNT_INTERVAL_SECONDS = 15.0  # and keys are counted in the DB this often (the first at once)
KEY_COUNT_MAX_TIME_SHARE = 0.01  # or less often, so that counting takes at most this share


def next_key_count(interval_seconds: float, started: float, finished: float) -> float:
    """When to count keys again, after a count from ``started`` to ``finished`` (monotonic): the
    interval, stretched so that the count takes at most KEY_COUNT_MAX_TIME_SHARE of the time."""
    return finished + max(interval_seconds, (finished - started) / KEY_COUNT_MAX_TIME_SHARE)


def prepare_multiprocess_directory(data_dir: Path) -> Path:
    """Make this ``serve`` process's metrics directory and point prometheus_client at it.

    Call it in the ``serve`` process before any metric is made and before the
    workers and the ingester start (they inherit ``PROMETHEUS_MULTIPROC_DIR``).
    Directories left by ``serve`` processes that are gone are removed; the
    ones of a live process are left alone.
    """
    root = data_dir / METRICS_DIRECTORY
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for child in root.iterdir():
        if child.is_dir() and child.name.isdigit() and not _alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)
    own = root / str(os.getpid())
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir(mode=0o700)
    os.environ[MULTIPROCESS_ENV] = str(own)
    # prometheus_client chose its value class when it was imported; choose again, now.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return own


def process_exited(pid: int) -> None:
    """A serving process or the ingester exited: its gauges leave the sums (its counters stay)."""
    if os.environ.get(MULTIPROCESS_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class MetricsEndpoint:
    """The HTTP endpoint (``GET /metrics``) of one ``serve``, on a daemon thread."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_endpoint(listen: str) -> MetricsEndpoint:
    """Serve the sums of every process's metrics on ``listen`` (HOST:PORT; port 0 picks one).

    Raises ``OSError`` if it cannot listen (the port is taken). Needs
    :func:`prepare_multiprocess_directory` first.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, thread = start_http_server(int(port), addr=host, registry=registry)
    return MetricsEndpoint(server, thread, host, int(server.server_port))


class ServerMetrics:
    """The metrics of one serving process; a ``CallObserver`` of its call envelope.

    Made once per process, after :func:`prepare_multiprocess_directory` (a
    worker inherits the directory). ``registry``: where to register them for a
    single-process scrape (unit tests); None with the multiprocess directory.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.requests = Counter(
            "hsmstore_requests",
            "Calls answered, by operation and reason (the error reason, OK for a success)",
            ("operation", "reason"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "hsmstore_request_duration_seconds",
            "Time from a call's start in the call envelope until its audit record was written",
            ("operation",),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "hsmstore_requests_in_flight",
            "Calls being answered now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.token_call_duration = Histogram(
            "hsmstore_token_call_duration_seconds",
            "Operations on the HSM token (retries included), by key store",
            ("key_store",),
            buckets=TOKEN_CALL_BUCKETS,
            registry=registry,
        )
        self.token_errors = Counter(
            "hsmstore_token_errors",
            "Operations on the HSM token that failed (unreachable, refused, key missing), by key store",
            ("key_store",),
            registry=registry,
        )
        self.cache_requests = Counter(
            "hsmstore_cache_requests",
            "Lookups in the per-process metadata caches, by cache and result (hit, miss)",
            ("cache", "result"),
            registry=registry,
        )
        self.keys = Gauge(
            "hsmstore_keys",
            "Keys in the metadata DB by state, all tenants",
            ("state",),
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        # Label children by label values: ``labels()`` takes a lock and builds a tuple each time.
        self._request_counters: dict[tuple[str, str], Counter] = {}
        self._request_timers: dict[str, Histogram] = {}
        self._cache_seen: dict[str, tuple[int, int]] = {}

    # -- CallObserver (core/calls.py) ------------------------------------------------

    def call_started(self, name: str) -> None:
        self.in_flight.inc()

    def call_finished(self, call: FinishedCall) -> None:
        reason = call.reason or SUCCESS_REASON
        counter = self._request_counters.get((call.name, reason))
        if counter is None:
            counter = self._request_counters[(call.name, reason)] = self.requests.labels(call.name, reason)
        timer = self._request_timers.get(call.name)
        if timer is None:
            timer = self._request_timers[call.name] = self.request_duration.labels(call.name)
        counter.inc()
        timer.observe(call.duration_s)
        self.in_flight.dec()

    # -- the token, the caches, the DB ------------------------------------------------

    def token_call_observer(self, key_store_id: str) -> Callable[[float, bool], None]:
        """The ``TokenCallObserver`` (hsm/token_calls.py) of the key store ``key_store_id``."""
        timer = self.token_call_duration.labels(key_store_id)
        errors = self.token_errors.labels(key_store_id)

        def observe(duration_s: float, failed: bool) -> None:
            timer.observe(duration_s)
            if failed:
                errors.inc()

        return observe

    def copy_cache_counts(self, counts: Mapping[str, tuple[int, int]]) -> None:
        """Add what each cache counted since the last copy (core/cache.py ``cache_counts``)."""
        for name, (hits, misses) in counts.items():
            seen_hits, seen_misses = self._cache_seen.get(name, (0, 0))
            if hits > seen_hits:
                self.cache_requests.labels(name, "hit").inc(hits - seen_hits)
            if misses > seen_misses:
                self.cache_requests.labels(name, "miss").inc(misses - seen_misses)
            self._cache_seen[name] = (max(hits, seen_hits), max(misses, seen_misses))

    def set_key_counts(self, counts: Mapping[KeyState, int]) -> None:
        """Every state, those without keys as 0, so a state that empties reads 0, not its old count."""
        for state in KeyState:
            self.keys.labels(state.value).set(counts.get(state, 0))


class MetricsSampler:
    """A thread of each serving process that copies the cache counts and counts keys in the DB.

    Why a thread and not a collector at scrape time: the scrape is served by
    the ``serve`` process, which with ``--workers`` holds neither the caches
    nor a DB connection; the values reach it through the multiprocess files.
    A DB that does not answer is said once in the log, and once again when it does.
    """

    def __init__(
        self,
        metrics: ServerMetrics,
        count_keys: Callable[[], Mapping[KeyState, int]],
        caches: Callable[[], Mapping[str, tuple[int, int]]] = cache_counts,
        interval_seconds: float = SAMPLE_INTERVAL_SECONDS,
        key_interval_seconds: float = KEY_COUNT_INTERVAL_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._count_keys = count_keys
        self._caches = caches
        self._interval = interval_seconds
        self._key_interval = key_interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)
        self._keys_failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def sample_keys(self) -> None:
        try:
            counts = self._count_keys()
        except Exception as error:
            if not self._keys_failing:
                log.warning(
                    "counting keys for the metrics failed (%s); retried every %gs",
                    type(error).__name__,
                    self._key_interval,
                )
            self._keys_failing = True
            return
        if self._keys_failing:
            log.info("counting keys for the metrics works again")
        self._keys_failing = False
        self._metrics.set_key_counts(counts)

    def _loop(self) -> None:
        next_keys = 0.0
        while True:
            self._metrics.copy_cache_counts(self._caches())
            started = time.monotonic()
            if started >= next_keys:
                self.sample_keys()
                next_keys = next_key_count(self._key_interval, started, time.monotonic())
            if self._stop.wait(self._interval):
                return


class SpoolMetrics:
    """The audit ingester's gauges: spool backlog and ingest lag (store/spool.py measures them)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # One ingester per data directory: "livemax" is its value, and a dead one's drops out.
        self.backlog_bytes = Gauge(
            "hsmstore_audit_spool_backlog_bytes",
            "Bytes of audit records in the spools not yet in the DB chain (measured each ingest round)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ingest_lag = Gauge(
            "hsmstore_audit_ingest_lag_seconds",
            "Age of the oldest audit record not yet in the DB chain (0 when none waits)",
            registry=registry,
            multiprocess_mode="livemax",
        )

    def observe(self, backlog_bytes: int, lag_seconds: float) -> None:
        self.backlog_bytes.set(backlog_bytes)
        self.ingest_lag.set(lag_seconds)


def metric_names() -> Iterable[str]:
    """Every metric family this module defines (docs/operations.md lists each; a test checks)."""
    return (
        "hsmstore_requests",
        "hsmstore_request_duration_seconds",
        "hsmstore_requests_in_flight",
        "hsmstore_token_call_duration_seconds",
        "hsmstore_token_errors",
        "hsmstore_cache_requests",
        "hsmstore_keys",
        "hsmstore_audit_spool_backlog_bytes",
        "hsmstore_audit_ingest_lag_seconds",
    )
