"""The audit record: one CloudTrail-shaped record per call, bounded and serialised.

AWS KMS records every call, cryptographic ones included, in CloudTrail; the
contract ("Audit events") fixes the shape: ``eventVersion``, ``eventTime``,
``eventSource`` = ``kms.hsmstore``, ``eventName``, ``userIdentity``,
``sourceIPAddress``, ``requestParameters`` (with ``keyId`` and
``encryptionContext``), ``resources``, ``requestID``, ``eventID``,
``readOnly``, ``errorCode``, ``errorMessage`` -- never plaintext or key material.

How a call is captured is ``capture.py``; how records are chained, ``chain.py``.

Record size bound (issue 14: one large request must not blind the trail).
Every record is bounded where it is made: ``to_record`` bounds each value
(:func:`bound_values`), :func:`serialized` the whole (:func:`bound_record`):

* each string in the record (values and mapping keys, at any depth) is at most
  :data:`MAX_STRING_CHARS` characters; a longer one keeps its first
  :data:`MAX_STRING_CHARS` characters followed by the marker
  ``...[truncated, originalLength=<N>]`` (``N`` in characters); a list or
  mapping keeps its first :data:`MAX_ITEMS` entries, then one marker entry
  (after CloudTrail, which shortens oversized fields and says so);
* the canonical JSON of the whole record is at most :data:`MAX_RECORD_BYTES`
  bytes: a record still over it gets ``requestParameters`` =
  ``{"omitted": true, "originalSize": <bytes>}`` (CloudTrail's form for an
  omitted element), and then, if still over, every string cut to
  :data:`SHORT_STRING_CHARS`. A record that cannot be bounded is refused
  (``ValueError``), and with it the call.

So a spool line (store/spool.py) is never larger than the ingester's batch.

Cross-tenant use (CloudTrail: "the event is recorded in the caller's account
and in the key owner's account"): a record carries ``recipientAccountId`` (the
tenant whose trail holds it; the caller's). :func:`recipient_records` makes,
for each other tenant whose key the call used, a copy with that tenant as
``recipientAccountId``, its own ``eventID`` and the ``sharedEventID`` both
copies carry. The copies are the same event: the caller's copy shows nothing
of the owner's beyond the key ARN the caller named.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from hsmstore.core.audit.fields import AuditFields
from hsmstore.core.model import Caller

EVENT_SOURCE = "kms.hsmstore"
MAX_STRING_CHARS = 32768  # the longest valid input (a key policy: 32768 bytes) is kept whole
SHORT_STRING_CHARS = 256  # the last resort for a record still over MAX_RECORD_BYTES
MAX_ITEMS = 1024  # entries kept of one list or mapping
MAX_RECORD_BYTES = 128 * 1024  # canonical JSON of one record (the spool ingests 4 MiB batches)
TRUNCATION_MARKER = "...[truncated, originalLength={}]"
# What stands in the chain for a spool line the ingester quarantined (store/spool.py).
UNREADABLE_SPOOL_LINE_EVENT = "UnreadableSpoolLine"
EVENT_VERSION = "1.08"

# Read-only operations, after CloudTrail's readOnly flag for KMS.
READ_ONLY_EVENTS = frozenset(
    {
        "DescribeKey", "ListKeys", "ListAliases", "ListResourceTags", "ListKeyRotations",
        "GetKeyRotationStatus", "GetKeyLastUsage", "LookupEvents",
    }
)  # fmt: skip
# Cryptographic operations: what GetKeyLastUsage counts as a use of a key.


class _UrandomPool:
    """``os.urandom`` drawn 4 KiB at a time and handed out in slices.

    Why: CPython's ``os.urandom`` releases the GIL around each ``getrandom(2)``
    (``Py_BEGIN_ALLOW_THREADS`` in ``Python/bootstrap_hash.c``), and every call
    on the request path makes two IDs. In a gRPC server a GIL release with
    another thread waiting is a hand-off (futex wake, context switch, a wait to
    get it back), which costs more than the syscall. The bytes are the same
    kernel CSPRNG output, used once each. A forked child drops what it
    inherited, so two processes never hand out the same bytes.
    """

    _lock: threading.Lock
    _buffer: bytes
    _offset: int

    def __init__(self, draw_bytes: int = 4096) -> None:
        self._draw_bytes = draw_bytes
        self.forget()

    def take(self, number_of_bytes: int) -> bytes:
        with self._lock:
            end = self._offset + number_of_bytes
            if end > len(self._buffer):
                self._buffer, self._offset, end = os.urandom(self._draw_bytes), 0, number_of_bytes
            taken = self._buffer[self._offset : end]
            self._offset = end
        return taken

    def forget(self) -> None:
        """Start empty, with a fresh lock (in a forked child the bytes are the parent's
        too, and a parent thread may have held the lock at the fork)."""
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0


_urandom_pool = _UrandomPool()
os.register_at_fork(after_in_child=_urandom_pool.forget)


def random_uuid() -> str:
    """A random (version 4) UUID in its text form, as ``str(uuid.uuid4())`` makes it.

    Two per call are made on the request path, so 16 random bytes are formatted
    directly: less than half the cost of building a ``uuid.UUID`` object each.
    """
    return _uuid_text(_urandom_pool.take(16).hex(), version=4)


def time_ordered_uuid() -> str:
    """A version 7 UUID (RFC 9562, section 5.7) in its text form: the event IDs.

    First "unix_ts_ms: 48-bit big-endian unsigned number of the Unix Epoch
    timestamp in milliseconds", then the version (0b0111), 12 random bits
    (rand_a), the variant (0b10) and 62 random bits (rand_b). CloudTrail's
    eventID is an opaque GUID, so callers see no difference; the audit
    trail's unique index on it does: random (version 4) IDs land on random
    pages of that B-tree, which costs more per ingested record than
    appending at its right edge, and more as the table grows
    (docs/performance.md). The time it reveals is the record's own
    ``eventTime``.
    """
    return _uuid_text(f"{time.time_ns() // 1_000_000:012x}{_urandom_pool.take(10).hex()}", version=7)


def _uuid_text(digits: str, version: int) -> str:
    """32 hex digits as a UUID's 8-4-4-4-12 text, with ``version`` in digit 12 and the
    RFC variant (0b10) in the top bits of digit 16; the other 122 bits are ``digits``'."""
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-{version:x}{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:32]}"


