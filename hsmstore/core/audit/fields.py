"""The columns an audit record is indexed by, read from the record itself.

The record (core/audit/record.py) is the truth the hash covers; the stores copy a few
of its fields into columns so LookupEvents can filter without parsing JSON.
CloudTrail's lookup attributes map to them: ``EventName`` -> ``eventName``,
``Username`` -> ``userIdentity.arn``, ``ResourceName`` -> the first resource's
key id. The tenant whose trail holds a record is its ``recipientAccountId``
(a key owner's copy of another tenant's use, core/audit/record.py), or, for a record
without one, ``userIdentity.accountId``. Both stores (SQL and the in-memory
fake) use this one function, so they index a record identically.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# The calls GetKeyLastUsage reports and LookupEvents counts as cryptographic (AWS's
# "cryptographic operations"); core/audit/record.py builds the records that name them.
CRYPTOGRAPHIC_EVENTS = frozenset(
    {
        "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext", "GenerateRandom",
        "XksEncrypt", "XksDecrypt",  # issue 21: AWS KMS using the key through the XKS proxy
        # issue 23: asymmetric and HMAC keys
        "Sign", "Verify", "GenerateMac", "VerifyMac", "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext", "DeriveSharedSecret",
    }
)  # fmt: skip


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
    return fields_from_strings(index_strings(record))


def index_strings(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The indexed fields as text, in :data:`INDEX_FIELDS` order ("" for none), without
    parsing anything: what a spool line carries before the record (store/spool.py)."""
    try:
        identity = record["userIdentity"]
        tenant = str(record.get("recipientAccountId", identity["accountId"]))
        principal = str(identity.get("arn", ""))
        event_name = str(record["eventName"])
        # The spool's placeholder for an unreadable line has no eventID; the
        # column is unique, so it gets a fresh one (the record stays as written).
        event_id = str(record.get("eventID") or uuid.uuid4())
        event_time = str(record["eventTime"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"audit record lacks a required field: {error}") from None
    key_id = key_version = ""
    resources = record.get("resources") or []
    if resources:
        arn = str(resources[0].get("ARN", ""))
        _, found, bare = arn.rpartition("key/")
        key_id = bare if found else ""
        versions = (record.get("additionalEventData") or {}).get("keyVersions") or {}
        version = versions.get(arn)
        key_version = str(version) if isinstance(version, int) else ""
    error_code = record.get("errorCode")
    return (
        event_id,
        event_time,
        tenant,
        principal,
        event_name,
        key_id,
        key_version,
        str(error_code) if error_code else "",
    )


INDEX_FIELDS = (
    "eventID",
    "eventTime",
    "tenant",
    "principal",
    "eventName",
    "keyId",
    "keyVersion",
    "errorCode",
)


def fields_from_strings(values: Sequence[str]) -> AuditFields:
    """The inverse of :func:`index_strings`; ``ValueError`` for text it did not make."""
    if len(values) != len(INDEX_FIELDS):
        raise ValueError("audit index fields: wrong count")
    event_id, event_time, tenant, principal, event_name, key_id, key_version, error_code = values
    return AuditFields(
        event_id=event_id,
        event_time=_parse_time(event_time),
        tenant=tenant,
        principal=principal,
        event_name=event_name,
        key_id=key_id or None,
        key_version=int(key_version) if key_version else None,
        error_code=error_code or None,
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
