"""Key, version and destruction records to and from their rows.

The one place that lists their columns, so a new field (like ``key_store_id``
and ``residency``, migration 0007, or a WRAPPED version's material, migration 0012)
is written by every insert and read by every select at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy.engine import RowMapping

from hsmstore.core.model import (
    DestructionRecord,
    ExpirationModel,
    KeyManager,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
    Residency,
    RotationType,
    VersionState,
    WrappedMaterial,
)
from hsmstore.store.schema import key_versions

#: The prefix of :data:`VERSION_COLUMNS`' labels.
VERSION_PREFIX: Final = "v_"

# The columns a KeyVersion is built from, labelled so that they can share a
# SELECT with the keys columns (both tables have key_id, creation_date...).
VERSION_COLUMNS: Final = tuple(column.label(VERSION_PREFIX + column.name) for column in key_versions.c)


def key_values(key: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "tenant": key.tenant,
        "description": key.description,
        "key_state": key.state.value,
        "key_usage": key.key_usage.value,
        "key_spec": key.key_spec.value,
        "origin": key.origin.value,
        "key_manager": key.key_manager.value,
        "creation_date": key.creation_date,
        "deletion_date": key.deletion_date,
        "current_version": key.current_version,
        "pending_window_days": key.pending_window_days,
        "rotation_period_days": key.rotation_period_days,
        "next_rotation_date": key.next_rotation_date,
        "key_store_id": key.key_store_id,
        "valid_to": key.valid_to,
        "expiration_model": key.expiration_model.value if key.expiration_model else None,
    }


def version_values(version: KeyVersion) -> dict[str, Any]:
    return {
        "key_id": version.key_id,
        "version": version.version,
        "token_id": version.token_id,
        "state": version.state.value,
        "creation_date": version.creation_date,
        "rotation_type": version.rotation_type.value if version.rotation_type else None,
        "key_store_id": version.key_store_id,
        "residency": version.residency.value,
        "imported": version.imported,
        **wrapped_values(version.wrapped),
    }


def wrapped_values(wrapped: WrappedMaterial | None) -> dict[str, Any]:
    """A WRAPPED version's material as its three ``key_versions`` columns (issue 18); all NULL for none."""
    if wrapped is None:
        return {"wrapped_material": None, "wrapped_domain_key_id": None, "wrap_mechanism": None}
    return {
        "wrapped_material": wrapped.blob,
        "wrapped_domain_key_id": wrapped.domain_key_id,
        "wrap_mechanism": wrapped.mechanism,
    }


def destruction_values(key: KeyRecord, version: KeyVersion) -> dict[str, Any]:
    """The record ``begin_destruction`` writes: where the version's material is, until it is gone."""
    return {
        "key_id": key.key_id,
        "tenant": key.tenant,
        "version": version.version,
        "token_id": version.token_id,
        "deletion_date": key.deletion_date or version.creation_date,
        "destroyed_at": None,
        "key_store_id": version.key_store_id,
        "residency": version.residency.value,
        # Issue 18: whose destroyed_at is when copies of the blob became unusable.
        "domain_key_id": version.wrapped.domain_key_id if version.wrapped is not None else None,
    }


def key_from_row(row: Mapping[Any, Any]) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        description=row["description"],
        state=KeyState(row["key_state"]),
        key_usage=KeyUsage(row["key_usage"]),
        key_spec=KeySpec(row["key_spec"]),
        origin=Origin(row["origin"]),
        key_manager=KeyManager(row["key_manager"]),
        creation_date=row["creation_date"],
        current_version=row["current_version"],
        deletion_date=row["deletion_date"],
        pending_window_days=row["pending_window_days"],
        rotation_period_days=row["rotation_period_days"],
        next_rotation_date=row["next_rotation_date"],
        key_store_id=row["key_store_id"],
        valid_to=row["valid_to"],
        expiration_model=ExpirationModel(row["expiration_model"]) if row["expiration_model"] else None,
    )


def version_from_row(row: Mapping[Any, Any], prefix: str = "") -> KeyVersion:
    """``prefix``: :data:`VERSION_PREFIX` for a row selected with :data:`VERSION_COLUMNS`."""
    rotation_type = row[prefix + "rotation_type"]
    return KeyVersion(
        key_id=row[prefix + "key_id"],
        version=row[prefix + "version"],
        token_id=bytes(row[prefix + "token_id"]),
        state=VersionState(row[prefix + "state"]),
        creation_date=row[prefix + "creation_date"],
        rotation_type=RotationType(rotation_type) if rotation_type else None,
        key_store_id=row[prefix + "key_store_id"],
        residency=Residency(row[prefix + "residency"]),
        imported=bool(row[prefix + "imported"]),
        wrapped=wrapped_from_row(row, prefix),
        reservations_at_creation=int(row[prefix + "reservations_at_creation"]),
    )


def wrapped_from_row(row: Mapping[Any, Any], prefix: str = "") -> WrappedMaterial | None:
    """None for a version with no blob: a token object, or a WRAPPED version not stored yet."""
    blob = row[prefix + "wrapped_material"]
    if blob is None:
        return None
    return WrappedMaterial(
        domain_key_id=row[prefix + "wrapped_domain_key_id"],
        mechanism=row[prefix + "wrap_mechanism"],
        blob=bytes(blob),
    )


def destruction_from_row(row: RowMapping) -> DestructionRecord:
    return DestructionRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        version=row["version"],
        token_id=bytes(row["token_id"]),
        deletion_date=row["deletion_date"],
        destroyed_at=row["destroyed_at"],
        key_store_id=row["key_store_id"],
        residency=Residency(row["residency"]),
        domain_key_id=row["domain_key_id"],
    )
