"""The AuditLog contract, on the fake, SQLite and PostgreSQL (fixtures from conftest_store).

What it pins down: one gap-free hash chain however many threads and processes
append (core/audit/record.py: "changing, removing, inserting or reordering a row
breaks every later hash"); LookupEvents' filters and paging (CloudTrail: newest
first, one tenant); a spool offset stored with its records (exactly once); a
management change and its record committed together, or neither; retention
that leaves a chain still verifiable from the anchor; GetKeyLastUsage per version.
"""

from __future__ import annotations

import multiprocessing
import resource
import signal
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from hsmstore import errors
from hsmstore.core.audit.chain import GENESIS_HASH, chain_hash, first_chain_problem
from hsmstore.core.audit.fields import audit_fields
from hsmstore.core.audit.jobs import verify_trail
from hsmstore.core.audit.record import CallAudit, canonical_record_bytes
from hsmstore.core.model import (
    AliasRecord,
    Caller,
    KeyState,
    KeyVersion,
    RotationType,
    VersionState,
    new_token_id,
)
from hsmstore.core.ports import AuditLog, AuditQuery, AuditSeal, MetadataStore
from hsmstore.store.audit_sql import ITER_BATCH_CHARS
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.migrate import upgrade
from hsmstore.store.spool import (
    MAX_BATCH_BYTES,
    RECORDS_PER_TRANSACTION,
    SpoolAuditSink,
    SpoolIngester,
    spool_line,
)
from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    sql_engine_fixture,
    store_fixture,
)
from tests.contract.test_metadata_store import make_key

T0 = datetime(2025, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)
REGION = "eu-west-1"


def arn(tenant: str, key_id: str) -> str:
    return f"arn:aws:kms:{REGION}:{tenant}:key/{key_id}"


def record(
    event_name: str = "DescribeKey",
    tenant: str = "111122223333",
    principal: str = "arn:hsmstore:iam::111122223333:user/alice",
    when: datetime = T0,
    key_id: str | None = None,
    version: int | None = None,
    error_code: str | None = None,
) -> dict[str, Any]:
    """A CloudTrail-shaped record as the transport makes it (CallAudit.to_record)."""
    call = CallAudit(event_name, Caller(tenant, principal), {"keyId": key_id or ""}, when)
    if key_id is not None:
        call.key_ids.append(arn(tenant, key_id))
        if version is not None:
            call.key_versions[arn(tenant, key_id)] = version
    if error_code is not None:
        call.error_code, call.error_message = error_code, "it failed"
    return call.to_record(latency_ms=1.0)


def log_of(store: MetadataStore) -> AuditLog:
    return cast(AuditLog, store)


def verify(log: AuditLog) -> int:
    """Assert the stored chain verifies from the anchor; return how many rows it has."""
    anchor_seq, anchor_hash = log.audit_anchor()
    events = list(log.iter_audit_events(anchor_seq))
    assert first_chain_problem(events, anchor_seq, anchor_hash) is None
    return len(events)


def all_seqs(log: AuditLog) -> list[int]:
    return [event.seq for event in log.iter_audit_events()]


# ---------------------------------------------------------------- append + chain


def test_an_empty_trail_starts_at_the_genesis(store: MetadataStore) -> None:
    log = log_of(store)
    assert log.audit_anchor() == (0, GENESIS_HASH)
    assert list(log.iter_audit_events()) == []
    assert log.list_audit_seals() == []
    assert log.spool_offset("never-seen.jsonl") == 0


def test_the_newest_event_is_the_head_of_the_chain(store: MetadataStore) -> None:
    log = log_of(store)
    assert log.newest_audit_event() is None
    log.append_audit_records([record(when=T0 + timedelta(seconds=i)) for i in range(3)])
    log.append_audit_records([record("Decrypt", when=T0 + timedelta(seconds=9))])
    newest = log.newest_audit_event()
    assert newest is not None
    assert newest == list(log.iter_audit_events())[-1]
    assert (newest.seq, newest.record["eventName"]) == (4, "Decrypt")


