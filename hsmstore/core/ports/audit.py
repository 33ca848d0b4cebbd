"""The audit ports: where a call's record goes (sink), the trail (log), and its sealer.

The sealer is its own port: sealing the chain head is the audit trail's need,
not a key store's, even though today the same token does both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from hsmstore.core.audit.chain import StoredAuditEvent
from hsmstore.core.audit.record import SerializedRecord


@dataclass(frozen=True)
class AuditQuery:
    """LookupEvents filters (CloudTrail's lookup attributes), always within one tenant."""

    tenant: str
    limit: int
    before: tuple[datetime, int] | None = None  # (event_time, seq) of the last event already seen
    event_name: str | None = None
    principal: str | None = None
    key_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class AuditSeal:
    """An HMAC, made on the token, over the chain head (seq, hash) at a moment."""

    seq: int
    hash: bytes
    sealed_at: datetime
    mac: bytes


class AuditSink(Protocol):
    """Where the transport puts a call's record before it answers (core/audit/record.py)."""

    def record(self, record: Mapping[str, Any]) -> None:
        """Return only once the record is durable or queued so that it survives a crash
        of this process; raise if it cannot be."""


class AuditLog(Protocol):
    """The audit trail in the metadata DB: one hash chain for every process (core/audit/record.py).

    Appending takes the chain head under a lock (SQLite: BEGIN IMMEDIATE;
    PostgreSQL: SELECT ... FOR UPDATE of the head row), so several processes and
    nodes appending at once still make one verifiable chain.
    """

    def append_audit_records(
        self,
        records: Sequence[Mapping[str, Any] | SerializedRecord],
        spool_position: tuple[str, int] | None = None,
    ) -> list[int]:
        """Append records in order, in one transaction; returns their seq numbers.

        ``spool_position`` (spool name, byte offset after these records) is
        stored in the same transaction, so a spool line is ingested exactly once.
        """
        ...

    def spool_offset(self, spool_name: str) -> int:
        """How far a spool has been ingested (0 for a new one)."""
        ...

    def lookup_audit_events(self, query: AuditQuery) -> Sequence[StoredAuditEvent]:
        """Newest first by event time, then seq (CloudTrail's order); at most ``query.limit``,
        strictly after ``query.before`` in that order."""
        ...

    def iter_audit_events(self, after_seq: int = 0) -> Iterator[StoredAuditEvent]:
        """Every event with seq > after_seq in seq order (verify, export); reads in batches."""
        ...

    def newest_audit_event(self) -> StoredAuditEvent | None:
        """The event with the highest seq (the chain's head); None if the trail is empty."""
        ...

    def last_key_usage(self, key_id: str) -> Sequence[tuple[int | None, StoredAuditEvent]]:
        """The newest successful cryptographic event of the key overall (version None) and per version."""
        ...

    def audit_anchor(self) -> tuple[int, bytes]:
        """(seq, hash) the chain continues from: (0, genesis) until retention purged a prefix."""
        ...

    def add_audit_seal(self, seal: AuditSeal) -> None: ...

    def list_audit_seals(self) -> Sequence[AuditSeal]: ...

    def purge_audit_before(self, cutoff: datetime) -> int:
        """Delete events older than ``cutoff`` and move the anchor to the last one deleted.

        The remaining chain still verifies from the anchor. Returns how many went.
        """
        ...


class AuditSealer(Protocol):
    """Seals the audit chain head with a key no one can read (an HMAC key on the token)."""

    def audit_seal(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` with the token's audit seal key (made on first use,
        non-extractable, SIGN/VERIFY only), for sealing the audit chain head."""
        ...

    def verify_audit_seal(self, data: bytes, mac: bytes) -> bool:
        """Check an audit seal on the token (C_Verify with the same key)."""
        ...
