"""LookupEvents: the audit trail as a tenant sees it, after CloudTrail's LookupEvents.

CloudTrail: "You can look up events [...] by one attribute at a time"; results
newest first; ``MaxResults`` 1-50 (default 50); an opaque ``NextToken``. A
tenant sees only its own events (docs/api.md: "A tenant sees only its own
keys, aliases, grants and audit events"); a key owner's trail also holds
its copy of another tenant's use of its keys (core/audit/record.py, recipient_records).

A page is bounded by bytes as well as by count (issue 14): its events cost at
most :data:`MAX_PAGE_BYTES` (always at least one event), counting each as twice
its record JSON plus :data:`EVENT_OVERHEAD_BYTES` -- the answer repeats the
record's user and resource ARNs beside it. With records of at most 128 KiB
(core/audit/record.py) an answer stays below the server's 256 KiB send limit (and far
below gRPC's 4 MiB default) whatever the records hold; the rest follows with NextToken.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from hsmstore.core.audit.chain import StoredAuditEvent
from hsmstore.core.identifiers import IdentifierKind, parse_key_identifier
from hsmstore.core.model import Caller
from hsmstore.core.paging import check_limit, decode_marker, encode_marker
from hsmstore.core.ports.audit import AuditLog, AuditQuery
from hsmstore.core.validation import check_text
from hsmstore.errors import InvalidMarkerException, NotFoundException, ValidationException

MAX_RESULTS = 50
MAX_PAGE_BYTES = 192 * 1024
EVENT_OVERHEAD_BYTES = 256  # an event's own fields beside its record: ids, time, names
LOOKUP_ATTRIBUTES = ("EventName", "Username", "ResourceName")
MAX_ATTRIBUTE_VALUE_CHARS = 2000
_SEQ = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class EventsPage:
    events: list[StoredAuditEvent]
    next_token: str


Authorize = Callable[[Caller, str], object]


class AuditQueries:
    """``authorize(caller, "cloudtrail:LookupEvents")`` raises unless the caller's identity
    policies allow reading the trail (CloudTrail: LookupEvents needs its own permission;
    a tenant's role/admin has it by default)."""

    def __init__(self, log: AuditLog, region: str, authorize: Authorize) -> None:
        self._log = log
        self._region = region
        self._authorize = authorize

    def lookup_events(
        self,
        caller: Caller,
        attributes: Sequence[tuple[str, str]],
        start_time: datetime | None,
        end_time: datetime | None,
        max_results: int | None,
        next_token: str,
    ) -> EventsPage:
        limit = check_limit(max_results, maximum=MAX_RESULTS, default=MAX_RESULTS, field="MaxResults")
        self._authorize(caller, "cloudtrail:LookupEvents")
        if len(attributes) > 1:
            raise ValidationException("LookupAttributes takes at most one attribute")
        if start_time and end_time and start_time > end_time:
            raise ValidationException("StartTime must not be after EndTime")
        before = _decode_token(next_token) if next_token else None
        filters: dict[str, str] = {}
        for key, value in attributes:
            if key not in LOOKUP_ATTRIBUTES:
                raise ValidationException(f"AttributeKey must be one of: {', '.join(LOOKUP_ATTRIBUTES)}")
            # CloudTrail LookupAttribute: AttributeValue is 1 to 2,000 characters.
            filters[key] = check_text(
                value, "AttributeValue", min_length=1, max_length=MAX_ATTRIBUTE_VALUE_CHARS
            )
        key_id = None
        if "ResourceName" in filters:
            key_id = self._key_id_of_resource(caller, filters["ResourceName"])
            if key_id is None:
                return EventsPage([], "")  # it names no key of this tenant: nothing can match
        query = AuditQuery(
            tenant=caller.tenant,
            limit=limit + 1,
            before=before,
            event_name=filters.get("EventName"),
            principal=filters.get("Username"),
            key_id=key_id,
            start_time=start_time,
            end_time=end_time,
        )
        found = list(self._log.lookup_audit_events(query))
        events = _within_page_bytes(found[:limit])
        more = len(found) > len(events)
        last = events[-1] if events else None
        token = encode_marker("e", f"{last.event_time.isoformat()}|{last.seq}") if more and last else ""
        return EventsPage(events, token)

    def _key_id_of_resource(self, caller: Caller, resource_name: str) -> str | None:
        """ResourceName: a key id or key ARN; None when it can name no key of the caller's tenant
        (not a key id at all, like an unknown name in CloudTrail, or another tenant's ARN)."""
        try:
            reference = parse_key_identifier(resource_name, self._region, "ResourceName")
        except NotFoundException:
            return None
        if reference.kind is not IdentifierKind.KEY_ID:
            raise ValidationException("ResourceName must be a key id or key ARN")
        if reference.tenant not in (None, caller.tenant):
            return None
        return reference.value


def _within_page_bytes(events: list[StoredAuditEvent]) -> list[StoredAuditEvent]:
    """The first events that fit in :data:`MAX_PAGE_BYTES` (at least one; module docstring)."""
    total = 0
    for index, event in enumerate(events):
        total += 2 * len(event.record_json.encode("utf-8")) + EVENT_OVERHEAD_BYTES
        if total > MAX_PAGE_BYTES and index > 0:
            return events[:index]
    return events


def _decode_token(token: str) -> tuple[datetime, int]:
    """NextToken: the (event time, seq) of the last event of the page, opaque to callers."""
    event_time, _, seq = decode_marker("e", token).partition("|")
    try:
        parsed = datetime.fromisoformat(event_time)
    except ValueError:
        raise InvalidMarkerException("The NextToken is not valid") from None
    if _SEQ.fullmatch(seq) is None or parsed.tzinfo is None:  # ASCII digits that fit a BIGINT
        raise InvalidMarkerException("The NextToken is not valid")
    return parsed, int(seq)
