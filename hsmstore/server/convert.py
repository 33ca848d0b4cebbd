"""proto <-> core conversion; no logic lives here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.service import AliasEntry, KeyDescription, KeyListEntry, Page, RotationEntry


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
        encryption_algorithms=description.encryption_algorithms,
        multi_region=False,
        pending_deletion_window_in_days=key.pending_window_days or 0,
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
