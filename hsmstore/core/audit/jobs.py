"""Keeping the audit trail honest: seal its head on the token, purge it, verify it.

Why seals: the hash chain (core/audit/record.py) shows a changed, removed, inserted or
reordered row, but not rows cut off the end -- a shorter chain still verifies
-- and not a chain rewritten from the changed row on (SHA-256 has no key).
A seal is an HMAC made on the token (non-extractable key) over the head at a
moment::

    seal data = u64be(seq) || hash(seq)

A cut tail leaves a seal whose seq no longer exists; a rewritten chain leaves a
seal whose hash no longer matches its row, and a seal rewritten to match has a
MAC that does not verify on the token. ``hsmstore audit verify --no-token``
still catches the first kind and everything the chain shows.

Retention: CloudTrail's event history keeps 90 days; ``purge_expired`` deletes
older records from the front of the chain and the store moves the anchor, so
what remains still verifies.

Quarantined spool lines: a line the ingester could not read or that was too
long is kept in a file beside the spools and an ``UnreadableSpoolLine`` record
stands for it in the chain (store/spool.py). The chain still verifies, but
records are missing from it, so :func:`verify_trail` reports every such record
(its seq and the file that holds the line) and the report is not clean.

Stdlib and core only; the CLI and the server's periodic jobs call these.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from hsmstore import errors
from hsmstore.core.audit.chain import ChainProblem, StoredAuditEvent, first_chain_problem
from hsmstore.core.audit.record import UNREADABLE_SPOOL_LINE_EVENT
from hsmstore.core.ports.audit import AuditLog, AuditSeal, AuditSealer
from hsmstore.core.ports.clock import Clock


def seal_data(seq: int, chain_hash: bytes) -> bytes:
    """What a seal's MAC covers: u64be(seq) || hash (see the module docstring)."""
    return struct.pack(">Q", seq) + chain_hash


def seal_chain_head(log: AuditLog, vault: AuditSealer, clock: Clock) -> AuditSeal | None:
    """Seal the current head of the chain; None if it is sealed already (or the trail is empty).

    The head is the newest row, one indexed read: the job costs the same however many
    calls came since its last run (reading every row since the newest seal made each
    worker load them all in one burst, in the middle of its calls). Two nodes sealing
    the same head at once: one stores it, the other gets None.
    """
    seals = log.list_audit_seals()
    anchor_seq, _ = log.audit_anchor()
    start = max([anchor_seq, *(seal.seq for seal in seals)])
    head = log.newest_audit_event()
    if head is None or head.seq <= start:
        return None
    seal = AuditSeal(head.seq, head.hash, clock.now(), vault.audit_seal(seal_data(head.seq, head.hash)))
    try:
        log.add_audit_seal(seal)
    except errors.AlreadyExistsException:
        return None
    return seal


