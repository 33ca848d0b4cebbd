"""proto <-> core conversion; no logic lives here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2, json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.access.grants import GrantConstraints
from hsmstore.core.audit.queries import EventsPage
from hsmstore.core.authz.service import GrantEntry
from hsmstore.core.key_stores.results import CustomKeyStoreDescription
from hsmstore.core.keys.results import (
    AliasEntry,
    KeyDescription,
    KeyLastUsage,
    KeyListEntry,
    KeyUsageRecord,
    RotationEntry,
)
from hsmstore.core.model import DEFAULT_KEY_STORE_ID
from hsmstore.core.paging import Page
from hsmstore.errors import ValidationException

if TYPE_CHECKING:  # issue 23's results (core/crypto/results.py); annotations only
    from hsmstore.core.crypto.results import PublicKeyResult


@dataclass(frozen=True)
class UnreadableRequest:
    """What a handler gets instead of a request message that could not be read.

    A body that is not a valid protobuf message, or no message at all within
    the receive deadline (server/app.py): the call is refused with
    ValidationException and audited like any other refused call (issue 14).
    ``problem`` is fixed text: nothing of the body is echoed.
    """

    message_type: type[Message] | None
    problem: str

    def empty_request(self) -> Message:
        """An empty message of the method's request type, for the audit record."""
        return self.message_type() if self.message_type is not None else empty_pb2.Empty()


def datetime_of(value: Timestamp, field: str) -> datetime:
    """A request Timestamp as a UTC datetime; outside 0001-01-01..9999-12-31 it is ValidationException.

    protobuf's Timestamp is defined only in that range (google/protobuf/timestamp.proto);
    Python's datetime cannot hold more.
    """
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise ValidationException(
            f"{field} is outside the range of a Timestamp (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z)"
        ) from None


def key_metadata(description: KeyDescription) -> pb.KeyMetadata:
    key = description.key
    metadata = pb.KeyMetadata(
        aws_account_id=key.tenant,
        key_id=key.key_id,
        arn=description.arn,
        enabled=key.enabled,
        description=key.description,
        key_usage=key.key_usage.value,
        key_state=key.state.wire_name,
        origin=key.origin.value,
        key_manager=key.key_manager.value,
        key_spec=key.key_spec.value,
        # Issue 23: AWS fills the list of the key's usage; the others stay empty.
        encryption_algorithms=description.algorithms.encryption,
        signing_algorithms=description.algorithms.signing,
        mac_algorithms=description.algorithms.mac,
        key_agreement_algorithms=description.algorithms.key_agreement,
        multi_region=False,
        pending_deletion_window_in_days=key.pending_window_days or 0,
        # AWS: CustomKeyStoreId is present only for a key in a custom key store.
        custom_key_store_id="" if key.key_store_id == DEFAULT_KEY_STORE_ID else key.key_store_id,
    )
    metadata.creation_date.FromDatetime(key.creation_date)
    if key.deletion_date is not None:
        metadata.deletion_date.FromDatetime(key.deletion_date)
    # Issue 22: AWS sets ExpirationModel for EXTERNAL keys only, ValidTo only when the material expires.
    if key.valid_to is not None:
        metadata.valid_to.FromDatetime(key.valid_to)
    if key.expiration_model is not None:
        metadata.expiration_model = key.expiration_model.value
    return metadata


def get_public_key_response(result: PublicKeyResult) -> pb.GetPublicKeyResponse:
    """AWS GetPublicKey: the DER SubjectPublicKeyInfo and the lists of the key's usage (no MAC list:
    HMAC keys have no public key)."""
    return pb.GetPublicKeyResponse(
        key_id=result.key_arn,
        public_key=result.public_key,
        key_spec=str(result.key_spec),
        key_usage=str(result.key_usage),
        encryption_algorithms=result.algorithms.encryption,
        signing_algorithms=result.algorithms.signing,
        key_agreement_algorithms=result.algorithms.key_agreement,
    )


