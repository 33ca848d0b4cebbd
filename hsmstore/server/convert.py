"""proto <-> core conversion; no logic lives here."""

from __future__ import annotations

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.service import KeyDescription, KeyListEntry, Page


def key_metadata(description: KeyDescription) -> pb.KeyMetadata:
    key = description.key
    metadata = pb.KeyMetadata(
        aws_account_id=key.tenant,
        key_id=key.key_id,
        arn=description.arn,
        enabled=key.enabled,
        description=key.description,
        key_usage=key.key_usage.value,
        key_state=key.state.value,
        origin=key.origin.value,
        key_manager=key.key_manager.value,
        key_spec=key.key_spec.value,
        encryption_algorithms=description.encryption_algorithms,
        multi_region=False,
    )
    metadata.creation_date.FromDatetime(key.creation_date)
    if key.deletion_date is not None:
        metadata.deletion_date.FromDatetime(key.deletion_date)
    return metadata


def list_keys_response(page: Page[KeyListEntry]) -> pb.ListKeysResponse:
    return pb.ListKeysResponse(
        keys=[pb.KeyListEntry(key_id=entry.key_id, key_arn=entry.key_arn) for entry in page.entries],
        next_marker=page.next_marker,
        truncated=page.truncated,
    )


def optional_int(message: object, field: str) -> int | None:
    """proto3 ``optional`` scalars: None when the caller did not set the field."""
    return getattr(message, field) if message.HasField(field) else None  # type: ignore[attr-defined]
