"""The periodic jobs' queries search an index on SQLite; none scans every key (migration 0016).

Each job runs every ``--jobs-interval-seconds`` in every serving process, and recovery also before
a process serves: a scan there costs a million-key store seconds. The plan is read with EXPLAIN
QUERY PLAN of the very statement and parameters the store sends. The states must also be in the
statement's text (``schema.inline_state``), where a PostgreSQL generic plan sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from hsmstore.store.sql import SqlMetadataStore
from tests.contract.conftest_store import sqlite_engine_fixture  # noqa: F401 (fixture, used by name)

NOW = datetime(2026, 12, 7, tzinfo=UTC)

JOB_QUERIES: dict[str, Callable[[SqlMetadataStore], Sequence[Any]]] = {
    "recovery: interrupted CreateKeys": lambda store: store.list_pending_creations(
        NOW - timedelta(minutes=1)
    ),
    "recovery: interrupted rotations": lambda store: store.list_pending_versions(NOW - timedelta(minutes=1)),
    "rotation scheduler": lambda store: store.list_due_rotations(NOW, 100),
    "deletion reaper": lambda store: store.list_keys_to_destroy(NOW, 100),
    "expired imported material": lambda store: store.list_keys_with_expired_material(NOW, 100),
}


def sent_by(engine: Engine, job: Callable[[SqlMetadataStore], Sequence[Any]]) -> tuple[list[str], list[str]]:
    """Every statement ``job`` sends, and the EXPLAIN QUERY PLAN lines of them all."""
    store = SqlMetadataStore(engine)
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    try:
        event.listen(store.database.reader.engine, "before_cursor_execute", record)
        try:
            job(store)
        finally:
            event.remove(store.database.reader.engine, "before_cursor_execute", record)
        plans: list[str] = []
        with store.database.reader.connect() as connection:
            for statement, parameters in sent:
                rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
                plans.extend(str(row[3]) for row in rows)
        return [statement for statement, _ in sent], plans
    finally:
        store.close()


@pytest.mark.parametrize("job", list(JOB_QUERIES))
def test_a_periodic_job_searches_an_index_and_scans_no_key_table(sqlite_engine: Engine, job: str) -> None:
    _, plans = sent_by(sqlite_engine, JOB_QUERIES[job])
    assert plans, "the job sent no statement"
    assert not [line for line in plans if line.startswith("SCAN")], plans
    assert [
        line for line in plans if line.startswith("SEARCH keys") or line.startswith("SEARCH key_versions")
    ]


@pytest.mark.parametrize(
    ("job", "states"),
    [
        ("recovery: interrupted CreateKeys", ["CREATING", "FAILED"]),
        ("recovery: interrupted rotations", ["PENDING", "ABANDONED"]),
        ("deletion reaper", ["PENDING_DELETION", "DESTROYING"]),
    ],
)
def test_a_job_names_the_states_of_its_partial_index_in_the_statement(
    sqlite_engine: Engine, job: str, states: list[str]
) -> None:
    statements, _ = sent_by(sqlite_engine, JOB_QUERIES[job])
    for state in states:
        assert any(f"= '{state}'" in statement for statement in statements), (state, statements)
