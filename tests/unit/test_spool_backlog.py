"""The audit spool backlog (store/spool.py ``SpoolIngester.backlog``): what waits, and since when.

Issue 16: "audit spool backlog and ingest lag" as metrics. Real spool files in
``tmp_path``; the chain is the fake store's. The backlog must still be
measured while the DB is down, which is when it grows.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hsmstore.core.audit.record import CallAudit
from hsmstore.core.model import Caller
from hsmstore.store.spool import SpoolAuditSink, SpoolBacklog, SpoolIngester
from tests.fakes.store import FakeMetadataStore

CALLER = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
T0 = datetime(2025, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def record(when: datetime, principal: str = CALLER.principal) -> dict[str, Any]:
    caller = Caller("acme", principal)
    return CallAudit("Encrypt", caller, {"keyId": "k"}, when).to_record()


class DownStore(FakeMetadataStore):
    """A DB that does not answer."""

    def spool_offset(self, spool_name: str) -> int:
        raise OSError("connection refused")


def test_an_empty_directory_has_no_backlog(tmp_path: Path) -> None:
    assert SpoolIngester(tmp_path, FakeMetadataStore()).backlog() == SpoolBacklog(0, None)


def test_the_backlog_is_the_bytes_past_the_chain_and_the_oldest_waiting_event_time(tmp_path: Path) -> None:
    store = FakeMetadataStore()
    ingester = SpoolIngester(tmp_path, store)
    first, second = SpoolAuditSink(tmp_path), SpoolAuditSink(tmp_path)
    try:
        first.record(record(T0 + timedelta(seconds=5)))
        second.record(record(T0))
        second.record(record(T0 + timedelta(seconds=9)))
        backlog = ingester.backlog()
        assert backlog.bytes == first.path.stat().st_size + second.path.stat().st_size
        assert backlog.oldest_event_time == T0
        assert backlog.lag_seconds(T0 + timedelta(seconds=30)) == 30
        ingester.ingest_once()
        assert ingester.backlog() == SpoolBacklog(0, None)
        first.record(record(T0 + timedelta(seconds=60)))
        after = ingester.backlog()
        assert after.oldest_event_time == T0 + timedelta(seconds=60)
        assert after.bytes > 0
    finally:
        first.close()
        second.close()


def test_a_record_spooled_as_json_alone_is_timed_too(tmp_path: Path) -> None:
    sink = SpoolAuditSink(tmp_path)
    try:
        sink.record(record(T0, principal="arn:hsmstore:iam::acme:role/tab\there"))  # no indexed head
        assert sink.path.read_bytes().startswith(b"{")
        assert SpoolIngester(tmp_path, FakeMetadataStore()).backlog().oldest_event_time == T0
    finally:
        sink.close()


def test_while_the_db_is_down_the_backlog_is_measured_from_what_the_ingester_last_knew(
    tmp_path: Path,
) -> None:
    sink = SpoolAuditSink(tmp_path)
    try:
        sink.record(record(T0))
        unknown = SpoolIngester(tmp_path, DownStore()).backlog()
        assert unknown.bytes == sink.path.stat().st_size  # never read: the whole spool counts
        store = FakeMetadataStore()
        ingester = SpoolIngester(tmp_path, store)
        ingester.ingest_once()
        ingested = sink.path.stat().st_size
        sink.record(record(T0 + timedelta(seconds=1)))
        store.spool_offset = DownStore().spool_offset  # type: ignore[method-assign]
        backlog = ingester.backlog()
        assert backlog.bytes == sink.path.stat().st_size - ingested
        assert backlog.oldest_event_time == T0 + timedelta(seconds=1)
    finally:
        sink.close()


def test_the_ingester_hands_the_backlog_to_its_observer_before_each_round(tmp_path: Path) -> None:
    sink = SpoolAuditSink(tmp_path)
    seen: list[SpoolBacklog] = []
    stop = threading.Event()

    def observe(backlog: SpoolBacklog) -> None:
        seen.append(backlog)
        if len(seen) == 2:
            stop.set()

    try:
        sink.record(record(T0))
        SpoolIngester(tmp_path, FakeMetadataStore()).run(stop, 0.01, observe=observe)
    finally:
        sink.close()
    assert seen[0].oldest_event_time == T0 and seen[0].bytes > 0
    assert seen[1] == SpoolBacklog(0, None)  # the first round ingested it
