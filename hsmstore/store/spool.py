"""The audit spool: a record is durable before its call is answered, without a DB commit per call.

Issue 5: "Cryptographic calls may be recorded in batches off the request path,
but a call is answered only once its record is durable or queued in a way that
survives a crash of that process". Each process appends its records to its own
spool file with one ``write()`` on an ``O_APPEND`` descriptor: once ``write``
returns, the bytes are in the kernel and survive a crash (even SIGKILL) of the
process. (They do not survive a crash of the machine; that needs fsync per
call, which the DB path pays for management calls.)

An ingester process (one per data directory, started by ``hsmstore serve``)
moves complete lines into the DB chain in batches, storing each spool's byte
offset in the same transaction as its records, so a line is ingested exactly
once. Each writer holds an exclusive ``flock`` on its spool for its whole
life; a spool nobody holds belongs to a process that stopped or died, and is
removed once fully ingested.

Spool format, one record per line::

    H <TAB> eventID <TAB> eventTime <TAB> tenant <TAB> principal <TAB> eventName
      <TAB> keyId <TAB> keyVersion <TAB> errorCode <TAB> canonical JSON record <LF>

The eight index fields (core/audit/fields.py ``index_strings``, "" for none)
come first so that the ingester fills the DB's index columns without parsing
the JSON (parsing was a quarter of a record's ingestion cost). The chain hash
covers the canonical JSON only. A record whose index fields would hold a tab or
a line break is written as its canonical JSON alone (a line starting with
``{``), and the ingester parses that one; it reads both forms.

Bounds (issue 14): a record's canonical JSON is at most ``MAX_RECORD_BYTES``
(core/audit/record.py, "Record size bound"), so a line is at most
:data:`MAX_SPOOL_LINE_BYTES` (the head repeats some of its fields), well
inside one ingest batch of :data:`MAX_BATCH_BYTES`.

Whole lines only: a record's lines (the caller's copy and any key owner's
copies) go in one ``write``; if the kernel takes less than all of it (a full
disk: ``ENOSPC``, a file size limit) the spool is cut back to its length before
the write and the call fails, so no torn line is ever followed by another
record. :meth:`SpoolAuditSink.check_health` probes that a record still fits.

The ingester never stalls on a line: one it cannot read, one longer than
:data:`MAX_SPOOL_LINE_BYTES`, or the torn tail a crashed writer left, is copied
to ``quarantine/<spool name>.<offset>`` beside the spools and replaced in the
chain by an ``UnreadableSpoolLine`` record naming that file (so ``hsmstore
audit verify`` counts and reports it), and ingestion goes on with the next line.

Backlog (issue 16, "audit spool backlog and ingest lag"): once a round, before
it ingests, the ingester measures what the spools hold beyond what the chain
has (:meth:`SpoolIngester.backlog`: the bytes, and the event time of the
oldest such record) and hands it to an optional observer
(``server/metrics.py`` makes gauges of it). It keeps each spool's offset in
memory too, so the backlog is still measured while the DB is down, which is
when it grows.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from hsmstore.core.audit.fields import INDEX_FIELDS, audit_fields, fields_from_strings, index_strings
from hsmstore.core.audit.record import (
    MAX_RECORD_BYTES,
    UNREADABLE_SPOOL_LINE_EVENT,
    SerializedRecord,
    bound_record,
    recipient_records,
)
from hsmstore.core.ports import AuditLog

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".jsonl"
MAX_BATCH_BYTES = 4 * 1024 * 1024
RECORDS_PER_TRANSACTION = 128
"""Each ingest transaction holds the DB's write lock (SQLite: the only one) for its records, at
tens of µs each; a short transaction keeps a request's write (a lease, a CreateKey) from waiting
behind a second's worth of records (issue 18). Not shorter: each commit writes the pages its
records share (the indexes' leaves, the chain head) to the WAL again, so 32 a transaction cost
the ingester half as much CPU again per record (docs/performance.md), and a key's first use in a
process writes nothing since migration 0015."""
PAUSE_BETWEEN_TRANSACTIONS_SECONDS = 0.001
"""Between two ingest transactions the ingester steps aside this long, so waiting writers go first."""
# The head repeats at most the record's own fields, so no line a writer makes is longer.
MAX_SPOOL_LINE_BYTES = 2 * MAX_RECORD_BYTES + 1024
PROBE_BYTES = MAX_RECORD_BYTES  # check_health: room for one more whole record
QUARANTINE_DIRECTORY = "quarantine"
_COPY_CHUNK = 1024 * 1024


class SpoolAuditSink:
    """The AuditSink of a server process: appends only (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SPOOL_SUFFIX}"
        self.path = directory / self.name
        self._quarantine = directory / QUARANTINE_DIRECTORY
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours for life: "this spool is live"
        self._write_lock = threading.Lock()
        self._length = os.fstat(self._fd).st_size  # every whole line written so far
        self._torn = False  # a failed write could not be cut back: nothing may follow it
        self._closed = False
        self._quarantined_seen = 0

    def record(self, record: Mapping[str, Any]) -> None:
        """Append the record's lines whole, or raise ``OSError`` and leave the spool as it was."""
        lines = b"".join(spool_line(item) for item in recipient_records(record))
        with self._write_lock:
            self._append(lines)
            self._length += len(lines)

    def check_health(self) -> None:
        """Raise ``OSError`` unless a record of the largest size can be written whole now.

        Health must say NOT_SERVING while every call is refused for want of
        spool space (issue 14). The probe is written without a line end and cut
        off again at once, so the ingester only ever sees it as an unfinished line.
        """
        with self._write_lock:
            try:
                self._append(b" " * PROBE_BYTES)
            except OSError as error:
                raise OSError(
                    error.errno,
                    f"the audit spool {self.path} cannot be written ({error.strerror}): calls are "
                    "refused until it can (free space on its file system)",
                ) from None
            self._cut_back()
        self._report_quarantine()

    @property
    def length(self) -> int:
        """The bytes of whole lines written to this spool (what the ingester has to take)."""
        return self._length

    def close(self) -> None:
        """Flush the spool to disk and release it: from now on the ingester may finish and remove it.

        Issue 16, Deliver 7 ("flushes the audit spool"): a line is in the
        kernel once its ``write`` returned (module docstring); the ``fsync``
        here makes the last ones survive a crash of the machine after a clean
        stop too. A failed ``fsync`` is logged, not raised: the lines are still
        in the kernel and the ingester reads them from there. Idempotent.
        """
        with self._write_lock:  # never a write or probe on a closed (maybe reused) descriptor
            if self._closed:
                return
            self._closed = True
            try:
                os.fsync(self._fd)
            except OSError as error:
                log.error("could not flush the audit spool %s to disk: %s", self.path, error.strerror)
            finally:
                os.close(self._fd)

    def _append(self, data: bytes) -> None:
        """One ``write`` of ``data`` at the end of the whole lines (the write lock is held)."""
        if self._closed:
            raise OSError(errno.EBADF, f"the audit spool {self.path} is closed")
        if self._torn:
            self._cut_back()
        try:
            written = os.write(self._fd, data)
        except OSError:
            self._cut_back()
            raise
        if written != len(data):
            self._cut_back()
            raise OSError(
                errno.ENOSPC, f"short write to the audit spool {self.path} ({written} of {len(data)})"
            )

    def _cut_back(self) -> None:
        """Truncate to the whole lines; if even that fails, remember to retry before the next write."""
        try:
            os.ftruncate(self._fd, self._length)
        except OSError:
            self._torn = True
            raise
        self._torn = False

    def _report_quarantine(self) -> None:
        try:
            count = sum(1 for _ in self._quarantine.iterdir())
        except FileNotFoundError:
            count = 0
        if count != self._quarantined_seen:
            self._quarantined_seen = count
            log.warning(
                "%d audit spool lines are quarantined in %s (unreadable or too large); "
                "`hsmstore audit verify` lists them",
                count,
                self._quarantine,
            )


@dataclass(frozen=True)
class SpoolBacklog:
    """What the spools hold that is not in the chain yet (:meth:`SpoolIngester.backlog`)."""

    bytes: int
    oldest_event_time: datetime | None  # of the first record not yet ingested; None: nothing waits

    def lag_seconds(self, now: datetime) -> float:
        """How long the oldest record not yet in the chain has waited (0 when none waits)."""
        if self.oldest_event_time is None:
            return 0.0
        return max(0.0, (now - self.oldest_event_time).total_seconds())


BacklogObserver = Callable[[SpoolBacklog], None]
HEAD_PROBE_BYTES = 256  # an indexed line's head reaches its eventTime well within this


class SpoolIngester:
    """Moves every spool of a data directory into the chain; runs in its own process.

    Why its own process: ingesting inside the serving process cost its request
    threads several times the work itself (GIL hand-offs; docs/performance.md).
    A live spool is read without its lock (only complete lines are taken); a
    spool whose writer is gone (its lock is free) is removed once fully ingested.
    """

    def __init__(self, directory: Path, audit_log: AuditLog) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._directory = directory
        self._quarantine = directory / QUARANTINE_DIRECTORY
        self._log = audit_log
        self._offsets: dict[str, int] = {}  # spool name -> offset in the chain, as last read or written

    def ingest_once(self) -> int:
        """Ingest every spool once; returns how many records moved (quarantine records included)."""
        moved = 0
        for path in sorted(self._directory.glob(f"*{SPOOL_SUFFIX}")):
            try:
                moved += self._ingest_spool(path)
            except FileNotFoundError:
                continue  # removed by another ingester meanwhile
        return moved

    def backlog(self) -> SpoolBacklog:
        """The bytes of every spool past its offset in the chain, and the oldest such record's time.

        An offset this ingester has not read yet is asked of the DB; if the DB
        does not answer, the whole spool counts (an overestimate, never an underestimate).
        """
        waiting = 0
        oldest: datetime | None = None
        for path in self._directory.glob(f"*{SPOOL_SUFFIX}"):
            try:
                size = path.stat().st_size
                offset = self._known_offset(path.name)
                if size <= offset:
                    continue
                waiting += size - offset
                event_time = _event_time_at(path, offset)
            except FileNotFoundError:
                continue  # fully ingested and removed meanwhile
            if event_time is not None and (oldest is None or event_time < oldest):
                oldest = event_time
        return SpoolBacklog(waiting, oldest)

    def _known_offset(self, name: str) -> int:
        offset = self._offsets.get(name)
        if offset is None:
            try:
                offset = self._offsets[name] = self._log.spool_offset(name)
            except Exception:  # the DB is down: count the whole spool
                return 0
        return offset

    def run(
        self,
        stop: threading.Event,
        interval_seconds: float,
        parent_pid: int | None = None,
        observe: BacklogObserver | None = None,
    ) -> None:
        """Ingest every ``interval_seconds`` until ``stop`` is set or the parent process is gone,
        then once more, so that a stopping server leaves its last records in the chain.

        ``observe`` is handed the backlog at the start of every round (module docstring).
        """
        while not stop.wait(interval_seconds):
            if parent_pid is not None and os.getppid() != parent_pid:
                break
            if observe is not None:
                try:
                    observe(self.backlog())
                except Exception:
                    log.exception("measuring the audit spool backlog failed")
            try:
                self.ingest_once()
            except Exception:
                log.exception("audit ingestion failed; the spools keep the records and it is retried")
        self.ingest_once()

    def _ingest_spool(self, path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            moved = self._ingest(path, path.name, writer_gone=False)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return moved  # its writer is alive
            # Anything written just before it stopped, and a torn tail it left by dying mid-write.
            moved += self._ingest(path, path.name, writer_gone=True)
            if self._log.spool_offset(path.name) >= os.fstat(fd).st_size:
                path.unlink(missing_ok=True)
                self._offsets.pop(path.name, None)
            return moved
        finally:
            os.close(fd)

    def _ingest(self, path: Path, name: str, *, writer_gone: bool) -> int:
        """Move lines into the chain: read ``MAX_BATCH_BYTES`` at a time, commit at most
        ``RECORDS_PER_TRANSACTION`` per transaction, until only an unfinished line (or nothing) is left."""
        moved = 0
        offset = self._offsets[name] = self._log.spool_offset(name)
        with path.open("rb") as spool:
            while True:
                spool.seek(offset)
                data = spool.read(MAX_BATCH_BYTES)
                start = 0
                while True:
                    records, end = self._batch(spool, name, offset, data, writer_gone, start)
                    if end == start:
                        break
                    if moved:
                        time.sleep(PAUSE_BETWEEN_TRANSACTIONS_SECONDS)
                    self._log.append_audit_records(records, (name, offset + end))
                    self._offsets[name] = offset + end
                    moved += len(records)
                    start = end
                if start == 0:
                    return moved
                offset += start

    def _batch(
        self, spool: BinaryIO, name: str, offset: int, data: bytes, writer_gone: bool, start: int = 0
    ) -> tuple[list[SerializedRecord | dict[str, Any]], int]:
        """The records of the whole lines of ``data`` (read at ``offset``) from ``start``, and where
        they end in ``data``. Only a read's first line can be judged too long or torn: a later one
        may just go on past the read."""
        records: list[SerializedRecord | dict[str, Any]] = []
        position = start
        while position < len(data) and len(records) < RECORDS_PER_TRANSACTION:
            end = data.find(b"\n", position)
            if end < 0:
                if position == 0 and (len(data) > MAX_SPOOL_LINE_BYTES or writer_gone):
                    # Too long to be a record, or torn by a writer that died: quarantine it.
                    line_end = _end_of_line(spool, offset)
                    too_long = len(data) > MAX_SPOOL_LINE_BYTES
                    what = "is too long" if too_long else "was torn (its writer stopped mid-write)"
                    records.append(self._quarantined(spool, name, offset, line_end, what))
                    position = line_end - offset
                break  # an unfinished line waits for its end (in the next batch, if others came first)
            line = data[position:end]
            if line.strip():
                long = end + 1 - position > MAX_SPOOL_LINE_BYTES
                parsed = None if long else _parse(line, name)
                if parsed is not None:
                    records.append(parsed)
                else:
                    what = "is too long" if long else "cannot be read"
                    records.append(self._quarantined(spool, name, offset + position, offset + end + 1, what))
            position = end + 1
        return records, position

    def _quarantined(self, spool: BinaryIO, name: str, start: int, end: int, what: str) -> dict[str, Any]:
        """Copy bytes ``start``..``end`` of the spool to the quarantine; the record that stands for them."""
        self._quarantine.mkdir(mode=0o700, exist_ok=True)
        kept = f"{QUARANTINE_DIRECTORY}/{name}.{start}"
        # The same name on a retry (the offset moves only with the record): written over, never twice.
        with (self._directory / kept).open("wb") as out:
            os.fchmod(out.fileno(), 0o600)
            spool.seek(start)
            left = end - start
            while left > 0:
                chunk = spool.read(min(left, _COPY_CHUNK))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
        log.error("a line of audit spool %s %s; it is kept in %s", name, what, kept)
        return _unreadable(name, start, end - start, what, kept)


def _event_time_at(path: Path, offset: int) -> datetime | None:
    """The eventTime of the record whose line starts at ``offset``; None if it cannot be read
    (an unfinished line, or one the ingester will quarantine)."""
    with path.open("rb") as spool:
        spool.seek(offset)
        head = spool.read(HEAD_PROBE_BYTES)
        if head.startswith(INDEXED_LINE_MARK + b"\t"):
            parts = head.split(b"\t", 3)
            text = parts[2].decode("utf-8", "replace") if len(parts) > 3 else ""
        else:  # a line of canonical JSON alone: read it whole (rare; at most one line)
            spool.seek(offset)
            line = spool.readline(MAX_SPOOL_LINE_BYTES)
            try:
                record = orjson.loads(line)
            except ValueError:
                return None
            text = record.get("eventTime", "") if isinstance(record, dict) else ""
    try:
        parsed = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _end_of_line(spool: BinaryIO, start: int) -> int:
    """The offset just after the line that starts at ``start`` (its line end), or the end of the file."""
    spool.seek(start)
    position = start
    while True:
        chunk = spool.read(_COPY_CHUNK)
        if not chunk:
            return position
        found = chunk.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(chunk)


def spool_line(record: Mapping[str, Any]) -> bytes:
    """The record's spool line (see the module docstring), within the record bound."""
    bounded, canonical = bound_record(record)
    fields = index_strings(bounded)
    if any("\t" in value or "\n" in value or "\r" in value for value in fields):
        return canonical + b"\n"
    return b"\t".join([INDEXED_LINE_MARK, *(value.encode("utf-8") for value in fields), canonical]) + b"\n"


INDEXED_LINE_MARK = b"H"


def _parse(line: bytes, spool_name: str) -> SerializedRecord | None:
    """Keep the canonical bytes as written (they are not made twice); take the index
    fields from the line's head when it has one. None for a line that cannot be read."""
    if line.startswith(INDEXED_LINE_MARK + b"\t"):
        parts = line.split(b"\t", len(INDEX_FIELDS) + 1)
        try:
            fields = fields_from_strings([part.decode("utf-8") for part in parts[1:-1]])
            parts[-1].decode("utf-8")  # the trail stores it as text
        except ValueError:
            return None
        return SerializedRecord({}, parts[-1], fields)
    try:
        record = orjson.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    try:
        audit_fields(record)
    except ValueError:
        return None  # it could not be indexed: it would stop every later line of its spool
    return SerializedRecord(record, line)


def _unreadable(spool_name: str, offset: int, length: int, what: str, kept: str) -> dict[str, Any]:
    """Never drop a line silently: the chain records where it was, why, and where it is kept."""
    return {
        "eventVersion": "1.08",
        "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventSource": "kms.hsmstore",
        "eventName": UNREADABLE_SPOOL_LINE_EVENT,
        "userIdentity": {"type": "HSMStoreService", "arn": "", "accountId": ""},
        "resources": [],
        "errorCode": "KMSInternalException",
        "errorMessage": f"a line of audit spool {spool_name} {what}; it is kept in {kept}",
        "additionalEventData": {
            "spool": spool_name,
            "offset": offset,
            "originalLength": length,
            "quarantineFile": kept,
        },
    }
