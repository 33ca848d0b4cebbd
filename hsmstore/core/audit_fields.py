"""The columns an audit record is indexed by, read from the record itself.

The record (core/audit.py) is the truth the hash covers; the stores copy a few
of its fields into columns so LookupEvents can filter without parsing JSON.
CloudTrail's lookup attributes map to them: ``EventName`` -> ``eventName``,
``Username`` -> ``userIdentity.arn``, ``ResourceName`` -> the first resource's
key id. Both stores (SQL and the in-memory fake) use this one function, so they
index a record identically.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hsmstore.core.audit import CRYPTOGRAPHIC_EVENTS


@dataclass(frozen=True)
class AuditFields:
    event_id: str  # the record's eventID; a fresh UUID for a record without one (see below)
    event_time: datetime
    tenant: str
    principal: str
    event_name: str
    key_id: str | None  # the bare key id of the first resource ("...:key/<id>")
    key_version: int | None  # additionalEventData.keyVersions[that resource's ARN]
    error_code: str | None

    @property
    def is_key_usage(self) -> bool:
        """A successful cryptographic call: what GetKeyLastUsage reports."""
        return self.error_code is None and self.event_name in CRYPTOGRAPHIC_EVENTS and self.key_id is not None


def audit_fields(record: Mapping[str, Any]) -> AuditFields:
    """The indexed fields of ``record``; ``ValueError`` if a required one is missing.

    A record without a time, name or tenant could not be looked up, so it is
    refused before it enters the chain.
    """
    try:
        identity = record["userIdentity"]
        tenant = str(identity["accountId"])
        principal = str(identity.get("arn", ""))
        event_name = str(record["eventName"])
        # The spool's placeholder for an unreadable line has no eventID; the
        # column is unique, so it gets a fresh one (the record stays as written).
        event_id = str(record.get("eventID") or uuid.uuid4())
        event_time = _parse_time(str(record["eventTime"]))
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"audit record lacks a required field: {error}") from None
    key_id: str | None = None
    key_version: int | None = None
    resources = record.get("resources") or []
    if resources:
        arn = str(resources[0].get("ARN", ""))
        _, found, bare = arn.rpartition("key/")
        key_id = bare if found and bare else None
        versions = (record.get("additionalEventData") or {}).get("keyVersions") or {}
        version = versions.get(arn)
        key_version = int(version) if isinstance(version, int) else None
    error_code = record.get("errorCode")
    return AuditFields(
        event_id=event_id,
        event_time=event_time,
        tenant=tenant,
        principal=principal,
        event_name=event_name,
        key_id=key_id,
        key_version=key_version,
        error_code=str(error_code) if error_code else None,
    )


def _parse_time(text: str) -> datetime:
    """CloudTrail's ``eventTime`` (``2025-03-04T05:06:07.123Z``) as an aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"audit record has an invalid eventTime {text!r}") from None
    if value.tzinfo is None:
        raise ValueError(f"audit record eventTime {text!r} has no time zone")
    return value.astimezone(UTC)