@dataclass
class CallAudit:
    """What one call did, filled in while it runs."""

    event_name: str
    caller: Caller
    request_parameters: dict[str, Any]
    event_time: datetime
    request_id: str = field(default_factory=random_uuid)
    event_id: str = field(default_factory=time_ordered_uuid)  # indexed: see time_ordered_uuid
    started: float = field(default_factory=time.monotonic)
    key_ids: list[str] = field(default_factory=list)  # ARNs, in the order resolved
    key_versions: dict[str, int] = field(default_factory=dict)  # key ARN -> version used
    alias_name: str | None = None
    grant_id: str | None = None  # the grant that allowed the call, if one decided
    source_address: str = ""
    error_code: str | None = None
    error_message: str | None = None
    recorded: bool = False  # True once the record was written with the call's own DB change

    def to_record(self, latency_ms: float | None = None) -> dict[str, Any]:
        """The CloudTrail-shaped record. ``requestParameters`` never holds bytes fields."""
        latency = latency_ms if latency_ms is not None else (time.monotonic() - self.started) * 1000
        record: dict[str, Any] = {
            "eventVersion": EVENT_VERSION,
            "eventTime": self.event_time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "eventSource": EVENT_SOURCE,
            "eventName": self.event_name,
            "userIdentity": {
                "type": "HSMStorePrincipal",
                "arn": self.caller.principal,
                "accountId": self.caller.tenant,
            },
            "sourceIPAddress": self.source_address,
            "recipientAccountId": self.caller.tenant,
            "requestParameters": self.request_parameters,
            "resources": [
                {"ARN": arn, "accountId": _tenant_of(arn), "type": "AWS::KMS::Key"} for arn in self.key_ids
            ],
            "requestID": self.request_id,
            "eventID": self.event_id,
            "readOnly": self.event_name in READ_ONLY_EVENTS,
            "eventCategory": "Management",
            "additionalEventData": {
                "keyVersions": dict(self.key_versions),
                "latencyMs": round(latency, 3),
            },
        }
        if self.alias_name:
            record["additionalEventData"]["aliasName"] = self.alias_name
        if self.grant_id:
            record["additionalEventData"]["grantId"] = self.grant_id
        if self.error_code:
            record["errorCode"] = self.error_code
            record["errorMessage"] = self.error_message or ""
        bounded = bound_values(record)
        if bounded is not record and len(canonical_record_bytes(bounded)) > MAX_RECORD_BYTES:
            # Still too large once its values are cut: the parameters go, their original size stays.
            original = len(canonical_record_bytes(self.request_parameters))
            bounded["requestParameters"] = {"omitted": True, "originalSize": original}
        return bounded

    @property
    def tenant(self) -> str:
        return self.caller.tenant


