"""What the key use cases answer: AWS's response shapes, before any transport converts them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from hsmstore.core.keys.specs import KeyAlgorithms, algorithms_of
from hsmstore.core.model import ExpirationModel, KeyRecord


@dataclass(frozen=True)
class KeyDescription:
    """KeyMetadata: the record plus what derives from the server's region and the key's token.

    ``algorithms``: DescribeKey's EncryptionAlgorithms, SigningAlgorithms, MacAlgorithms and
    KeyAgreementAlgorithms (issue 23) -- AWS's list for the key's spec and usage less what its
    token does not offer (``specs.algorithms_of``); None fills in AWS's whole list.
    """

    key: KeyRecord
    arn: str
    algorithms: KeyAlgorithms = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.algorithms is None:
            object.__setattr__(self, "algorithms", algorithms_of(self.key.key_spec, self.key.key_usage))

    @property
    def encryption_algorithms(self) -> list[str]:
        return list(self.algorithms.encryption)

    @property
    def valid_to(self) -> datetime | None:
        """DescribeKey ValidTo (issue 22): "present only for KMS keys whose Origin is EXTERNAL and
        the ExpirationModel is KEY_MATERIAL_EXPIRES"."""
        return self.key.valid_to

    @property
    def expiration_model(self) -> ExpirationModel | None:
        """DescribeKey ExpirationModel (issue 22): an EXTERNAL key's, None until material is imported."""
        return self.key.expiration_model


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
