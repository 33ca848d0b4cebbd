"""Audit records are bounded where they are made, byte-bounded pages, and the key owner's copy.

Issue 14: one large request must not blind the trail (records bounded, with a
marker and the original length, as CloudTrail shortens oversized fields);
LookupEvents pages stay far below gRPC's 4 MiB message limit; another tenant's
use of a key is recorded in the key owner's trail too (CloudTrail: "the event
is recorded in the caller's account and in the key owner's account").
"""

from __future__ import annotations

from datetime import UTC, datetime

from hsmstore.core.access.control import AccessControl
from hsmstore.core.audit.fields import audit_fields
from hsmstore.core.audit.queries import MAX_PAGE_BYTES, AuditQueries
from hsmstore.core.audit.record import (
    MAX_RECORD_BYTES,
    MAX_STRING_CHARS,
    CallAudit,
    recipient_records,
    serialized,
)
from hsmstore.core.model import Caller
from hsmstore.store.spool import MAX_BATCH_BYTES, MAX_SPOOL_LINE_BYTES, spool_line
from tests.fakes.store import FakeMetadataStore

ACME = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
GLOBEX = Caller("globex", "arn:hsmstore:iam::globex:role/admin")
ACME_KEY = "arn:hsmstore:kms:local:acme:key/0f6a4c8e-3b1d-4e0a-9c2f-5d7e8a9b0c1d"


def denied_encrypt(key_id: str) -> CallAudit:
    call = CallAudit("Encrypt", ACME, {"keyId": key_id}, datetime.now(UTC))
    call.error_code, call.error_message = "NotFoundException", f"Invalid keyId {key_id}"
    return call


def test_a_700_kb_control_character_key_id_leaves_a_record_within_the_bound() -> None:
    """JSON escapes a control character as 6 bytes: 700 000 of them were a 4.2 MB spool line."""
    record = denied_encrypt("\x01" * 700_000).to_record()
    line = spool_line(record)
    assert len(serialized(record).canonical) <= MAX_RECORD_BYTES
    assert len(line) <= MAX_SPOOL_LINE_BYTES < MAX_BATCH_BYTES
    bounded = serialized(record).record
    assert bounded["requestParameters"] == {"omitted": True, "originalSize": 6 * 700_000 + 12}
    assert bounded["errorMessage"].endswith("...[truncated, originalLength=700014]")
    assert audit_fields(bounded).event_name == "Encrypt"


def test_a_long_value_keeps_its_first_characters_then_the_marker_with_its_length() -> None:
    record = denied_encrypt("k" * 40_000).to_record()
    assert (
        record["requestParameters"]["keyId"]
        == "k" * MAX_STRING_CHARS + "...[truncated, originalLength=40000]"
    )
    assert len(serialized(record).canonical) <= MAX_RECORD_BYTES


def test_a_valid_key_policy_is_recorded_whole() -> None:
    policy = '{"Statement": []}' + " " * (32768 - 17)
    call = CallAudit("PutKeyPolicy", ACME, {"keyId": "k", "policy": policy}, datetime.now(UTC))
    assert serialized(call.to_record()).record["requestParameters"]["policy"] == policy


def test_a_mapping_with_too_many_entries_keeps_the_first_and_says_how_many() -> None:
    context = {f"k{i:05}": "v" for i in range(5000)}
    call = CallAudit("Encrypt", ACME, {"keyId": "k", "encryptionContext": context}, datetime.now(UTC))
    kept = call.to_record()["requestParameters"]["encryptionContext"]
    assert len(kept) == 1025 and "...[truncated, originalLength=5000]" in kept
    assert list(kept)[:3] == ["k00000", "k00001", "k00002"]


def test_another_tenants_use_of_a_key_is_recorded_for_the_caller_and_for_the_key_owner() -> None:
    call = CallAudit("Encrypt", GLOBEX, {"keyId": ACME_KEY}, datetime.now(UTC))
    call.key_ids.append(ACME_KEY)
    caller_copy, owner_copy = recipient_records(call.to_record())
    assert (caller_copy["recipientAccountId"], owner_copy["recipientAccountId"]) == ("globex", "acme")
    assert caller_copy["sharedEventID"] == owner_copy["sharedEventID"]
    assert caller_copy["eventID"] != owner_copy["eventID"]
    assert owner_copy["userIdentity"] == caller_copy["userIdentity"]  # who used the key
    assert owner_copy["resources"] == [{"ARN": ACME_KEY, "accountId": "acme", "type": "AWS::KMS::Key"}]
    assert [audit_fields(copy).tenant for copy in (caller_copy, owner_copy)] == ["globex", "acme"]


def test_a_call_on_the_callers_own_key_has_one_record() -> None:
    call = CallAudit("Encrypt", ACME, {"keyId": ACME_KEY}, datetime.now(UTC))
    call.key_ids.append(ACME_KEY)
    (only,) = recipient_records(call.to_record())
    assert "sharedEventID" not in only and only["recipientAccountId"] == "acme"


def test_lookup_events_pages_are_bounded_by_bytes_and_still_reach_every_event() -> None:
    log = FakeMetadataStore()
    for i in range(30):
        call = CallAudit("Encrypt", ACME, {"keyId": f"{i:03}" + "x" * 30_000}, datetime.now(UTC))
        call.error_code, call.error_message = "NotFoundException", "y" * 30_000
        log.append_audit_records([call.to_record()])
    queries = AuditQueries(log, "local", AccessControl(log, "local").check_identity_action)
    seen: list[str] = []
    token = ""
    while True:
        page = queries.lookup_events(ACME, [], None, None, 50, token)
        assert (
            len(page.events) >= 1
            and sum(len(e.record_json.encode()) for e in page.events) <= MAX_PAGE_BYTES // 2
        )
        seen.extend(event.record["requestParameters"]["keyId"][:3] for event in page.events)
        token = page.next_token
        if not token:
            break
    assert sorted(seen) == [f"{i:03}" for i in range(30)]
