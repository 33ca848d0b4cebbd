"""Results of hsmstore calls as frozen dataclasses (generated: python -m hsmstore.client.codegen).

Fields are the proto's (docs/api.md: the AWS parameter names in snake_case);
timestamps are aware datetimes in UTC; an unset message or optional number is None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

# What hsmstore.client re-exports: every result type, as generated.
__all__ = [
    "AliasListEntry",
    "AuditEvent",
    "AuditResource",
    "CancelKeyDeletionResult",
    "CreateCustomKeyStoreResult",
    "CreateGrantResult",
    "CreateKeyResult",
    "CustomKeyStoresListEntry",
    "DecryptResult",
    "DeleteImportedKeyMaterialResult",
    "DeriveSharedSecretResult",
    "DescribeCustomKeyStoresResult",
    "DescribeKeyResult",
    "EncryptResult",
    "GenerateDataKeyPairResult",
    "GenerateDataKeyPairWithoutPlaintextResult",
    "GenerateDataKeyResult",
    "GenerateDataKeyWithoutPlaintextResult",
    "GenerateMacResult",
    "GenerateRandomResult",
    "GetIdentityPolicyResult",
    "GetKeyLastUsageResult",
    "GetKeyPolicyResult",
    "GetKeyRotationStatusResult",
    "GetParametersForImportResult",
    "GetPublicKeyResult",
    "GrantConstraints",
    "GrantListEntry",
    "IdentityPolicyEntry",
    "ImportKeyMaterialResult",
    "KeyListEntry",
    "KeyMetadata",
    "KeyUsage",
    "ListAliasesResult",
    "ListGrantsResult",
    "ListIdentityPoliciesResult",
    "ListKeyPoliciesResult",
    "ListKeyRotationsResult",
    "ListKeysResult",
    "ListResourceTagsResult",
    "LookupAttribute",
    "LookupEventsResult",
    "ReEncryptResult",
    "RotateKeyOnDemandResult",
    "RotationsListEntry",
    "ScheduleKeyDeletionResult",
    "SignResult",
    "SimulateResult",
    "Tag",
    "VerifyMacResult",
    "VerifyResult",
]


@dataclass(frozen=True)
class KeyMetadata:
    """``hsmstore.v1.KeyMetadata``."""

    aws_account_id: str = ""
    key_id: str = ""
    arn: str = ""
    creation_date: datetime | None = None
    enabled: bool = False
    description: str = ""
    key_usage: str = ""
    key_state: str = ""
    deletion_date: datetime | None = None
    origin: str = ""
    custom_key_store_id: str = ""
    key_manager: str = ""
    key_spec: str = ""
    encryption_algorithms: tuple[str, ...] = ()
    multi_region: bool = False
    pending_deletion_window_in_days: int = 0
    signing_algorithms: tuple[str, ...] = ()
    mac_algorithms: tuple[str, ...] = ()
    key_agreement_algorithms: tuple[str, ...] = ()
    valid_to: datetime | None = None
    expiration_model: str = ""


@dataclass(frozen=True)
class CreateKeyResult:
    """``hsmstore.v1.CreateKeyResponse``."""

    key_metadata: KeyMetadata | None = None


@dataclass(frozen=True)
class Tag:
    """``hsmstore.v1.Tag``."""

    tag_key: str = ""
    tag_value: str = ""


@dataclass(frozen=True)
class DescribeKeyResult:
    """``hsmstore.v1.DescribeKeyResponse``."""

    key_metadata: KeyMetadata | None = None


@dataclass(frozen=True)
class KeyListEntry:
    """``hsmstore.v1.KeyListEntry``."""

    key_id: str = ""
    key_arn: str = ""


@dataclass(frozen=True)
class ListKeysResult:
    """``hsmstore.v1.ListKeysResponse``."""

    keys: tuple[KeyListEntry, ...] = ()
    next_marker: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class EncryptResult:
    """``hsmstore.v1.EncryptResponse``."""

    ciphertext_blob: bytes = b""
    key_id: str = ""
    encryption_algorithm: str = ""


@dataclass(frozen=True)
class DecryptResult:
    """``hsmstore.v1.DecryptResponse``."""

    key_id: str = ""
    plaintext: bytes = field(default=b"", repr=False)
    encryption_algorithm: str = ""


@dataclass(frozen=True)
class ReEncryptResult:
    """``hsmstore.v1.ReEncryptResponse``."""

    ciphertext_blob: bytes = b""
    source_key_id: str = ""
    key_id: str = ""
    source_encryption_algorithm: str = ""
    destination_encryption_algorithm: str = ""


@dataclass(frozen=True)
class GenerateDataKeyResult:
    """``hsmstore.v1.GenerateDataKeyResponse``."""

    ciphertext_blob: bytes = b""
    plaintext: bytes = field(default=b"", repr=False)
    key_id: str = ""


@dataclass(frozen=True)
class GenerateDataKeyWithoutPlaintextResult:
    """``hsmstore.v1.GenerateDataKeyWithoutPlaintextResponse``."""

    ciphertext_blob: bytes = b""
    key_id: str = ""


@dataclass(frozen=True)
class GenerateRandomResult:
    """``hsmstore.v1.GenerateRandomResponse``."""

    plaintext: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class SignResult:
    """``hsmstore.v1.SignResponse``."""

    key_id: str = ""
    signature: bytes = b""
    signing_algorithm: str = ""


@dataclass(frozen=True)
class VerifyResult:
    """``hsmstore.v1.VerifyResponse``."""

    key_id: str = ""
    signature_valid: bool = False
    signing_algorithm: str = ""


@dataclass(frozen=True)
class GetPublicKeyResult:
    """``hsmstore.v1.GetPublicKeyResponse``."""

    key_id: str = ""
    public_key: bytes = b""
    key_spec: str = ""
    key_usage: str = ""
    encryption_algorithms: tuple[str, ...] = ()
    signing_algorithms: tuple[str, ...] = ()
    key_agreement_algorithms: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerateMacResult:
    """``hsmstore.v1.GenerateMacResponse``."""

    mac: bytes = b""
    mac_algorithm: str = ""
    key_id: str = ""


@dataclass(frozen=True)
class VerifyMacResult:
    """``hsmstore.v1.VerifyMacResponse``."""

    key_id: str = ""
    mac_valid: bool = False
    mac_algorithm: str = ""


@dataclass(frozen=True)
class GenerateDataKeyPairResult:
    """``hsmstore.v1.GenerateDataKeyPairResponse``."""

    private_key_ciphertext_blob: bytes = b""
    private_key_plaintext: bytes = field(default=b"", repr=False)
    public_key: bytes = b""
    key_id: str = ""
    key_pair_spec: str = ""


@dataclass(frozen=True)
class GenerateDataKeyPairWithoutPlaintextResult:
    """``hsmstore.v1.GenerateDataKeyPairWithoutPlaintextResponse``."""

    private_key_ciphertext_blob: bytes = b""
    public_key: bytes = b""
    key_id: str = ""
    key_pair_spec: str = ""


@dataclass(frozen=True)
class DeriveSharedSecretResult:
    """``hsmstore.v1.DeriveSharedSecretResponse``."""

    key_id: str = ""
    shared_secret: bytes = field(default=b"", repr=False)
    key_agreement_algorithm: str = ""
    key_origin: str = ""


@dataclass(frozen=True)
class GetParametersForImportResult:
    """``hsmstore.v1.GetParametersForImportResponse``."""

    key_id: str = ""
    import_token: bytes = b""
    public_key: bytes = b""
    parameters_valid_to: datetime | None = None


@dataclass(frozen=True)
class ImportKeyMaterialResult:
    """``hsmstore.v1.ImportKeyMaterialResponse``."""

    key_id: str = ""


@dataclass(frozen=True)
class DeleteImportedKeyMaterialResult:
    """``hsmstore.v1.DeleteImportedKeyMaterialResponse``."""

    key_id: str = ""


@dataclass(frozen=True)
class ScheduleKeyDeletionResult:
    """``hsmstore.v1.ScheduleKeyDeletionResponse``."""

    key_id: str = ""
    deletion_date: datetime | None = None
    key_state: str = ""
    pending_window_in_days: int = 0


@dataclass(frozen=True)
class CancelKeyDeletionResult:
    """``hsmstore.v1.CancelKeyDeletionResponse``."""

    key_id: str = ""


@dataclass(frozen=True)
class GetKeyRotationStatusResult:
    """``hsmstore.v1.GetKeyRotationStatusResponse``."""

    key_rotation_enabled: bool = False
    key_id: str = ""
    rotation_period_in_days: int = 0
    next_rotation_date: datetime | None = None
    on_demand_rotation_start_date: datetime | None = None


@dataclass(frozen=True)
class RotateKeyOnDemandResult:
    """``hsmstore.v1.RotateKeyOnDemandResponse``."""

    key_id: str = ""


@dataclass(frozen=True)
class RotationsListEntry:
    """``hsmstore.v1.RotationsListEntry``."""

    key_id: str = ""
    rotation_date: datetime | None = None
    rotation_type: str = ""


@dataclass(frozen=True)
class ListKeyRotationsResult:
    """``hsmstore.v1.ListKeyRotationsResponse``."""

    rotations: tuple[RotationsListEntry, ...] = ()
    next_marker: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class AliasListEntry:
    """``hsmstore.v1.AliasListEntry``."""

    alias_name: str = ""
    alias_arn: str = ""
    target_key_id: str = ""
    creation_date: datetime | None = None
    last_updated_date: datetime | None = None


@dataclass(frozen=True)
class ListAliasesResult:
    """``hsmstore.v1.ListAliasesResponse``."""

    aliases: tuple[AliasListEntry, ...] = ()
    next_marker: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class ListResourceTagsResult:
    """``hsmstore.v1.ListResourceTagsResponse``."""

    tags: tuple[Tag, ...] = ()
    next_marker: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class KeyUsage:
    """``hsmstore.v1.KeyUsage``."""

    key_version: int = 0
    last_used_date: datetime | None = None
    event_id: str = ""
    operation: str = ""


@dataclass(frozen=True)
class GetKeyLastUsageResult:
    """``hsmstore.v1.GetKeyLastUsageResponse``."""

    key_id: str = ""
    last_usage: KeyUsage | None = None
    version_usages: tuple[KeyUsage, ...] = ()


@dataclass(frozen=True)
class GetKeyPolicyResult:
    """``hsmstore.v1.GetKeyPolicyResponse``."""

    policy: str = ""
    policy_name: str = ""


@dataclass(frozen=True)
class ListKeyPoliciesResult:
    """``hsmstore.v1.ListKeyPoliciesResponse``."""

    policy_names: tuple[str, ...] = ()
    next_marker: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class CreateGrantResult:
    """``hsmstore.v1.CreateGrantResponse``."""

    grant_token: str = ""
    grant_id: str = ""


@dataclass(frozen=True)
class GrantConstraints:
    """``hsmstore.v1.GrantConstraints``."""

    encryption_context_subset: Mapping[str, str] = field(default_factory=dict)
    encryption_context_equals: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GrantListEntry:
    """``hsmstore.v1.GrantListEntry``."""

    key_id: str = ""
    grant_id: str = ""
    name: str = ""
    creation_date: datetime | None = None
    grantee_principal: str = ""
    retiring_principal: str = ""
    issuing_account: str = ""
    operations: tuple[str, ...] = ()
    constraints: GrantConstraints | None = None


@dataclass(frozen=True)
class ListGrantsResult:
    """``hsmstore.v1.ListGrantsResponse``."""

    grants: tuple[GrantListEntry, ...] = ()
    next_marker: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class SimulateResult:
    """``hsmstore.v1.SimulateResponse``."""

    decision: str = ""
    decided_by: str = ""
    grant_id: str = ""
    key_id: str = ""


@dataclass(frozen=True)
class CreateCustomKeyStoreResult:
    """``hsmstore.v1.CreateCustomKeyStoreResponse``."""

    custom_key_store_id: str = ""


@dataclass(frozen=True)
class CustomKeyStoresListEntry:
    """``hsmstore.v1.CustomKeyStoresListEntry``."""

    custom_key_store_id: str = ""
    custom_key_store_name: str = ""
    custom_key_store_type: str = ""
    pkcs11_module: str = ""
    hsm_profile: str = ""
    token_label: str = ""
    token_serial: str = ""
    connection_state: str = ""
    connection_error_code: str = ""
    creation_date: datetime | None = None


@dataclass(frozen=True)
class DescribeCustomKeyStoresResult:
    """``hsmstore.v1.DescribeCustomKeyStoresResponse``."""

    custom_key_stores: tuple[CustomKeyStoresListEntry, ...] = ()
    next_marker: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class GetIdentityPolicyResult:
    """``hsmstore.v1.GetIdentityPolicyResponse``."""

    principal: str = ""
    policy_name: str = ""
    policy: str = ""
    is_default: bool = False


@dataclass(frozen=True)
class IdentityPolicyEntry:
    """``hsmstore.v1.IdentityPolicyEntry``."""

    principal: str = ""
    policy_name: str = ""
    last_updated: datetime | None = None


@dataclass(frozen=True)
class ListIdentityPoliciesResult:
    """``hsmstore.v1.ListIdentityPoliciesResponse``."""

    policies: tuple[IdentityPolicyEntry, ...] = ()
    next_marker: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class AuditResource:
    """``hsmstore.v1.AuditResource``."""

    resource_type: str = ""
    resource_name: str = ""


@dataclass(frozen=True)
class AuditEvent:
    """``hsmstore.v1.AuditEvent``."""

    event_id: str = ""
    event_name: str = ""
    event_time: datetime | None = None
    username: str = ""
    resources: tuple[AuditResource, ...] = ()
    cloud_trail_event: str = ""
    read_only: bool = False
    event_source: str = ""


@dataclass(frozen=True)
class LookupEventsResult:
    """``hsmstore.v1.LookupEventsResponse``."""

    events: tuple[AuditEvent, ...] = ()
    next_token: str = ""


@dataclass(frozen=True)
class LookupAttribute:
    """``hsmstore.v1.LookupAttribute``."""

    attribute_key: str = ""
    attribute_value: str = ""


# proto full name -> dataclass, for the converter (_convert.py).
DATACLASSES: dict[str, type] = {
    "hsmstore.v1.KeyMetadata": KeyMetadata,
    "hsmstore.v1.CreateKeyResponse": CreateKeyResult,
    "hsmstore.v1.Tag": Tag,
    "hsmstore.v1.DescribeKeyResponse": DescribeKeyResult,
    "hsmstore.v1.KeyListEntry": KeyListEntry,
    "hsmstore.v1.ListKeysResponse": ListKeysResult,
    "hsmstore.v1.EncryptResponse": EncryptResult,
    "hsmstore.v1.DecryptResponse": DecryptResult,
    "hsmstore.v1.ReEncryptResponse": ReEncryptResult,
    "hsmstore.v1.GenerateDataKeyResponse": GenerateDataKeyResult,
    "hsmstore.v1.GenerateDataKeyWithoutPlaintextResponse": GenerateDataKeyWithoutPlaintextResult,
    "hsmstore.v1.GenerateRandomResponse": GenerateRandomResult,
    "hsmstore.v1.SignResponse": SignResult,
    "hsmstore.v1.VerifyResponse": VerifyResult,
    "hsmstore.v1.GetPublicKeyResponse": GetPublicKeyResult,
    "hsmstore.v1.GenerateMacResponse": GenerateMacResult,
    "hsmstore.v1.VerifyMacResponse": VerifyMacResult,
    "hsmstore.v1.GenerateDataKeyPairResponse": GenerateDataKeyPairResult,
    "hsmstore.v1.GenerateDataKeyPairWithoutPlaintextResponse": GenerateDataKeyPairWithoutPlaintextResult,
    "hsmstore.v1.DeriveSharedSecretResponse": DeriveSharedSecretResult,
    "hsmstore.v1.GetParametersForImportResponse": GetParametersForImportResult,
    "hsmstore.v1.ImportKeyMaterialResponse": ImportKeyMaterialResult,
    "hsmstore.v1.DeleteImportedKeyMaterialResponse": DeleteImportedKeyMaterialResult,
    "hsmstore.v1.ScheduleKeyDeletionResponse": ScheduleKeyDeletionResult,
    "hsmstore.v1.CancelKeyDeletionResponse": CancelKeyDeletionResult,
    "hsmstore.v1.GetKeyRotationStatusResponse": GetKeyRotationStatusResult,
    "hsmstore.v1.RotateKeyOnDemandResponse": RotateKeyOnDemandResult,
    "hsmstore.v1.RotationsListEntry": RotationsListEntry,
    "hsmstore.v1.ListKeyRotationsResponse": ListKeyRotationsResult,
    "hsmstore.v1.AliasListEntry": AliasListEntry,
    "hsmstore.v1.ListAliasesResponse": ListAliasesResult,
    "hsmstore.v1.ListResourceTagsResponse": ListResourceTagsResult,
    "hsmstore.v1.KeyUsage": KeyUsage,
    "hsmstore.v1.GetKeyLastUsageResponse": GetKeyLastUsageResult,
    "hsmstore.v1.GetKeyPolicyResponse": GetKeyPolicyResult,
    "hsmstore.v1.ListKeyPoliciesResponse": ListKeyPoliciesResult,
    "hsmstore.v1.CreateGrantResponse": CreateGrantResult,
    "hsmstore.v1.GrantConstraints": GrantConstraints,
    "hsmstore.v1.GrantListEntry": GrantListEntry,
    "hsmstore.v1.ListGrantsResponse": ListGrantsResult,
    "hsmstore.v1.SimulateResponse": SimulateResult,
    "hsmstore.v1.CreateCustomKeyStoreResponse": CreateCustomKeyStoreResult,
    "hsmstore.v1.CustomKeyStoresListEntry": CustomKeyStoresListEntry,
    "hsmstore.v1.DescribeCustomKeyStoresResponse": DescribeCustomKeyStoresResult,
    "hsmstore.v1.GetIdentityPolicyResponse": GetIdentityPolicyResult,
    "hsmstore.v1.IdentityPolicyEntry": IdentityPolicyEntry,
    "hsmstore.v1.ListIdentityPoliciesResponse": ListIdentityPoliciesResult,
    "hsmstore.v1.AuditResource": AuditResource,
    "hsmstore.v1.AuditEvent": AuditEvent,
    "hsmstore.v1.LookupEventsResponse": LookupEventsResult,
    "hsmstore.v1.LookupAttribute": LookupAttribute,
}