def list_keys_response(page: Page[KeyListEntry]) -> pb.ListKeysResponse:
    return pb.ListKeysResponse(
        keys=[pb.KeyListEntry(key_id=entry.key_id, key_arn=entry.key_arn) for entry in page.entries],
        next_marker=page.next_marker,
        truncated=page.truncated,
    )


def optional_int(message: object, field: str) -> int | None:
    """proto3 ``optional`` scalars: None when the caller did not set the field."""
    return getattr(message, field) if message.HasField(field) else None  # type: ignore[attr-defined]


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp, or None to leave the field unset."""
    if value is None:
        return None
    result = Timestamp()
    result.FromDatetime(value)
    return result


def tag_pairs(tags: Iterable[pb.Tag]) -> list[tuple[str, str]]:
    return [(tag.tag_key, tag.tag_value) for tag in tags]


def list_key_rotations_response(page: Page[RotationEntry]) -> pb.ListKeyRotationsResponse:
    return pb.ListKeyRotationsResponse(
        rotations=[
            pb.RotationsListEntry(
                key_id=entry.key_arn,
                rotation_date=timestamp(entry.rotation_date),
                rotation_type=entry.rotation_type,
            )
            for entry in page.entries
        ],
        next_marker=page.next_marker,
        truncated=page.truncated,
    )


def list_aliases_response(page: Page[AliasEntry]) -> pb.ListAliasesResponse:
    return pb.ListAliasesResponse(
        aliases=[
            pb.AliasListEntry(
                alias_name=entry.alias_name,
                alias_arn=entry.alias_arn,
                target_key_id=entry.target_key_id,
                creation_date=timestamp(entry.creation_date),
                last_updated_date=timestamp(entry.last_updated_date),
            )
            for entry in page.entries
        ],
        next_marker=page.next_marker,
        truncated=page.truncated,
    )


def list_resource_tags_response(page: Page[tuple[str, str]]) -> pb.ListResourceTagsResponse:
    return pb.ListResourceTagsResponse(
        tags=[pb.Tag(tag_key=key, tag_value=value) for key, value in page.entries],
        next_marker=page.next_marker,
        truncated=page.truncated,
    )


SECRET_FIELDS = frozenset({"key_store_password"})
"""Request fields that are secrets: a custom key store's crypto user PIN (AWS ``KeyStorePassword``).