def test_append_assigns_consecutive_seqs_and_chains_the_canonical_bytes(store: MetadataStore) -> None:
    log = log_of(store)
    records = [record(when=T0 + timedelta(seconds=i)) for i in range(3)]
    assert log.append_audit_records(records[:2]) == [1, 2]
    assert log.append_audit_records(records[2:]) == [3]
    assert log.append_audit_records([]) == []

    events = list(log.iter_audit_events())
    assert [event.seq for event in events] == [1, 2, 3]
    previous = GENESIS_HASH
    for event, original in zip(events, records, strict=True):
        # record_json is exactly the bytes the hash covers, and it is the record.
        assert event.record_json.encode("utf-8") == canonical_record_bytes(original)
        assert event.record == original
        assert event.previous_hash == previous
        assert event.hash == chain_hash(previous, event.seq, canonical_record_bytes(original))
        assert event.event_id == original["eventID"]
        assert event.event_time == datetime.fromisoformat(original["eventTime"])
        previous = event.hash
    assert verify(log) == 3


def test_iter_reads_past_one_batch_and_from_a_seq(store: MetadataStore) -> None:
    log = log_of(store)
    log.append_audit_records([record() for _ in range(2100)])
    assert all_seqs(log) == list(range(1, 2101))
    assert [event.seq for event in log.iter_audit_events(after_seq=1999)] == list(range(2000, 2101))
    assert verify(log) == 2100


def test_a_changed_record_breaks_the_chain_at_its_seq(store: MetadataStore) -> None:
    log = log_of(store)
    log.append_audit_records([record() for _ in range(5)])
    events = list(log.iter_audit_events())
    forged = events[2].record_json.replace("DescribeKey", "ListKeys")
    tampered = [*events[:2], replace(events[2], record_json=forged), *events[3:]]
    problem = first_chain_problem(tampered)
    assert problem is not None and problem.seq == 3 and "changed" in problem.what
    gap = first_chain_problem([*events[:2], *events[3:]])
    assert gap is not None and gap.seq == 3 and "missing" in gap.what


def test_a_record_without_its_required_fields_is_refused_and_writes_nothing(store: MetadataStore) -> None:
    log = log_of(store)
    incomplete = record()
    del incomplete["eventTime"]
    with pytest.raises(ValueError, match="eventTime"):
        log.append_audit_records([record(), incomplete])
    assert all_seqs(log) == []
    assert log.append_audit_records([record()]) == [1]  # no gap left behind


def test_a_duplicate_event_id_is_refused_and_writes_nothing(store: MetadataStore) -> None:
    log = log_of(store)
    first = record()
    log.append_audit_records([first])
    with pytest.raises(errors.AlreadyExistsException):
        log.append_audit_records([record(), first])
    assert all_seqs(log) == [1]
    assert log.append_audit_records([record()]) == [2]
    assert verify(log) == 2


# ---------------------------------------------------------------- lookups


