"""The ``AuditLog`` port on SQL: one hash chain shared by every process and node.

Appending (core/audit/record.py, "Hash chain")::

    lock the head row          PostgreSQL: SELECT ... FOR UPDATE; SQLite: BEGIN IMMEDIATE
    seq  = head.seq + 1, ...   assigned here, never by a sequence (a gap means a removal)
    hash = SHA-256(previous || u64be(seq) || canonical record bytes)
    insert the rows, move the head, store the spool offset      -- one transaction

The head row is the single point of serialisation, so two appenders can never
take the same seq or link to the same predecessor, and a rolled-back append
leaves no trace (no gap). :meth:`SqlAuditLog.append_in` takes an open write
transaction so that a management change and its record commit together
("recorded with the call's own DB change", core/audit/record.py): the other
parts of ``SqlMetadataStore`` are given this log and call
:meth:`SqlAuditLog.record_change` inside their own transactions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import and_, exc, func, or_, select
from sqlalchemy.engine import Connection, RowMapping

from hsmstore import errors
from hsmstore.core.audit.chain import StoredAuditEvent, chain_hash
from hsmstore.core.audit.fields import CRYPTOGRAPHIC_EVENTS, audit_fields
from hsmstore.core.audit.record import SerializedRecord, recipient_records, serialized
from hsmstore.core.ports import AuditQuery, AuditSeal
from hsmstore.store.database import Database
from hsmstore.store.schema import (
    audit_anchor,
    audit_chain_head,
    audit_events,
    audit_seals,
    audit_spool_offsets,
)

ITER_BATCH: Final = 1000
# At most this many characters of record JSON per SELECT of iter_audit_events (at least one row):
# what the seal and verify jobs hold at once, whatever the size of the records (issue 14).
ITER_BATCH_CHARS: Final = 1024 * 1024
_SINGLE_ROW: Final = 1  # the id of the one row of audit_chain_head and audit_anchor


class SqlAuditLog:
    """``AuditLog`` on the store's database (see the module docstring)."""

    def __init__(self, database: Database) -> None:
        self._writer = database.writer
        self._reader = database.reader

    # -- appending --------------------------------------------------------

    def append_audit_records(
        self,
        records: Sequence[Mapping[str, Any] | SerializedRecord],
        spool_position: tuple[str, int] | None = None,
    ) -> list[int]:
        """See the port. With ``spool_position``, the offset moves in the same transaction.

        Raises ``AlreadyExistsException`` (and writes nothing) if the spool has
        already been ingested to that offset or further, or a record's eventID
        is in the trail already: a spool line is ingested exactly once.
        """
        try:
            with self._writer.begin() as connection:
                seqs = self.append_in(connection, records)
                if spool_position is not None:
                    _move_spool_offset(connection, *spool_position)
        except exc.IntegrityError:
            raise errors.AlreadyExistsException("an audit record with that eventID is in the trail") from None
        return seqs

    def record_change(self, connection: Connection, audit: Mapping[str, Any] | None) -> None:
        """Append a management change's record, if the caller gave one, in the change's transaction."""
        if audit is not None:
            self.append_in(connection, [audit])

    def append_in(
        self, connection: Connection, records: Sequence[Mapping[str, Any] | SerializedRecord]
    ) -> list[int]:
        """Append ``records`` inside the caller's write transaction; returns their seqs.

        Call it last in the transaction: the head row stays locked until commit,
        so every other appender waits for this transaction.
        """
        if not records:
            return []
        # A management change's record (a mapping): the key owner's copy too (core/audit/record.py
        # recipient_records). Spool lines (SerializedRecord) were made into copies when spooled.
        items = [
            copy
            for item in records
            for copy in ([item] if isinstance(item, SerializedRecord) else recipient_records(item))
        ]
        rows = [(item.fields or audit_fields(item.record), item.canonical) for item in map(serialized, items)]
        head = connection.execute(
            select(audit_chain_head.c.seq, audit_chain_head.c.hash)
            .where(audit_chain_head.c.id == _SINGLE_ROW)
            .with_for_update()
        ).one()
        first = seq = int(head.seq)
        previous = bytes(head.hash)
        on_sqlite = connection.dialect.name == "sqlite"
        values: list[tuple[Any, ...]] = []
        for fields, record_bytes in rows:
            seq += 1
            digest = chain_hash(previous, seq, record_bytes)
            event_time = fields.event_time.astimezone(UTC)
            values.append(
                (
                    seq,
                    fields.event_id,
                    # schema.UtcDateTime's stored form: SQLite naive UTC text, PostgreSQL aware
                    event_time.replace(tzinfo=None).isoformat(" ", "microseconds")
                    if on_sqlite
                    else event_time,
                    fields.tenant,
                    fields.principal,
                    fields.event_name,
                    fields.key_id,
                    fields.key_version,
                    fields.error_code,
                    record_bytes.decode("utf-8"),
                    previous,
                    digest,
                )
            )
            previous = digest
        _insert_events(connection, values)
        connection.execute(
            audit_chain_head.update()
            .where(audit_chain_head.c.id == _SINGLE_ROW)
            .values(seq=seq, hash=previous)
        )
        return list(range(first + 1, seq + 1))

    def spool_offset(self, spool_name: str) -> int:
        query = select(audit_spool_offsets.c.offset).where(audit_spool_offsets.c.spool_name == spool_name)
        with self._reader.connect() as connection:
            offset = connection.execute(query).scalar()
        return int(offset or 0)

    # -- reading ----------------------------------------------------------

    def lookup_audit_events(self, query: AuditQuery) -> Sequence[StoredAuditEvent]:
        """CloudTrail's LookupEvents order (newest event time first), keyset paged, one tenant only.

        The time range is ``start_time <= eventTime < end_time``.
        """
        if query.limit < 1:
            raise ValueError(f"limit must be at least 1, not {query.limit}")
        conditions = [audit_events.c.tenant == query.tenant]
        if query.before is not None:
            before_time, before_seq = query.before
            conditions.append(
                or_(
                    audit_events.c.event_time < before_time,
                    and_(audit_events.c.event_time == before_time, audit_events.c.seq < before_seq),
                )
            )
        if query.event_name is not None:
            conditions.append(audit_events.c.event_name == query.event_name)
        if query.principal is not None:
            conditions.append(audit_events.c.principal == query.principal)
        if query.key_id is not None:
            conditions.append(audit_events.c.key_id == query.key_id)
        if query.start_time is not None:
            conditions.append(audit_events.c.event_time >= query.start_time)
        if query.end_time is not None:
            conditions.append(audit_events.c.event_time < query.end_time)
        statement = (
            select(audit_events)
            .where(and_(*conditions))
            .order_by(audit_events.c.event_time.desc(), audit_events.c.seq.desc())
            .limit(query.limit)
        )
        with self._reader.connect() as connection:
            return [_event_from_row(row._mapping) for row in connection.execute(statement)]

    def iter_audit_events(self, after_seq: int = 0) -> Iterator[StoredAuditEvent]:
        """Seq order, at most :data:`ITER_BATCH` rows and :data:`ITER_BATCH_CHARS` characters of
        record JSON per SELECT (no connection held between batches).

        The sizes are read first (seq and length only), so a batch of large
        records is cut before any of them is loaded.
        """
        last = after_seq
        while True:
            sizes = (
                select(audit_events.c.seq, func.length(audit_events.c.record_json))
                .where(audit_events.c.seq > last)
                .order_by(audit_events.c.seq)
                .limit(ITER_BATCH)
            )
            with self._reader.connect() as connection:
                found = [(int(seq), int(length or 0)) for seq, length in connection.execute(sizes)]
            if not found:
                return
            upto, total = found[0][0], 0
            for seq, length in found:
                total += length
                if total > ITER_BATCH_CHARS and seq != found[0][0]:
                    break
                upto = seq
            statement = (
                select(audit_events)
                .where(audit_events.c.seq > last, audit_events.c.seq <= upto)
                .order_by(audit_events.c.seq)
            )
            with self._reader.connect() as connection:
                batch = [_event_from_row(row._mapping) for row in connection.execute(statement)]
            yield from batch
            if len(found) < ITER_BATCH and upto == found[-1][0]:
                return
            last = upto

    def newest_audit_event(self) -> StoredAuditEvent | None:
        """One row by the primary key's index, however long the trail."""
        statement = select(audit_events).order_by(audit_events.c.seq.desc()).limit(1)
        with self._reader.connect() as connection:
            row = connection.execute(statement).first()
        return None if row is None else _event_from_row(row._mapping)

    def last_key_usage(self, key_id: str) -> Sequence[tuple[int | None, StoredAuditEvent]]:
        """The newest successful cryptographic event of the key (None) and of each version.

        Versions in ascending order after the overall one. One statement: the
        newest seq per version (the (key_id, key_version, seq) index) and the
        newest overall, then those rows.
        """
        used = and_(
            audit_events.c.key_id == key_id,
            audit_events.c.error_code.is_(None),
            audit_events.c.event_name.in_(sorted(CRYPTOGRAPHIC_EVENTS)),
        )
        per_version = (
            select(func.max(audit_events.c.seq))
            .where(used, audit_events.c.key_version.is_not(None))
            .group_by(audit_events.c.key_version)
        )
        overall = select(func.max(audit_events.c.seq)).where(used).scalar_subquery()
        statement = (
            select(audit_events)
            .where(audit_events.c.seq.in_(per_version) | (audit_events.c.seq == overall))
            .order_by(audit_events.c.seq)
        )
        with self._reader.connect() as connection:
            rows = [(row.key_version, _event_from_row(row._mapping)) for row in connection.execute(statement)]
        if not rows:
            return []
        newest: list[tuple[int | None, StoredAuditEvent]] = [(None, rows[-1][1])]  # rows are in seq order
        by_version: dict[int, StoredAuditEvent] = {}
        for version, event in rows:
            if version is not None:
                by_version[version] = event  # later rows win: the newest of each version
        newest.extend((version, by_version[version]) for version in sorted(by_version))
        return newest

    # -- anchor, seals, retention ----------------------------------------

    def audit_anchor(self) -> tuple[int, bytes]:
        query = select(audit_anchor.c.seq, audit_anchor.c.hash).where(audit_anchor.c.id == _SINGLE_ROW)
        with self._reader.connect() as connection:
            row = connection.execute(query).one()
        return int(row.seq), bytes(row.hash)

    def add_audit_seal(self, seal: AuditSeal) -> None:
        """Store a seal; ``AlreadyExistsException`` if that seq was sealed already."""
        try:
            with self._writer.begin() as connection:
                connection.execute(
                    audit_seals.insert().values(
                        seq=seal.seq, hash=seal.hash, sealed_at=seal.sealed_at, mac=seal.mac
                    )
                )
        except exc.IntegrityError:
            raise errors.AlreadyExistsException(f"the audit chain at {seal.seq} is sealed already") from None

    def list_audit_seals(self) -> Sequence[AuditSeal]:
        """Every seal, oldest (lowest seq) first."""
        with self._reader.connect() as connection:
            rows = connection.execute(select(audit_seals).order_by(audit_seals.c.seq))
            return [AuditSeal(row.seq, bytes(row.hash), row.sealed_at, bytes(row.mac)) for row in rows]

    def purge_audit_before(self, cutoff: datetime) -> int:
        """Delete the oldest events, up to the first one at or after ``cutoff``.

        Only a prefix of the chain can go (a hole in the middle would read as a
        removal), so an event older than ``cutoff`` that follows a newer one
        (a spooled record ingested late) waits for the next purge. The anchor
        moves to the last deleted row and seals at or below it go, in the same
        transaction, so the rest still verifies from the anchor.
        """
        if cutoff.tzinfo is None or cutoff.utcoffset() is None:
            raise ValueError("cutoff must be a timezone-aware datetime")
        with self._writer.begin() as connection:
            anchor_seq = connection.execute(
                select(audit_anchor.c.seq).where(audit_anchor.c.id == _SINGLE_ROW).with_for_update()
            ).scalar_one()
            # Along the primary key from the start: reads the rows it deletes and one more.
            first_kept = connection.execute(
                select(audit_events.c.seq)
                .where(audit_events.c.event_time >= cutoff)
                .order_by(audit_events.c.seq)
                .limit(1)
            ).scalar()
            if first_kept is None:
                last_gone = connection.execute(select(func.max(audit_events.c.seq))).scalar()
            else:
                last_gone = connection.execute(
                    select(func.max(audit_events.c.seq)).where(audit_events.c.seq < first_kept)
                ).scalar()
            if last_gone is None or last_gone <= anchor_seq:
                return 0
            last_hash = connection.execute(
                select(audit_events.c.hash).where(audit_events.c.seq == last_gone)
            ).scalar_one()
            deleted = connection.execute(
                audit_events.delete().where(audit_events.c.seq <= last_gone)
            ).rowcount
            connection.execute(
                audit_anchor.update()
                .where(audit_anchor.c.id == _SINGLE_ROW)
                .values(seq=last_gone, hash=bytes(last_hash))
            )
            connection.execute(audit_seals.delete().where(audit_seals.c.seq <= last_gone))
        return int(deleted)


