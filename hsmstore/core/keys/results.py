"""What the key use cases answer: AWS's response shapes, before any transport converts them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hsmstore.core.model import EncryptionAlgorithm, KeyRecord


@dataclass(frozen=True)
class KeyDescription:
    """KeyMetadata: the record plus what derives from the server's region."""

    key: KeyRecord
    arn: str

    @property
    def encryption_algorithms(self) -> list[str]:
        return [EncryptionAlgorithm.SYMMETRIC_DEFAULT.value]


@dataclass(frozen=True)
class KeyListEntry:
    key_id: str
    key_arn: str


@dataclass(frozen=True)
class RotationStatus:
    key_arn: str
    rotation_enabled: bool
    rotation_period_in_days: int | None
    next_rotation_date: datetime | None


@dataclass(frozen=True)
class RotationEntry:
    key_arn: str
    rotation_date: datetime
    rotation_type: str


@dataclass(frozen=True)
class AliasEntry:
    alias_name: str
    alias_arn: str
    target_key_id: str
    creation_date: datetime
    last_updated_date: datetime


@dataclass(frozen=True)
class KeyUsageRecord:
    key_version: int  # 0: the key as a whole
    last_used_date: datetime
    event_id: str
    operation: str


@dataclass(frozen=True)
class KeyLastUsage:
    key_arn: str
    overall: KeyUsageRecord | None
    versions: list[KeyUsageRecord]