@pytest.fixture
def filled(store: MetadataStore) -> tuple[AuditLog, dict[str, str]]:
    """Two tenants, two principals, two keys, events a second apart (seq i at T0 + i s)."""
    log = log_of(store)
    keys = {"k1": str(uuid.uuid4()), "k2": str(uuid.uuid4())}
    rows = [
        record("CreateKey", key_id=keys["k1"], version=1),  # 1
        record("Encrypt", key_id=keys["k1"], version=1),  # 2
        record(
            "Encrypt", key_id=keys["k2"], version=1, principal="arn:hsmstore:iam::111122223333:user/bob"
        ),  # 3
        record("Decrypt", tenant="444455556666", principal="arn:hsmstore:iam::444455556666:user/eve"),  # 4
        record("Decrypt", key_id=keys["k1"], version=1, error_code="InvalidCiphertextException"),  # 5
        record("ListKeys"),  # 6
        record("Encrypt", key_id=keys["k1"], version=1),  # 7
    ]
    for i, row in enumerate(rows, start=1):
        row["eventTime"] = (
            (T0 + timedelta(seconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
    log.append_audit_records(rows)
    return log, keys


def seqs(events: object) -> list[int]:
    return [event.seq for event in cast(list[Any], events)]


def test_lookup_is_newest_first_and_tenant_scoped(filled: tuple[AuditLog, dict[str, str]]) -> None:
    log, _ = filled
    assert seqs(log.lookup_audit_events(AuditQuery("111122223333", 50))) == [7, 6, 5, 3, 2, 1]
    assert seqs(log.lookup_audit_events(AuditQuery("444455556666", 50))) == [4]
    assert seqs(log.lookup_audit_events(AuditQuery("nobody", 50))) == []


def test_lookup_pages_after_the_last_event_seen(filled: tuple[AuditLog, dict[str, str]]) -> None:
    log, _ = filled
    pages: list[list[int]] = []
    before: tuple[datetime, int] | None = None
    while True:
        events = log.lookup_audit_events(AuditQuery("111122223333", 2, before=before))
        page = seqs(events)
        if not page:
            break
        pages.append(page)
        before = (events[-1].event_time, events[-1].seq)
    assert pages == [[7, 6], [5, 3], [2, 1]]


def test_lookup_filters(filled: tuple[AuditLog, dict[str, str]]) -> None:
    log, keys = filled
    tenant = "111122223333"

    def find(**filters: Any) -> list[int]:
        return seqs(log.lookup_audit_events(AuditQuery(tenant, 50, **filters)))

    assert find(event_name="Encrypt") == [7, 3, 2]
    seventh = next(e for e in log.lookup_audit_events(AuditQuery(tenant, 50)) if e.seq == 7)
    assert find(event_name="Encrypt", before=(seventh.event_time, 7)) == [3, 2]
    assert find(principal="arn:hsmstore:iam::111122223333:user/bob") == [3]
    assert find(key_id=keys["k1"]) == [7, 5, 2, 1]
    assert find(key_id=keys["k2"]) == [3]
    assert find(key_id=arn(tenant, keys["k1"])) == []  # the bare key id, not the ARN
    # start inclusive, end exclusive: seconds 2..5 -> seqs 2, 3, (4 is another tenant's), 5 not included
    assert find(start_time=T0 + timedelta(seconds=2), end_time=T0 + timedelta(seconds=5)) == [3, 2]
    assert find(start_time=T0 + timedelta(seconds=6)) == [7, 6]
    assert find(end_time=T0 + timedelta(seconds=2)) == [1]
    assert find(event_name="Decrypt", key_id=keys["k1"]) == [5]
    assert find(event_name="Nothing") == []
    with pytest.raises(ValueError, match="limit"):
        log.lookup_audit_events(AuditQuery(tenant, 0))


def test_lookup_time_range_accepts_any_offset(filled: tuple[AuditLog, dict[str, str]]) -> None:
    log, _ = filled
    plus_two = datetime(2025, 3, 4, 7, 6, 9, 123000, tzinfo=timezone(timedelta(hours=2)))
    assert plus_two == T0 + timedelta(seconds=2)
    assert seqs(log.lookup_audit_events(AuditQuery("111122223333", 50, end_time=plus_two))) == [1]


# ---------------------------------------------------------------- last key usage


def test_last_key_usage_overall_and_per_version(store: MetadataStore) -> None:
    log = log_of(store)
    key_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    log.append_audit_records(
        [
            record("Encrypt", key_id=key_id, version=1),  # 1
            record("GenerateDataKey", key_id=key_id, version=2),  # 2
            record("Decrypt", key_id=key_id, version=1),  # 3: newest of version 1
            record("Encrypt", key_id=other, version=1),  # 4: another key
            record("DescribeKey", key_id=key_id),  # 5: not cryptographic
            record("Encrypt", key_id=key_id, version=2),  # 6: newest of version 2 and overall
            record("Decrypt", key_id=key_id, version=1, error_code="InvalidCiphertextException"),  # 7: failed
            record("EnableKey", key_id=key_id, version=3),  # 8: management
        ]
    )
    usage = [(version, event.seq, event.event_name) for version, event in log.last_key_usage(key_id)]
    assert usage == [(None, 6, "Encrypt"), (1, 3, "Decrypt"), (2, 6, "Encrypt")]
    assert [(v, e.seq) for v, e in log.last_key_usage(other)] == [(None, 4), (1, 4)]
    assert log.last_key_usage(str(uuid.uuid4())) == []


# ---------------------------------------------------------------- spool offsets


def test_spool_offset_moves_with_its_records_exactly_once(store: MetadataStore) -> None:
    log = log_of(store)
    assert log.append_audit_records([record(), record()], ("a.jsonl", 100)) == [1, 2]
    assert log.spool_offset("a.jsonl") == 100
    assert log.spool_offset("b.jsonl") == 0
    # A second ingester that read the old offset: refused, nothing written twice.
    with pytest.raises(errors.AlreadyExistsException):
        log.append_audit_records([record()], ("a.jsonl", 100))
    assert all_seqs(log) == [1, 2]
    assert log.spool_offset("a.jsonl") == 100
    assert log.append_audit_records([record()], ("a.jsonl", 150)) == [3]
    assert log.spool_offset("a.jsonl") == 150


def test_a_failed_append_does_not_move_the_spool_offset(store: MetadataStore) -> None:
    log = log_of(store)
    bad = record()
    del bad["eventName"]
    with pytest.raises(ValueError, match="required field"):
        log.append_audit_records([record(), bad], ("a.jsonl", 100))
    assert log.spool_offset("a.jsonl") == 0
    assert all_seqs(log) == []


def test_a_record_without_an_event_id_still_enters_the_chain(store: MetadataStore) -> None:
    """The spool's placeholder for an unreadable line carries no eventID (store/spool.py)."""
    log = log_of(store)
    placeholders = [record("UnreadableSpoolLine"), record("UnreadableSpoolLine")]
    for placeholder in placeholders:
        del placeholder["eventID"]
    assert log.append_audit_records(placeholders) == [1, 2]
    assert verify(log) == 2


# ---------------------------------------------------------------- with management changes


def test_audit_commits_with_the_change_and_not_on_a_failed_compare_and_set(store: MetadataStore) -> None:
    log = log_of(store)
    key, version = make_key(tenant="111122223333")
    store.insert_creating_key(key, version)
    created = record("CreateKey", key_id=key.key_id, version=1)
    assert store.finish_creating_key(key.key_id, audit=created)
    assert [event.event_id for event in log.iter_audit_events()] == [created["eventID"]]

    lost = record("DisableKey", key_id=key.key_id)
    assert not store.update_key_state(key.key_id, KeyState.DISABLED, KeyState.ENABLED, audit=lost)
    assert not store.cancel_deletion(key.key_id, audit=record("CancelKeyDeletion", key_id=key.key_id))
    assert not store.delete_alias("111122223333", "alias/none", audit=record("DeleteAlias"))
    assert not store.update_alias("111122223333", "alias/none", key.key_id, T0, audit=record("UpdateAlias"))
    assert not store.finish_creating_key(key.key_id, audit=record("CreateKey"))
    with pytest.raises(errors.NotFoundException):
        store.update_description(str(uuid.uuid4()), "x", audit=record("UpdateKeyDescription"))
    with pytest.raises(errors.LimitExceededException):
        store.put_tags(key.key_id, {"a": "1", "b": "2"}, 1, audit=record("TagResource"))
    assert all_seqs(log) == [1]

    won = record("DisableKey", key_id=key.key_id)
    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED, audit=won)
    store.update_description(key.key_id, "d", audit=record("UpdateKeyDescription"))
    store.put_tags(key.key_id, {"a": "1"}, 10, audit=record("TagResource"))
    store.remove_tags(key.key_id, ["a"], audit=record("UntagResource"))
    assert store.schedule_deletion(key.key_id, KeyState.DISABLED, T0, 7, audit=record("ScheduleKeyDeletion"))
    assert store.cancel_deletion(key.key_id, audit=record("CancelKeyDeletion"))
    store.set_rotation(key.key_id, 90, T0, audit=record("EnableKeyRotation"))
    names = [event.event_name for event in log.iter_audit_events()]
    assert names == [
        "CreateKey", "DisableKey", "UpdateKeyDescription", "TagResource", "UntagResource",
        "ScheduleKeyDeletion", "CancelKeyDeletion", "EnableKeyRotation",
    ]  # fmt: skip
    assert store.get_key(key.key_id) is not None
    assert verify(log) == 8


def test_audit_on_alias_and_rotation_writes(store: MetadataStore) -> None:
    log = log_of(store)
    key, version = make_key(tenant="111122223333")
    store.insert_creating_key(key, version)
    store.finish_creating_key(key.key_id)  # no record given: none written
    store.create_alias(
        AliasRecord("111122223333", "alias/a", key.key_id, T0, T0), audit=record("CreateAlias")
    )
    with pytest.raises(errors.AlreadyExistsException):
        store.create_alias(
            AliasRecord("111122223333", "alias/a", key.key_id, T0, T0), audit=record("CreateAlias")
        )
    assert store.update_alias("111122223333", "alias/a", key.key_id, T0, audit=record("UpdateAlias"))
    assert store.delete_alias("111122223333", "alias/a", audit=record("DeleteAlias"))

    token_id = new_token_id()
    pending = KeyVersion(key.key_id, 2, token_id, VersionState.PENDING, T0, RotationType.ON_DEMAND)
    assert store.insert_pending_version(pending, 10)
    assert not store.finish_rotation(key.key_id, 2, new_token_id(), None, audit=record("RotateKeyOnDemand"))
    assert store.finish_rotation(key.key_id, 2, token_id, None, audit=record("RotateKeyOnDemand"))
    assert [event.event_name for event in log.iter_audit_events()] == [
        "CreateAlias",
        "UpdateAlias",
        "DeleteAlias",
        "RotateKeyOnDemand",
    ]
    assert verify(log) == 4


# ---------------------------------------------------------------- retention


def test_purge_keeps_the_rest_verifiable_from_the_anchor(store: MetadataStore) -> None:
    log = log_of(store)
    rows = [record(when=T0 + timedelta(days=i)) for i in range(10)]
    log.append_audit_records(rows)
    for seq in (2, 4, 8):
        head = next(event for event in log.iter_audit_events(seq - 1))
        log.add_audit_seal(AuditSeal(seq, head.hash, T0, b"m" * 32))
    with pytest.raises(errors.AlreadyExistsException):
        log.add_audit_seal(AuditSeal(2, b"h" * 32, T0, b"m" * 32))

    assert log.purge_audit_before(T0 + timedelta(days=4)) == 4
    fifth = next(iter(log.iter_audit_events()))
    assert fifth.seq == 5
    assert log.audit_anchor() == (4, fifth.previous_hash)
    assert [seal.seq for seal in log.list_audit_seals()] == [8]
    assert verify(log) == 6
    # The old genesis no longer explains the first row: the anchor is needed.
    assert first_chain_problem(list(log.iter_audit_events())) is not None

    assert log.purge_audit_before(T0 + timedelta(days=4)) == 0
    assert log.append_audit_records([record(when=T0 + timedelta(days=20))]) == [11]
    assert verify(log) == 7
    assert log.purge_audit_before(T0 + timedelta(days=100)) == 7
    assert log.audit_anchor()[0] == 11
    assert log.append_audit_records([record()]) == [12]
    assert verify(log) == 1


def test_purge_removes_only_a_prefix(store: MetadataStore) -> None:
    """A late-ingested old record after a newer one waits: a hole would read as a removal."""
    log = log_of(store)
    log.append_audit_records(
        [record(when=T0), record(when=T0 + timedelta(days=5)), record(when=T0), record(when=T0)]
    )
    assert log.purge_audit_before(T0 + timedelta(days=1)) == 1
    assert all_seqs(log) == [2, 3, 4]
    assert verify(log) == 3


# ---------------------------------------------------------------- concurrency

PER_WRITER = 200


def _append_many(log: AuditLog, writer: str) -> None:
    for i in range(PER_WRITER):
        rows = [record(principal=f"arn:hsmstore:iam::111122223333:user/{writer}")]
        if i % 3 == 0:
            log.append_audit_records(rows, (f"{writer}.jsonl", i + 1))
        else:
            log.append_audit_records(rows)


def assert_one_gap_free_chain(log: AuditLog, writers: list[str]) -> None:
    events = list(log.iter_audit_events())
    assert [event.seq for event in events] == list(range(1, PER_WRITER * len(writers) + 1))
    assert first_chain_problem(events) is None
    principals = [event.record["userIdentity"]["arn"].rsplit("/", 1)[1] for event in events]
    assert sorted(set(principals)) == sorted(writers)
    assert all(principals.count(writer) == PER_WRITER for writer in writers)
    for writer in writers:
        assert log.spool_offset(f"{writer}.jsonl") == max(i + 1 for i in range(PER_WRITER) if i % 3 == 0)


def test_two_threads_append_one_chain(store: MetadataStore) -> None:
    log = log_of(store)
    failures: list[BaseException] = []

    def run(writer: str) -> None:
        try:
            _append_many(log, writer)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("t1", "t2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert_one_gap_free_chain(log, ["t1", "t2"])


def _append_in_a_process(url: str, writer: str, start: Any) -> None:
    """Runs in a spawned process: its own engine, then append as fast as it can."""
    engine = create_engine_for_url(url)
    try:
        start.wait(timeout=60)
        _append_many(SqlMetadataStore(engine), writer)
    finally:
        engine.dispose()


def test_two_processes_append_one_chain(database_url: str, tmp_path: Path) -> None:
    upgrade(database_url)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = ["p1", "p2"]
    processes = [context.Process(target=_append_in_a_process, args=(database_url, w, start)) for w in writers]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
    assert [process.exitcode for process in processes] == [0, 0]
    engine = create_engine_for_url(database_url)
    try:
        assert_one_gap_free_chain(SqlMetadataStore(engine), writers)
    finally:
        engine.dispose()


# ---------------------------------------------------------------- spool lines


def test_spool_lines_ingest_with_the_same_index_fields_as_the_records(
    store: MetadataStore, tmp_path: Path
) -> None:
    """The indexed line's head (store/spool.py) must index a record exactly as the record would."""
    key_id = make_key()[0].key_id
    records = [
        record("Decrypt", key_id=key_id, version=3),
        record("Encrypt", key_id=key_id, error_code="DisabledException"),
        record("ListKeys", tenant="", principal=""),  # an unidentified caller's record
        record("DescribeKey", principal="arn:hsmstore:iam::111122223333:user/tab\there"),  # JSON-only line
    ]
    sink = SpoolAuditSink(tmp_path / "spool")
    for item in records:
        sink.record(item)
    lines = sink.path.read_bytes().splitlines()
    assert [line[:2] for line in lines] == [b"H\t", b"H\t", b"H\t", b'{"']
    sink.close()
    assert SpoolIngester(tmp_path / "spool", log_of(store)).ingest_once() == len(records)
    stored = list(log_of(store).iter_audit_events())
    assert [event.record for event in stored] == records
    for event, item in zip(stored, records, strict=True):
        expected = audit_fields(item)
        assert (event.event_id, event.event_time, event.tenant, event.event_name, event.key_id) == (
            expected.event_id,
            expected.event_time,
            expected.tenant,
            expected.event_name,
            expected.key_id,
        )
    assert verify(log_of(store)) == len(records)
    usage = log_of(store).last_key_usage(key_id)
    assert [(version, event.event_name) for version, event in usage] == [(None, "Decrypt"), (3, "Decrypt")]


def test_a_backlog_is_ingested_in_short_transactions_in_order(store: MetadataStore, tmp_path: Path) -> None:
    """Each transaction holds the DB's write lock; a backlog must not hold it for all its records."""
    records = [record("Decrypt", key_id=make_key()[0].key_id) for _ in range(RECORDS_PER_TRANSACTION * 3 + 5)]
    sink = SpoolAuditSink(tmp_path / "spool")
    for item in records:
        sink.record(item)
    sink.close()
    audit_log = log_of(store)
    batches: list[int] = []
    append = audit_log.append_audit_records

    def counted(batch: Any, spool_position: Any = None) -> Any:
        batches.append(len(batch))
        return append(batch, spool_position)

    audit_log.append_audit_records = counted  # type: ignore[method-assign]
    assert SpoolIngester(tmp_path / "spool", audit_log).ingest_once() == len(records)
    assert batches == [RECORDS_PER_TRANSACTION] * 3 + [5]
    assert [event.record for event in audit_log.iter_audit_events()] == records
    assert verify(audit_log) == len(records)


def test_an_indexed_spool_line_that_cannot_be_read_is_recorded_as_unreadable(
    store: MetadataStore, tmp_path: Path
) -> None:
    sink = SpoolAuditSink(tmp_path / "spool")
    sink.record(record("Decrypt"))
    sink.close()
    with sink.path.open("ab") as spool:
        spool.write(b"H\tonly\ttwo fields\n")
    assert SpoolIngester(tmp_path / "spool", log_of(store)).ingest_once() == 2
    names = [event.event_name for event in log_of(store).iter_audit_events()]
    assert names == ["Decrypt", "UnreadableSpoolLine"]


# ------------------------------------------- spool lines that cannot be ingested (issue 14)


def names_in_chain(store: MetadataStore) -> list[str]:
    return [event.event_name for event in log_of(store).iter_audit_events()]


def write_dead_spool(directory: Path, content: bytes) -> Path:
    """A spool whose writer is gone (nobody holds its lock), holding exactly ``content``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"dead-1-{uuid.uuid4().hex[:8]}.jsonl"
    path.write_bytes(content)
    return path


def test_a_line_larger_than_a_batch_is_quarantined_and_the_lines_after_it_are_ingested(
    store: MetadataStore, tmp_path: Path
) -> None:
    """Before: a line over MAX_BATCH_BYTES was never read, and every later line waited behind it."""
    huge = b"H\t" + b"x" * (MAX_BATCH_BYTES + 10) + b"\n"
    spool = tmp_path / "spool"
    path = write_dead_spool(spool, spool_line(record("Decrypt")) + huge + spool_line(record("Encrypt")))
    assert SpoolIngester(spool, log_of(store)).ingest_once() == 3
    assert names_in_chain(store) == ["Decrypt", "UnreadableSpoolLine", "Encrypt"]
    kept = spool / "quarantine" / f"{path.name}.{len(spool_line(record('Decrypt')))}"
    assert kept.read_bytes() == huge
    assert not path.exists(), "a fully ingested dead spool is removed"
    report = verify_trail(log_of(store), None)
    assert report.ok and not report.clean
    assert report.quarantined == ((2, f"quarantine/{kept.name}"),)
    assert "1 audit spool lines were quarantined" in report.summary() and kept.name in report.summary()


def test_a_torn_tail_left_by_a_dead_writer_is_quarantined_and_its_spool_removed(
    store: MetadataStore, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    torn = spool_line(record("Encrypt"))[:40]
    path = write_dead_spool(spool, spool_line(record("Decrypt")) + torn)
    assert SpoolIngester(spool, log_of(store)).ingest_once() == 2
    assert names_in_chain(store) == ["Decrypt", "UnreadableSpoolLine"]
    assert not path.exists()
    assert [kept.read_bytes() for kept in (spool / "quarantine").iterdir()] == [torn]


def test_an_unfinished_line_of_a_live_writer_waits_for_its_end(store: MetadataStore, tmp_path: Path) -> None:
    sink = SpoolAuditSink(tmp_path / "spool")
    sink.record(record("Decrypt"))
    second = spool_line(record("Encrypt"))
    with sink.path.open("ab") as spool:
        spool.write(second[:30])
    ingester = SpoolIngester(tmp_path / "spool", log_of(store))
    assert ingester.ingest_once() == 1
    with sink.path.open("ab") as spool:
        spool.write(second[30:])
    assert ingester.ingest_once() == 1
    assert names_in_chain(store) == ["Decrypt", "Encrypt"]
    sink.close()


def test_a_json_line_that_cannot_be_indexed_is_quarantined_instead_of_stopping_ingestion(
    store: MetadataStore, tmp_path: Path
) -> None:
    """Before: it failed every append of its batch, so nothing after it was ever ingested."""
    spool = tmp_path / "spool"
    write_dead_spool(spool, b'{"eventName": "Decrypt"}\n' + spool_line(record("Encrypt")))
    assert SpoolIngester(spool, log_of(store)).ingest_once() == 2
    assert names_in_chain(store) == ["UnreadableSpoolLine", "Encrypt"]


def _record_until_the_file_size_limit(directory: str, limit: int, answered: Any) -> None:
    """Runs in a spawned process: a real short write (RLIMIT_FSIZE), then room again."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    sink = SpoolAuditSink(Path(directory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    count = 0
    for _ in range(1000):
        try:
            sink.record(record("Decrypt"))
        except OSError:
            break
        count += 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    sink.record(record("Encrypt"))
    answered.value = count + 1
    sink.close()


def test_a_short_spool_write_fails_the_record_and_leaves_no_torn_line(
    store: MetadataStore, tmp_path: Path
) -> None:
    """Before: the bytes of a short write stayed, the next record was glued to them and lost."""
    context = multiprocessing.get_context("spawn")
    answered = context.Value("i", 0)
    limit = 10 * len(spool_line(record("Decrypt"))) + 77  # the 11th record is cut short
    child = context.Process(
        target=_record_until_the_file_size_limit, args=(str(tmp_path / "spool"), limit, answered)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and answered.value == 11
    assert SpoolIngester(tmp_path / "spool", log_of(store)).ingest_once() == 11
    assert names_in_chain(store) == ["Decrypt"] * 10 + ["Encrypt"]


def test_iterating_the_trail_reads_large_records_in_batches_bounded_by_bytes(sql_engine: Engine) -> None:
    """The seal and verify jobs walk the chain with it: 1000 large rows at once were ~1 GB.

    SQLite and PostgreSQL only: the batches are the SQL store's SELECTs.
    """
    store = SqlMetadataStore(sql_engine)
    big = {f"p{i}": "v" * 30_000 for i in range(3)}
    records = []
    for _ in range(40):
        call = CallAudit("Encrypt", Caller("111122223333", "arn:hsmstore:iam::111122223333:user/a"), big, T0)
        records.append(call.to_record(latency_ms=1.0))
    log_of(store).append_audit_records(records)
    loads: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "record_json" in statement and "length(" not in statement.lower():
            loads.append(statement)

    sqlalchemy.event.listen(store.database.reader.engine, "before_cursor_execute", note)
    try:
        assert len(list(log_of(store).iter_audit_events())) == 40
    finally:
        sqlalchemy.event.remove(store.database.reader.engine, "before_cursor_execute", note)
    assert len(loads) >= 40 * 90_000 // ITER_BATCH_CHARS