def bound_values(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every string and container within the per-value bounds (module docstring).

    The common record has nothing to cut and is returned as it is: when its JSON is at most
    :data:`_SURELY_WITHIN_BYTES` long, no string in it can be longer than the limit (a character
    is at least a byte) nor any container hold more than :data:`MAX_ITEMS` entries (at least
    2 bytes each), so one serialisation, far cheaper than walking the record, spares the walk.
    """
    if len(orjson.dumps(record)) <= _SURELY_WITHIN_BYTES or _within(record, MAX_STRING_CHARS):
        return record
    bounded: dict[str, Any] = _bounded(record, MAX_STRING_CHARS)
    return bounded


_SURELY_WITHIN_BYTES = min(MAX_STRING_CHARS, 2 * MAX_ITEMS)


def bound_record(record: Mapping[str, Any]) -> tuple[Mapping[str, Any], bytes]:
    """The record within every bound of the module docstring, and its canonical bytes.

    Raises ``ValueError`` if even the last resort leaves it over :data:`MAX_RECORD_BYTES`.
    """
    canonical = canonical_record_bytes(record)
    if len(canonical) <= MAX_RECORD_BYTES:
        return record, canonical  # to_record bounded its values already: the common case
    bounded = bound_values(dict(record))
    canonical = canonical_record_bytes(bounded)
    parameters = bounded.get("requestParameters")
    if isinstance(parameters, Mapping) and not parameters.get("omitted"):
        size = len(canonical_record_bytes(bounded["requestParameters"]))
        bounded = {**bounded, "requestParameters": {"omitted": True, "originalSize": size}}
        canonical = canonical_record_bytes(bounded)
    if len(canonical) > MAX_RECORD_BYTES:
        bounded = _bounded(bounded, SHORT_STRING_CHARS)
        canonical = canonical_record_bytes(bounded)
    if len(canonical) > MAX_RECORD_BYTES:
        raise ValueError(f"an audit record of {len(canonical)} bytes cannot be bounded to {MAX_RECORD_BYTES}")
    return bounded, canonical


def truncated(text: str, limit: int = MAX_STRING_CHARS) -> str:
    """``text`` cut to ``limit`` characters with the marker and its original length."""
    if len(text) <= limit:
        return text
    earlier = _EARLIER_MARKER.search(text)  # cut before: the length it names is the original
    return text[:limit] + TRUNCATION_MARKER.format(earlier[1] if earlier else len(text))


_EARLIER_MARKER = re.compile(re.escape(TRUNCATION_MARKER).replace(r"\{\}", r"(\d+)") + "$")


def _within(value: Any, limit: int) -> bool:
    if isinstance(value, str):
        return len(value) <= limit
    if isinstance(value, Mapping):
        return len(value) <= MAX_ITEMS and all(
            _within(key, limit) and _within(item, limit) for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return len(value) <= MAX_ITEMS and all(_within(item, limit) for item in value)
    return True


def _bounded(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return truncated(value, limit)
    if isinstance(value, Mapping):
        items = list(value.items())
        bounded = {truncated(str(key), limit): _bounded(item, limit) for key, item in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            bounded[TRUNCATION_MARKER.format(len(items))] = ""
        return bounded
    if isinstance(value, list | tuple):
        kept = [_bounded(item, limit) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            kept.append(TRUNCATION_MARKER.format(len(value)))
        return kept
    return value


def recipient_records(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The record as its recipients' trails hold it: the caller's, then one per key owner.

    CloudTrail: "the event is recorded in the caller's account and in the key
    owner's account"; each copy has its own ``eventID``, both the same
    ``sharedEventID``, and ``recipientAccountId`` names whose trail holds it.
    A record without ``recipientAccountId`` (made before it existed) or that
    used only its own tenant's keys is returned alone, unchanged.
    """
    recipient = record.get("recipientAccountId")
    owners: list[str] = []
    for resource in record.get("resources") or []:
        owner = resource.get("accountId") if isinstance(resource, Mapping) else None
        if isinstance(owner, str) and owner and owner != recipient and owner not in owners:
            owners.append(owner)
    if recipient is None or not owners:
        return [record]
    shared = random_uuid()
    copies: list[Mapping[str, Any]] = [{**record, "sharedEventID": shared}]
    copies.extend(
        {**record, "sharedEventID": shared, "eventID": time_ordered_uuid(), "recipientAccountId": owner}
        for owner in owners
    )
    return copies


def _tenant_of(arn: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 else ""


def canonical_record_bytes(record: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8 (non-ASCII unescaped): for these records the same
    bytes as ``json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.

    orjson makes them an order of magnitude faster than json (docs/performance.md);
    once written the bytes are what the hash covers, so the serializer only has
    to be deterministic, and tests/unit/test_audit_record.py pins that it matches json's.
    """
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class SerializedRecord:
    """A record with its canonical bytes already made (a spool line), so appending
    does not serialise it a second time; with ``fields``, its index columns too, so
    appending does not parse it either (store/spool.py's indexed lines)."""

    record: Mapping[str, Any]
    canonical: bytes
    fields: AuditFields | None = None


def serialized(item: Mapping[str, Any] | SerializedRecord) -> SerializedRecord:
    """A record with its canonical bytes, within :data:`MAX_RECORD_BYTES` (``bound_record``)."""
    if isinstance(item, SerializedRecord):
        return item
    return SerializedRecord(*bound_record(item))