def purge_expired(log: AuditLog, clock: Clock, retention_days: int) -> int:
    """Delete records older than ``retention_days`` (from the front of the chain); how many went."""
    if retention_days < 1:
        raise ValueError("retention_days must be at least 1")
    return log.purge_audit_before(clock.now() - timedelta(days=retention_days))


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_trail`: how much was checked and the first problem, if any."""

    records: int  # rows that verified, from the anchor (those before the problem, if the chain broke)
    seals: int
    seals_checked_on_token: bool
    problem: ChainProblem | None = None
    # (seq, quarantine file) of each UnreadableSpoolLine record: lines that never reached the chain
    quarantined: tuple[tuple[int, str], ...] = ()

    @property
    def ok(self) -> bool:
        """The chain and its seals verify (quarantined lines aside: see ``clean``)."""
        return self.problem is None

    @property
    def clean(self) -> bool:
        """Verified, and no spool line was quarantined: every recorded call is in the chain."""
        return self.ok and not self.quarantined

    def summary(self) -> str:
        if self.problem is not None:
            return f"audit trail NOT verified: seq {self.problem.seq}: {self.problem.what}"
        verified = f"audit trail verified: {self.records} records, {self.seals} seals"
        if not self.quarantined:
            return verified
        shown = ", ".join(f"seq {seq} ({kept})" for seq, kept in self.quarantined[:QUARANTINE_SHOWN])
        more = (
            f" and {len(self.quarantined) - QUARANTINE_SHOWN} more"
            if len(self.quarantined) > QUARANTINE_SHOWN
            else ""
        )
        return (
            f"{verified}; but {len(self.quarantined)} audit spool lines were quarantined (unreadable or "
            f"too long), their records are missing: {shown}{more}; the files are under the audit spool "
            "directory (<data dir>/audit-spool)"
        )


QUARANTINE_SHOWN = 10


class _Walk:
    """Passes events through to first_chain_problem, counting them and noting sealed hashes."""

    def __init__(self, events: Iterator[StoredAuditEvent], sealed: set[int]) -> None:
        self._events = events
        self._sealed = sealed
        self.count = 0
        self.last_seq: int | None = None
        self.hashes: dict[int, bytes] = {}
        self.quarantined: list[tuple[int, str]] = []

    def __iter__(self) -> Iterator[StoredAuditEvent]:
        for event in self._events:
            self.count += 1
            self.last_seq = event.seq
            if event.seq in self._sealed:
                self.hashes[event.seq] = event.hash
            if event.event_name == UNREADABLE_SPOOL_LINE_EVENT:
                self.quarantined.append((event.seq, _quarantine_file(event)))
            yield event


def _quarantine_file(event: StoredAuditEvent) -> str:
    try:
        kept = event.record.get("additionalEventData", {}).get("quarantineFile")
    except (ValueError, AttributeError):
        kept = None
    return str(kept) if kept else "no file: recorded before quarantine files"


def verify_trail(log: AuditLog, vault: AuditSealer | None) -> VerifyReport:
    """Check that no record was changed, removed or reordered (docs/api.md, "Audit events").

    1. The chain, from the anchor, with :func:`first_chain_problem`.
    2. Every seal: its seq must exist with the same hash (a seal beyond the
       last row means rows were cut off the tail; one below the anchor means
       rows before it went without a purge), and with a ``vault`` its MAC must
       verify on the token.

    The first problem wins: a broken chain is reported at its seq, before any seal.
    """
    anchor_seq, anchor_hash = log.audit_anchor()
    seals = list(log.list_audit_seals())
    walk = _Walk(log.iter_audit_events(anchor_seq), {seal.seq for seal in seals})
    problem = first_chain_problem(iter(walk), anchor_seq, anchor_hash)
    verified = walk.count - (problem is not None)  # the row that showed the problem did not verify
    if problem is None:
        last_seq = walk.last_seq if walk.last_seq is not None else anchor_seq
        for seal in seals:
            problem = _seal_problem(seal, anchor_seq, anchor_hash, last_seq, walk.hashes, vault)
            if problem is not None:
                break
    return VerifyReport(verified, len(seals), vault is not None, problem, tuple(walk.quarantined))


def _seal_problem(
    seal: AuditSeal,
    anchor_seq: int,
    anchor_hash: bytes,
    last_seq: int,
    hashes: dict[int, bytes],
    vault: AuditSealer | None,
) -> ChainProblem | None:
    if seal.seq > last_seq:
        return ChainProblem(
            last_seq + 1,
            f"records {last_seq + 1} to {seal.seq} are missing: the trail ends at {last_seq} "
            f"but was sealed at {seal.seq}",
        )
    if seal.seq < anchor_seq:
        return ChainProblem(seal.seq, f"record {seal.seq} was sealed but is before the anchor {anchor_seq}")
    expected = anchor_hash if seal.seq == anchor_seq else hashes.get(seal.seq)
    if expected != seal.hash:
        return ChainProblem(seal.seq, f"record {seal.seq} does not match its seal (the chain was rewritten)")
    if vault is not None and not vault.verify_audit_seal(seal_data(seal.seq, seal.hash), seal.mac):
        return ChainProblem(seal.seq, f"the seal of record {seal.seq} does not verify on the token")
    return None
