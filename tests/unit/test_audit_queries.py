"""LookupEvents' ResourceName filter: only the caller's own keys can match."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hsmstore.core.access.control import AccessControl
from hsmstore.core.audit.queries import AuditQueries
from hsmstore.core.audit.record import CallAudit
from hsmstore.core.model import Caller
from hsmstore.core.paging import encode_marker
from hsmstore.errors import AccessDeniedException, InvalidMarkerException, ValidationException
from tests.fakes.store import FakeMetadataStore

ACME = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
KEY_ID = "0f6a4c8e-3b1d-4e0a-9c2f-5d7e8a9b0c1d"


@pytest.fixture
def queries() -> AuditQueries:
    log = FakeMetadataStore()
    call = CallAudit("Encrypt", ACME, {"keyId": KEY_ID}, datetime.now(UTC))
    call.key_ids.append(f"arn:hsmstore:kms:local:acme:key/{KEY_ID}")
    log.append_audit_records([call.to_record()])
    return AuditQueries(log, "local", AccessControl(log, "local").check_identity_action)


def names(queries: AuditQueries, resource_name: str) -> list[str]:
    page = queries.lookup_events(ACME, [("ResourceName", resource_name)], None, None, None, "")
    return [event.event_name for event in page.events]


def test_the_callers_key_by_id_or_arn_matches(queries: AuditQueries) -> None:
    assert names(queries, KEY_ID) == ["Encrypt"]
    assert names(queries, f"arn:hsmstore:kms:local:acme:key/{KEY_ID}") == ["Encrypt"]


def test_another_tenants_arn_and_a_non_key_name_match_nothing(queries: AuditQueries) -> None:
    assert names(queries, f"arn:hsmstore:kms:local:other:key/{KEY_ID}") == []
    assert names(queries, "not-a-key-id") == []


def test_an_alias_is_not_a_resource_name(queries: AuditQueries) -> None:
    with pytest.raises(ValidationException):
        names(queries, "alias/orders")


def test_reading_the_trail_needs_the_lookup_events_permission(queries: AuditQueries) -> None:
    """A tenant's user with no identity policy may not read the tenant's trail (CloudTrail)."""
    user = Caller("acme", "arn:hsmstore:iam::acme:user/erin", "user", "erin")
    with pytest.raises(AccessDeniedException, match="cloudtrail:LookupEvents"):
        queries.lookup_events(user, [], None, None, None, "")


@pytest.mark.parametrize(
    "value",
    ["Encrypt\x00", "x" * 2001],
    ids=["nul, which PostgreSQL cannot compare", "over CloudTrail's 2,000 characters"],
)
def test_an_attribute_value_beyond_cloudtrails_rules_is_a_validation_error(
    queries: AuditQueries, value: str
) -> None:
    with pytest.raises(ValidationException, match="AttributeValue"):
        queries.lookup_events(ACME, [("EventName", value)], None, None, None, "")


@pytest.mark.parametrize("seq", ["²", "9" * 30], ids=["a digit that is not ASCII", "past a BIGINT"])
def test_a_next_token_with_a_seq_no_row_can_have_is_an_invalid_marker(
    queries: AuditQueries, seq: str
) -> None:
    token = encode_marker("e", f"{datetime.now(UTC).isoformat()}|{seq}")
    with pytest.raises(InvalidMarkerException):
        queries.lookup_events(ACME, [], None, None, None, token)