def _move_spool_offset(connection: Connection, spool_name: str, offset: int) -> None:
    """Upsert under the head lock the caller holds; never backwards (see append_audit_records)."""
    current = connection.execute(
        select(audit_spool_offsets.c.offset).where(audit_spool_offsets.c.spool_name == spool_name)
    ).scalar()
    if current is None:
        connection.execute(audit_spool_offsets.insert().values(spool_name=spool_name, offset=offset))
        return
    if current >= offset:
        raise errors.AlreadyExistsException(f"audit spool {spool_name} was ingested to {current} already")
    connection.execute(
        audit_spool_offsets.update()
        .where(audit_spool_offsets.c.spool_name == spool_name)
        .values(offset=offset)
    )


def _event_from_row(row: RowMapping) -> StoredAuditEvent:
    return StoredAuditEvent(
        seq=int(row["seq"]),
        event_id=row["event_id"],
        event_time=row["event_time"],
        tenant=row["tenant"],
        event_name=row["event_name"],
        key_id=row["key_id"],
        record_json=row["record_json"],
        previous_hash=bytes(row["previous_hash"]),
        hash=bytes(row["hash"]),
    )


_EVENT_COLUMNS: Final = (
    "seq", "event_id", "event_time", "tenant", "principal", "event_name", "key_id",
    "key_version", "error_code", "record_json", "previous_hash", "hash",
)  # fmt: skip


def _insert_events(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    """One driver-level executemany of rows in ``_EVENT_COLUMNS`` order: the ingester's hot loop.

    SQLAlchemy Core's per-row parameter processing was a third of the cost of
    ingesting a record (docs/performance.md); the rows are plain values
    already, with the timestamp in the form ``schema.UtcDateTime`` stores.
    """
    marker = "?" if connection.dialect.name == "sqlite" else "%s"
    # Only fixed column names and placeholders are formatted in; every value is a bound parameter.
    statement = (
        f"INSERT INTO audit_events ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608
        f"VALUES ({', '.join([marker] * len(_EVENT_COLUMNS))})"
    )
    connection.exec_driver_sql(statement, rows)