Issue 17: the PIN is "never in a log or the audit trail"; the record keeps no trace of it."""


def request_parameters(request: Message) -> dict[str, Any]:
    """CloudTrail's ``requestParameters``: every field the caller set, except bytes and secrets.

    Bytes fields are plaintext, ciphertext blobs or key material: CloudTrail
    leaves them out and so does hsmstore (contract: "never plaintext or key
    material"); :data:`SECRET_FIELDS` (PINs) likewise. Names are the JSON
    (camelCase) names, as in CloudTrail.
    """
    parameters: dict[str, Any] = {}
    for field, value in request.ListFields():
        if field.type == FieldDescriptor.TYPE_BYTES or field.name in SECRET_FIELDS:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            parameters[field.json_name] = dict(value)
        elif field.message_type is not None:
            parameters[field.json_name] = (
                [_message_dict(item) for item in value] if field.is_repeated else _message_dict(value)
            )
        elif field.is_repeated:
            parameters[field.json_name] = list(value)
        else:
            parameters[field.json_name] = value
    return parameters


def _message_dict(message: Message) -> dict[str, Any] | Any:
    """JSON form of a message; an out-of-range Timestamp as its raw fields.

    json_format refuses a Timestamp outside 0001..9999 (ValueError). A request
    carrying one must still get its audit record, so the record keeps what the
    caller sent: ``{"seconds": ..., "nanos": ...}``.
    """
    try:
        return json_format.MessageToDict(message)
    except ValueError:
        return {field.json_name: value for field, value in message.ListFields()}


def key_last_usage_response(usage: KeyLastUsage) -> pb.GetKeyLastUsageResponse:
    def one(record: KeyUsageRecord) -> pb.KeyUsage:
        return pb.KeyUsage(
            key_version=record.key_version,
            last_used_date=timestamp(record.last_used_date),
            event_id=record.event_id,
            operation=record.operation,
        )

    response = pb.GetKeyLastUsageResponse(
        key_id=usage.key_arn, version_usages=[one(v) for v in usage.versions]
    )
    if usage.overall is not None:
        response.last_usage.CopyFrom(one(usage.overall))
    return response


def lookup_events_response(page: EventsPage) -> pb.LookupEventsResponse:
    events = []
    for event in page.events:
        record = event.record
        events.append(
            pb.AuditEvent(
                event_id=event.event_id,
                event_name=event.event_name,
                event_time=timestamp(event.event_time),
                username=record.get("userIdentity", {}).get("arn", ""),
                resources=[
                    pb.AuditResource(resource_type=r.get("type", ""), resource_name=r.get("ARN", ""))
                    for r in record.get("resources", [])
                ],
                cloud_trail_event=event.record_json,
                read_only=bool(record.get("readOnly")),
                event_source=record.get("eventSource", ""),
            )
        )
    return pb.LookupEventsResponse(events=events, next_token=page.next_token)


def grant_constraints(request: pb.CreateGrantRequest) -> GrantConstraints | None:
    """Absent, or with neither map set: no constraints (AWS: Constraints is optional)."""
    if not request.HasField("constraints"):
        return None
    given = request.constraints
    if not given.encryption_context_subset and not given.encryption_context_equals:
        return None
    return GrantConstraints(
        encryption_context_equals=dict(given.encryption_context_equals) or None,
        encryption_context_subset=dict(given.encryption_context_subset) or None,
    )


def list_grants_response(page: Page[GrantEntry]) -> pb.ListGrantsResponse:
    return pb.ListGrantsResponse(
        grants=[_grant_entry(entry) for entry in page.entries],
        next_marker=page.next_marker,
        truncated=page.truncated,
    )


def _grant_entry(entry: GrantEntry) -> pb.GrantListEntry:
    grant = entry.grant
    constraints = None
    if grant.constraints is not None:
        constraints = pb.GrantConstraints(
            encryption_context_equals=grant.constraints.encryption_context_equals or {},
            encryption_context_subset=grant.constraints.encryption_context_subset or {},
        )
    return pb.GrantListEntry(
        key_id=entry.key_arn,
        grant_id=grant.grant_id,
        name=grant.name,
        creation_date=timestamp(grant.creation_date),
        grantee_principal=grant.grantee_principal,
        retiring_principal=grant.retiring_principal,
        issuing_account=entry.issuing_account,
        operations=list(grant.operations),
        constraints=constraints,
    )


def custom_key_stores_list_entry(store: CustomKeyStoreDescription) -> pb.CustomKeyStoresListEntry:
    """AWS ``CustomKeyStoresListEntry``; never the PIN. The serial is the one given, else the one
    the token reported at its first connect."""
    return pb.CustomKeyStoresListEntry(
        custom_key_store_id=store.custom_key_store_id,
        custom_key_store_name=store.custom_key_store_name,
        custom_key_store_type=store.custom_key_store_type,
        pkcs11_module=store.module,
        hsm_profile=store.hsm_profile,
        token_label=store.token_label or "",
        token_serial=store.token_serial or store.connected_token_serial or "",
        connection_state=store.connection_state.value,
        connection_error_code=store.connection_error_code.value if store.connection_error_code else "",
        creation_date=timestamp(store.creation_date),
    )


def describe_custom_key_stores_response(
    page: Page[CustomKeyStoreDescription],
) -> pb.DescribeCustomKeyStoresResponse:
    return pb.DescribeCustomKeyStoresResponse(
        custom_key_stores=[custom_key_stores_list_entry(store) for store in page.entries],
        next_marker=page.next_marker,
        truncated=page.truncated,
    )
