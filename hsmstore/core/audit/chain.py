"""The audit trail's hash chain: what ``hsmstore audit verify`` checks.

Hash chain::

    record_bytes = canonical JSON of the record (sorted keys, no spaces, UTF-8)
    hash(seq)    = SHA-256( hash(seq-1) || u64be(seq) || record_bytes )
    hash(0)      = 32 zero bytes (the genesis)

so changing, removing, inserting or reordering a row breaks every later hash.
``record_bytes`` is :func:`hsmstore.core.audit.record.canonical_record_bytes`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

GENESIS_HASH = bytes(32)


def chain_hash(previous_hash: bytes, seq: int, record_bytes: bytes) -> bytes:
    """hash(seq) = SHA-256(hash(seq-1) || u64be(seq) || record_bytes); see the module docstring."""
    return hashlib.sha256(previous_hash + struct.pack(">Q", seq) + record_bytes).digest()


@dataclass(frozen=True)
class StoredAuditEvent:
    """One row of the trail as the store returns it."""

    seq: int
    event_id: str
    event_time: datetime
    tenant: str
    event_name: str
    key_id: str | None  # the first resource's key id, for lookups by key
    record_json: str  # canonical JSON: exactly the bytes the hash covers
    previous_hash: bytes
    hash: bytes

    @property
    def record(self) -> dict[str, Any]:
        return orjson.loads(self.record_json)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    what: str


def first_chain_problem(
    events: Iterator[StoredAuditEvent] | list[StoredAuditEvent],
    anchor_seq: int = 0,
    anchor_hash: bytes = GENESIS_HASH,
) -> ChainProblem | None:
    """Walk the rows in seq order from the anchor; the first row that breaks the chain, or None.

    A removed row shows as a gap in seq, a changed row as a hash mismatch, an
    inserted or reordered row as a link (previous hash) that does not match.
    """
    expected_seq, expected_previous = anchor_seq + 1, anchor_hash
    for event in events:
        if event.seq != expected_seq:
            return ChainProblem(expected_seq, f"record {expected_seq} is missing (next is {event.seq})")
        if event.previous_hash != expected_previous:
            return ChainProblem(event.seq, f"record {event.seq} does not link to record {event.seq - 1}")
        computed = chain_hash(expected_previous, event.seq, event.record_json.encode("utf-8"))
        if computed != event.hash:
            return ChainProblem(event.seq, f"record {event.seq} was changed (its hash does not match)")
        expected_seq, expected_previous = event.seq + 1, event.hash
    return None
