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

The eight index fields (core/audit_fields.py ``index_strings``, "" for none)
come first so that the ingester fills the DB's index columns without parsing
the JSON (parsing was a quarter of a record's ingestion cost). The chain hash
covers the canonical JSON only. A record whose index fields would hold a tab or
a line break is written as its canonical JSON alone (a line starting with
``{``), and the ingester parses that one; it reads both forms.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from hsmstore.core.audit import SerializedRecord, canonical_record_bytes
from hsmstore.core.audit_fields import INDEX_FIELDS, fields_from_strings, index_strings
from hsmstore.core.ports import AuditLog

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".jsonl"
MAX_BATCH_BYTES = 4 * 1024 * 1024
RECORDS_PER_TRANSACTION = 4096


class SpoolAuditSink:
    """The AuditSink of a server process: appends only (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SPOOL_SUFFIX}"
        self.path = directory / self.name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours for life: "this spool is live"
        self._write_lock = threading.Lock()

    def record(self, record: Mapping[str, Any]) -> None:
        """Append the record; raise OSError if the kernel did not take all of it."""
        line = spool_line(record)
        with self._write_lock:
            written = os.write(self._fd, line)
        if written != len(line):
            raise OSError("short write to the audit spool")

    def close(self) -> None:
        """Release the spool: from now on the ingester may finish and remove it."""
        os.close(self._fd)


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
        self._log = audit_log

    def ingest_once(self) -> int:
        """Ingest every spool once; returns how many records moved."""
        moved = 0
        for path in sorted(self._directory.glob(f"*{SPOOL_SUFFIX}")):
            try:
                moved += self._ingest_spool(path)
            except FileNotFoundError:
                continue  # removed by another ingester meanwhile
        return moved

    def run(self, stop: threading.Event, interval_seconds: float, parent_pid: int | None = None) -> None:
        """Ingest every ``interval_seconds`` until ``stop`` is set or the parent process is gone,
        then once more, so that a stopping server leaves its last records in the chain."""
        while not stop.wait(interval_seconds):
            if parent_pid is not None and os.getppid() != parent_pid:
                break
            try:
                self.ingest_once()
            except Exception:
                log.exception("audit ingestion failed; the spools keep the records and it is retried")
        self.ingest_once()

    def _ingest_spool(self, path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            moved = self._ingest(path, path.name)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return moved  # its writer is alive
            moved += self._ingest(path, path.name)  # anything written just before it stopped
            if self._log.spool_offset(path.name) >= os.fstat(fd).st_size:
                path.unlink(missing_ok=True)
            return moved
        finally:
            os.close(fd)

    def _ingest(self, path: Path, name: str) -> int:
        """Move complete lines into the chain, up to ``RECORDS_PER_TRANSACTION`` at a time."""
        moved = 0
        offset = self._log.spool_offset(name)
        while True:
            with path.open("rb") as spool:
                spool.seek(offset)
                data = spool.read(MAX_BATCH_BYTES)
            lines = data.splitlines(keepends=True)
            if lines and not lines[-1].endswith(b"\n"):
                lines.pop()  # a torn last line waits for its end
            if not lines:
                return moved
            for start in range(0, len(lines), RECORDS_PER_TRANSACTION):
                chunk = lines[start : start + RECORDS_PER_TRANSACTION]
                offset += sum(len(line) for line in chunk)
                records = [_parse(line.rstrip(b"\n"), name) for line in chunk if line.strip()]
                self._log.append_audit_records(records, (name, offset))
                moved += len(records)


def spool_line(record: Mapping[str, Any]) -> bytes:
    """The record's spool line (see the module docstring)."""
    canonical = canonical_record_bytes(record)
    fields = index_strings(record)
    if any("\t" in value or "\n" in value or "\r" in value for value in fields):
        return canonical + b"\n"
    return b"\t".join([INDEXED_LINE_MARK, *(value.encode("utf-8") for value in fields), canonical]) + b"\n"


INDEXED_LINE_MARK = b"H"


def _parse(line: bytes, spool_name: str) -> SerializedRecord | dict[str, Any]:
    """Keep the canonical bytes as written (they are not made twice); take the index
    fields from the line's head when it has one."""
    if line.startswith(INDEXED_LINE_MARK + b"\t"):
        parts = line.split(b"\t", len(INDEX_FIELDS) + 1)
        try:
            fields = fields_from_strings([part.decode("utf-8") for part in parts[1:-1]])
            return SerializedRecord({}, parts[-1], fields)
        except (ValueError, IndexError):
            log.error("an unreadable line in audit spool %s is recorded as such", spool_name)
            return _unreadable(spool_name)
    try:
        record = orjson.loads(line)
        if isinstance(record, dict):
            return SerializedRecord(record, line)
    except ValueError:
        pass
    # Never drop a line silently: the chain records that one was unreadable.
    log.error("an unreadable line in audit spool %s is recorded as such", spool_name)
    return _unreadable(spool_name)


def _unreadable(spool_name: str) -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventSource": "kms.hsmstore",
        "eventName": "UnreadableSpoolLine",
        "userIdentity": {"type": "HSMStoreService", "arn": "", "accountId": ""},
        "resources": [],
        "errorCode": "KMSInternalException",
        "errorMessage": f"an unreadable line in audit spool {spool_name}",
    }
