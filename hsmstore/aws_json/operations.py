"""The table: every AWS KMS operation hsmstore has, its request members, its use case, its response.

Issue 19: "One conversion layer between the AWS shapes and the service's
requests -- generated or table-driven, not written out per operation". Each
row names the use case (a ``UseCases`` family and method, called with the
caller and keyword arguments), each request member's kind and the argument it
becomes, and the response members read from the use case's result (the same
result types gRPC converts in ``server/convert.py``). ``dispatch.py`` runs a
row; nothing here runs anything.

AWS request members hsmstore does not do are listed per row in ``refused``:
a request may carry them with the value that asks for nothing (``DryRun:
false``, ``MultiRegion: false``, an empty list), anything else is refused with
the one-line reason given. tests/integration/test_aws_botocore_model.py holds
every row to botocore's KMS model: every input member AWS defines is accepted
or refused here, and every response member is one AWS defines.
hsmstore-only RPCs (Simulate, the Admin and Audit services) have no AWS name
and are not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hsmstore.aws_json.shapes import (
    BLOB,
    BOOLEAN,
    CONSTRAINTS,
    INTEGER,
    PAGE_MEMBERS,
    STRING,
    STRING_LIST,
    STRING_MAP,
    TAGS,
    TIMESTAMP,
    InKind,
    Out,
    attr,
    blob_out,
    enum_out,
    item,
    list_out,
    map_out,
    pascal_out,
    structure_out,
    timestamp_out,
)
from hsmstore.core.model import DEFAULT_KEY_STORE_ID
from hsmstore.errors import KMSError, UnsupportedOperationException, ValidationException


@dataclass(frozen=True)
class In:
    """A request member: AWS name, kind, the use-case argument it becomes, that argument when absent."""

    name: str
    kind: InKind
    arg: str
    default: Any = ""


@dataclass(frozen=True)
class Refused:
    """An AWS request member hsmstore does not do: ``allowed`` values pass (and are ignored); any other
    value is refused with ``error(why)``."""

    name: str
    why: str
    allowed: tuple[Any, ...] = (None, False, [])
    error: type[KMSError] = UnsupportedOperationException


@dataclass(frozen=True)
class Operation:
    name: str
    family: str  # the UseCases attribute
    method: str  # the use case's method, called as method(caller, **arguments)
    inputs: tuple[In, ...] = ()
    outputs: tuple[Out, ...] = ()
    refused: tuple[Refused, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)  # arguments that are not request members


# -- shared members ------------------------------------------------------------------------

KEY_ID = In("KeyId", STRING, "key_id")
GRANT_TOKENS = In("GrantTokens", STRING_LIST, "grant_tokens", ())
ENCRYPTION_CONTEXT = In("EncryptionContext", STRING_MAP, "encryption_context", {})
LIMIT = In("Limit", INTEGER, "limit", None)
MARKER = In("Marker", STRING, "marker")
LIST_KEY = (KEY_ID, LIMIT, MARKER)

DRY_RUN = Refused("DryRun", "DryRun is not supported: hsmstore has no dry-run mode; leave DryRun out")
DRY_RUN_MODIFIERS = Refused(
    "DryRunModifiers", "DryRunModifiers is not supported: hsmstore has no dry-run mode"
)
RECIPIENT = Refused(
    "Recipient", "Recipient is not supported: hsmstore has no Nitro Enclaves attestation; leave it out"
)
GRANTEE_SERVICE = Refused(
    "GranteeServicePrincipal",
    "GranteeServicePrincipal is not supported: hsmstore has no AWS service principals",
)
RETIRING_SERVICE = Refused(
    "RetiringServicePrincipal",
    "RetiringServicePrincipal is not supported: hsmstore has no AWS service principals",
)

# -- shared response shapes ----------------------------------------------------------------

KEY_MANAGERS = {"SERVICE": "AWS"}  # AWS's KeyManagerType: AWS | CUSTOMER


def _custom_key_store_id(description: Any) -> str | None:
    """Only a key in a custom key store (issue 17) names one; the default token is no custom store."""
    store_id = getattr(description.key, "key_store_id", DEFAULT_KEY_STORE_ID)
    return None if store_id == DEFAULT_KEY_STORE_ID else store_id


# AWS KeyMetadata, from core/keys/results.py KeyDescription (server/convert.py key_metadata for gRPC).
KEY_METADATA = (
    Out("AWSAccountId", attr("key.tenant")),
    Out("KeyId", attr("key.key_id")),
    Out("Arn", attr("arn")),
    Out("CreationDate", attr("key.creation_date"), timestamp_out),
    Out("Enabled", attr("key.enabled")),
    Out("Description", attr("key.description")),
    Out("KeyUsage", attr("key.key_usage"), enum_out()),
    Out("KeyState", attr("key.state"), pascal_out),
    Out("DeletionDate", attr("key.deletion_date"), timestamp_out),
    # Issue 22: an EXTERNAL key's material expiry; AWS leaves both out for other keys.
    Out("ValidTo", attr("key.valid_to"), timestamp_out),
    Out("Origin", attr("key.origin"), enum_out()),
    Out("CustomKeyStoreId", _custom_key_store_id),
    Out("ExpirationModel", attr("key.expiration_model"), enum_out()),
    Out("KeyManager", attr("key.key_manager"), enum_out(KEY_MANAGERS)),
    Out("CustomerMasterKeySpec", attr("key.key_spec"), enum_out()),  # deprecated by AWS, still returned
    Out("KeySpec", attr("key.key_spec"), enum_out()),
    # Issue 23: the list of the key's usage; AWS leaves the others out.
    Out("EncryptionAlgorithms", attr("algorithms.encryption"), list_out(), omit_empty=True),
    Out("SigningAlgorithms", attr("algorithms.signing"), list_out(), omit_empty=True),
    Out("MacAlgorithms", attr("algorithms.mac"), list_out(), omit_empty=True),
    Out("KeyAgreementAlgorithms", attr("algorithms.key_agreement"), list_out(), omit_empty=True),
    Out("MultiRegion", lambda _description: False),
    Out("PendingDeletionWindowInDays", attr("key.pending_window_days")),
)
DESCRIBED_KEY = (Out("KeyMetadata", attr(""), structure_out(KEY_METADATA)),)

GRANT_ENTRY = (
    Out("KeyId", attr("key_arn")),
    Out("GrantId", attr("grant.grant_id")),
    Out("Name", attr("grant.name"), omit_empty=True),
    Out("CreationDate", attr("grant.creation_date"), timestamp_out),
    Out("GranteePrincipal", attr("grant.grantee_principal")),
    Out("RetiringPrincipal", attr("grant.retiring_principal"), omit_empty=True),
    Out("IssuingAccount", attr("issuing_account")),
    Out("Operations", attr("grant.operations"), list_out()),
    Out(
        "Constraints",
        attr("grant.constraints"),
        structure_out(
            (
                Out("EncryptionContextSubset", attr("encryption_context_subset"), map_out),
                Out("EncryptionContextEquals", attr("encryption_context_equals"), map_out),
            )
        ),
    ),
)
GRANTS_PAGE = (Out("Grants", attr("entries"), list_out(structure_out(GRANT_ENTRY))), *PAGE_MEMBERS)
KEY_USAGE = (
    Out("Operation", attr("operation")),
    Out("Timestamp", attr("last_used_date"), timestamp_out),
    Out("CloudTrailEventId", attr("event_id"), omit_empty=True),
)

# -- the table -----------------------------------------------------------------------------

OPERATIONS: tuple[Operation, ...] = (
    # keys (core/keys/creation.py, management.py)
    Operation(
        "CreateKey",
        "creation",
        "create_key",
        inputs=(
            In("Policy", STRING, "policy"),
            In("Description", STRING, "description"),
            In("KeyUsage", STRING, "key_usage"),
            In("KeySpec", STRING, "key_spec"),
            In("CustomerMasterKeySpec", STRING, "key_spec"),  # AWS: the deprecated name of KeySpec
            In("Origin", STRING, "origin"),
            In("BypassPolicyLockoutSafetyCheck", BOOLEAN, "bypass_policy_lockout_safety_check", False),
            In("Tags", TAGS, "tags", ()),
            In("CustomKeyStoreId", STRING, "custom_key_store_id"),
        ),
        outputs=DESCRIBED_KEY,
        refused=(
            Refused("MultiRegion", "MultiRegion keys are not supported: hsmstore has one region"),
            Refused("XksKeyId", "XksKeyId is not supported: hsmstore has no external key stores"),
        ),
    ),
    Operation("DescribeKey", "keys", "describe_key", inputs=(KEY_ID, GRANT_TOKENS), outputs=DESCRIBED_KEY),
    Operation(
        "ListKeys",
        "keys",
        "list_keys",
        inputs=(LIMIT, MARKER),
        outputs=(
            Out(
                "Keys",
                attr("entries"),
                list_out(structure_out((Out("KeyId", attr("key_id")), Out("KeyArn", attr("key_arn"))))),
            ),
            *PAGE_MEMBERS,
        ),
        refused=(Refused("ResourceOwners", "ResourceOwners is not supported: ListKeys lists your own keys"),),
    ),
    Operation("EnableKey", "keys", "enable_key", inputs=(KEY_ID,)),
    Operation("DisableKey", "keys", "disable_key", inputs=(KEY_ID,)),
    Operation(
        "UpdateKeyDescription",
        "keys",
        "update_key_description",
        inputs=(KEY_ID, In("Description", STRING, "description")),
    ),
    # cryptography (core/crypto/symmetric.py)
    Operation(
        "Encrypt",
        "crypto",
        "encrypt",
        inputs=(
            KEY_ID,
            In("Plaintext", BLOB, "plaintext", b""),
            ENCRYPTION_CONTEXT,
            In("EncryptionAlgorithm", STRING, "encryption_algorithm"),
            GRANT_TOKENS,
        ),
        outputs=(
            Out("CiphertextBlob", attr("ciphertext_blob"), blob_out),
            Out("KeyId", attr("key_arn")),
            Out("EncryptionAlgorithm", attr("encryption_algorithm")),
        ),
        refused=(DRY_RUN,),
    ),
    Operation(
        "Decrypt",
        "crypto",
        "decrypt",
        inputs=(
            In("CiphertextBlob", BLOB, "ciphertext_blob", b""),
            ENCRYPTION_CONTEXT,
            KEY_ID,
            In("EncryptionAlgorithm", STRING, "encryption_algorithm"),
            GRANT_TOKENS,
        ),
        outputs=(
            Out("KeyId", attr("key_arn")),
            Out("Plaintext", attr("plaintext"), blob_out),
            Out("EncryptionAlgorithm", attr("encryption_algorithm")),
        ),
        refused=(RECIPIENT, DRY_RUN, DRY_RUN_MODIFIERS),
    ),
    Operation(
        "ReEncrypt",
        "crypto",
        "re_encrypt",
        inputs=(
            In("CiphertextBlob", BLOB, "ciphertext_blob", b""),
            In("SourceEncryptionContext", STRING_MAP, "source_encryption_context", {}),
            In("SourceKeyId", STRING, "source_key_id"),
            In("DestinationKeyId", STRING, "destination_key_id"),
            In("DestinationEncryptionContext", STRING_MAP, "destination_encryption_context", {}),
            In("SourceEncryptionAlgorithm", STRING, "source_encryption_algorithm"),
            In("DestinationEncryptionAlgorithm", STRING, "destination_encryption_algorithm"),
            GRANT_TOKENS,
        ),
        outputs=(
            Out("CiphertextBlob", attr("ciphertext_blob"), blob_out),
            Out("SourceKeyId", attr("source_key_arn")),
            Out("KeyId", attr("key_arn")),
            Out("SourceEncryptionAlgorithm", attr("source_encryption_algorithm")),
            Out("DestinationEncryptionAlgorithm", attr("destination_encryption_algorithm")),
        ),
        refused=(DRY_RUN, DRY_RUN_MODIFIERS),
    ),
    Operation(
        "GenerateDataKey",
        "crypto",
        "generate_data_key",
        inputs=(
            KEY_ID,
            ENCRYPTION_CONTEXT,
            In("NumberOfBytes", INTEGER, "number_of_bytes", None),
            In("KeySpec", STRING, "key_spec"),
            GRANT_TOKENS,
        ),
        outputs=(
            Out("CiphertextBlob", attr("ciphertext_blob"), blob_out),
            Out("Plaintext", attr("plaintext"), blob_out),
            Out("KeyId", attr("key_arn")),
        ),
        refused=(RECIPIENT, DRY_RUN),
    ),
    Operation(
        "GenerateDataKeyWithoutPlaintext",
        "crypto",
        "generate_data_key",
        inputs=(
            KEY_ID,
            ENCRYPTION_CONTEXT,
            In("KeySpec", STRING, "key_spec"),
            In("NumberOfBytes", INTEGER, "number_of_bytes", None),
            GRANT_TOKENS,
        ),
        outputs=(Out("CiphertextBlob", attr("ciphertext_blob"), blob_out), Out("KeyId", attr("key_arn"))),
        refused=(DRY_RUN,),
        fixed={"with_plaintext": False},
    ),
    Operation(
        "GenerateRandom",
        "crypto",
        "generate_random",
        inputs=(
            In("NumberOfBytes", INTEGER, "number_of_bytes", None),
            In("CustomKeyStoreId", STRING, "custom_key_store_id"),
        ),
        outputs=(Out("Plaintext", attr(""), blob_out),),
        refused=(RECIPIENT,),
    ),
    # lifecycle (core/keys/deletion.py, rotation.py)
    Operation(
        "ScheduleKeyDeletion",
        "deletion",
        "schedule_key_deletion",
        inputs=(KEY_ID, In("PendingWindowInDays", INTEGER, "pending_window_in_days", None)),
        outputs=(
            Out("KeyId", attr("arn")),
            Out("DeletionDate", attr("key.deletion_date"), timestamp_out),
            Out("KeyState", attr("key.state"), pascal_out),
            Out("PendingWindowInDays", attr("key.pending_window_days")),
        ),
    ),
    Operation("CancelKeyDeletion", "deletion", "cancel_key_deletion", (KEY_ID,), (Out("KeyId", attr("")),)),
    Operation(
        "EnableKeyRotation",
        "rotation",
        "enable_key_rotation",
        inputs=(KEY_ID, In("RotationPeriodInDays", INTEGER, "rotation_period_in_days", None)),
    ),
    Operation("DisableKeyRotation", "rotation", "disable_key_rotation", inputs=(KEY_ID,)),
    Operation(
        "GetKeyRotationStatus",
        "rotation",
        "get_key_rotation_status",
        inputs=(KEY_ID,),
        outputs=(
            Out("KeyRotationEnabled", attr("rotation_enabled")),
            Out("KeyId", attr("key_arn")),
            Out("RotationPeriodInDays", attr("rotation_period_in_days")),
            Out("NextRotationDate", attr("next_rotation_date"), timestamp_out),
        ),
    ),
    Operation("RotateKeyOnDemand", "rotation", "rotate_key_on_demand", (KEY_ID,), (Out("KeyId", attr("")),)),
    Operation(
        "ListKeyRotations",
        "rotation",
        "list_key_rotations",
        inputs=LIST_KEY,
        outputs=(
            Out(
                "Rotations",
                attr("entries"),
                list_out(
                    structure_out(
                        (
                            Out("KeyId", attr("key_arn")),
                            Out("RotationDate", attr("rotation_date"), timestamp_out),
                            Out("RotationType", attr("rotation_type"), enum_out()),
                        )
                    )
                ),
            ),
            *PAGE_MEMBERS,
        ),
        refused=(
            # Every version of an hsmstore key is a rotation: both values list the same.
            Refused(
                "IncludeKeyMaterial",
                "IncludeKeyMaterial must be ALL_KEY_MATERIAL or ROTATIONS_ONLY",
                allowed=(None, "ALL_KEY_MATERIAL", "ROTATIONS_ONLY"),
                error=ValidationException,
            ),
        ),
    ),
    # aliases and tags (core/keys/aliases.py, tagging.py)
    Operation(
        "CreateAlias",
        "aliases",
        "create_alias",
        inputs=(In("AliasName", STRING, "alias_name"), In("TargetKeyId", STRING, "target_key_id")),
    ),
    Operation(
        "UpdateAlias",
        "aliases",
        "update_alias",
        inputs=(In("AliasName", STRING, "alias_name"), In("TargetKeyId", STRING, "target_key_id")),
    ),
    Operation("DeleteAlias", "aliases", "delete_alias", inputs=(In("AliasName", STRING, "alias_name"),)),
    Operation(
        "ListAliases",
        "aliases",
        "list_aliases",
        inputs=LIST_KEY,
        outputs=(
            Out(
                "Aliases",
                attr("entries"),
                list_out(
                    structure_out(
                        (
                            Out("AliasName", attr("alias_name")),
                            Out("AliasArn", attr("alias_arn")),
                            Out("TargetKeyId", attr("target_key_id"), omit_empty=True),
                            Out("CreationDate", attr("creation_date"), timestamp_out),
                            Out("LastUpdatedDate", attr("last_updated_date"), timestamp_out),
                        )
                    )
                ),
            ),
            *PAGE_MEMBERS,
        ),
    ),
    Operation("TagResource", "tags", "tag_resource", inputs=(KEY_ID, In("Tags", TAGS, "tags", ()))),
    Operation(
        "UntagResource", "tags", "untag_resource", inputs=(KEY_ID, In("TagKeys", STRING_LIST, "tag_keys", ()))
    ),
    Operation(
        "ListResourceTags",
        "tags",
        "list_resource_tags",
        inputs=LIST_KEY,
        outputs=(
            Out(
                "Tags",
                attr("entries"),
                list_out(structure_out((Out("TagKey", item(0)), Out("TagValue", item(1))))),
            ),
            *PAGE_MEMBERS,
        ),
    ),
    Operation(
        "GetKeyLastUsage",
        "last_usage",
        "get_key_last_usage",
        inputs=(KEY_ID,),
        outputs=(
            Out("KeyId", attr("key_arn")),
            Out("KeyLastUsage", attr("overall"), structure_out(KEY_USAGE)),
        ),
    ),
    # key policies and grants (core/authz/service.py)
    Operation(
        "PutKeyPolicy",
        "authorization",
        "put_key_policy",
        inputs=(
            KEY_ID,
            In("PolicyName", STRING, "policy_name"),
            In("Policy", STRING, "policy"),
            In("BypassPolicyLockoutSafetyCheck", BOOLEAN, "bypass_lockout_check", False),
        ),
    ),
    Operation(
        "GetKeyPolicy",
        "authorization",
        "get_key_policy",
        inputs=(KEY_ID, In("PolicyName", STRING, "policy_name")),
        outputs=(Out("Policy", item(0)), Out("PolicyName", item(1))),
    ),
    Operation(
        "ListKeyPolicies",
        "authorization",
        "list_key_policies",
        inputs=LIST_KEY,
        outputs=(Out("PolicyNames", attr("entries"), list_out()), *PAGE_MEMBERS),
    ),
    Operation(
        "CreateGrant",
        "authorization",
        "create_grant",
        inputs=(
            KEY_ID,
            In("GranteePrincipal", STRING, "grantee_principal"),
            In("RetiringPrincipal", STRING, "retiring_principal"),
            In("Operations", STRING_LIST, "operations", ()),
            In("Constraints", CONSTRAINTS, "constraints", None),
            GRANT_TOKENS,
            In("Name", STRING, "name"),
        ),
        outputs=(Out("GrantToken", item(1)), Out("GrantId", item(0))),
        refused=(DRY_RUN, GRANTEE_SERVICE, RETIRING_SERVICE),
    ),
    Operation(
        "ListGrants",
        "authorization",
        "list_grants",
        inputs=(
            *LIST_KEY,
            In("GrantId", STRING, "grant_id"),
            In("GranteePrincipal", STRING, "grantee_principal"),
        ),
        outputs=GRANTS_PAGE,
        refused=(GRANTEE_SERVICE,),
    ),
    Operation(
        "ListRetirableGrants",
        "authorization",
        "list_retirable_grants",
        inputs=(LIMIT, MARKER, In("RetiringPrincipal", STRING, "retiring_principal")),
        outputs=GRANTS_PAGE,
        refused=(RETIRING_SERVICE,),
    ),
    Operation(
        "RetireGrant",
        "authorization",
        "retire_grant",
        inputs=(In("GrantToken", STRING, "grant_token"), KEY_ID, In("GrantId", STRING, "grant_id")),
        refused=(DRY_RUN,),
    ),
    Operation(
        "RevokeGrant",
        "authorization",
        "revoke_grant",
        inputs=(KEY_ID, In("GrantId", STRING, "grant_id")),
        refused=(DRY_RUN,),
    ),
)

# Asymmetric and HMAC keys (issue 23, core/crypto/asymmetric.py). RSA Encrypt/Decrypt are the rows
# above. Every blob (message, signature, MAC, private key, shared secret) stays out of the audit record.
MESSAGE = In("Message", BLOB, "message", b"")
DATA_KEY_PAIR_IN = (
    ENCRYPTION_CONTEXT,
    KEY_ID,
    In("KeyPairSpec", STRING, "key_pair_spec"),
    GRANT_TOKENS,
)
DATA_KEY_PAIR_OUT = (
    Out("PrivateKeyCiphertextBlob", attr("private_key_ciphertext_blob"), blob_out),
    Out("PublicKey", attr("public_key"), blob_out),
    Out("KeyId", attr("key_arn")),
    Out("KeyPairSpec", attr("key_pair_spec"), enum_out()),
)
OPERATIONS += (
    Operation(
        "Sign",
        "asymmetric",
        "sign",
        inputs=(
            KEY_ID,
            MESSAGE,
            In("MessageType", STRING, "message_type"),
            GRANT_TOKENS,
            In("SigningAlgorithm", STRING, "signing_algorithm"),
        ),
        outputs=(
            Out("KeyId", attr("key_arn")),
            Out("Signature", attr("signature"), blob_out),
            Out("SigningAlgorithm", attr("signing_algorithm"), enum_out()),
        ),
        refused=(DRY_RUN,),
    ),
    Operation(
        "Verify",
        "asymmetric",
        "verify",
        inputs=(
            KEY_ID,
            MESSAGE,
            In("MessageType", STRING, "message_type"),
            In("Signature", BLOB, "signature", b""),
            In("SigningAlgorithm", STRING, "signing_algorithm"),
            GRANT_TOKENS,
        ),
        outputs=(
            Out("KeyId", attr("key_arn")),
            Out("SignatureValid", attr("signature_valid")),
            Out("SigningAlgorithm", attr("signing_algorithm"), enum_out()),
        ),
        refused=(DRY_RUN,),
    ),
    Operation(
        "GetPublicKey",
        "asymmetric",
        "get_public_key",
        inputs=(KEY_ID, GRANT_TOKENS),
        outputs=(
            Out("KeyId", attr("key_arn")),
            Out("PublicKey", attr("public_key"), blob_out),
            Out("CustomerMasterKeySpec", attr("key_spec"), enum_out()),  # deprecated by AWS, still returned
            Out("KeySpec", attr("key_spec"), enum_out()),
            Out("KeyUsage", attr("key_usage"), enum_out()),
            Out("EncryptionAlgorithms", attr("algorithms.encryption"), list_out(), omit_empty=True),
            Out("SigningAlgorithms", attr("algorithms.signing"), list_out(), omit_empty=True),
            Out("KeyAgreementAlgorithms", attr("algorithms.key_agreement"), list_out(), omit_empty=True),
        ),
    ),
    Operation(
        "GenerateMac",
        "asymmetric",
        "generate_mac",
        inputs=(MESSAGE, KEY_ID, In("MacAlgorithm", STRING, "mac_algorithm"), GRANT_TOKENS),
        outputs=(
            Out("Mac", attr("mac"), blob_out),
            Out("MacAlgorithm", attr("mac_algorithm"), enum_out()),
            Out("KeyId", attr("key_arn")),
        ),
        refused=(DRY_RUN,),
    ),
    Operation(
        "VerifyMac",
        "asymmetric",
        "verify_mac",
        inputs=(
            MESSAGE,
            KEY_ID,
            In("MacAlgorithm", STRING, "mac_algorithm"),
            In("Mac", BLOB, "mac", b""),
            GRANT_TOKENS,
        ),
        outputs=(
            Out("KeyId", attr("key_arn")),
            Out("MacValid", attr("mac_valid")),
            Out("MacAlgorithm", attr("mac_algorithm"), enum_out()),
        ),
        refused=(DRY_RUN,),
    ),
    Operation(
        "GenerateDataKeyPair",
        "asymmetric",
        "generate_data_key_pair",
        inputs=DATA_KEY_PAIR_IN,
        outputs=(
            DATA_KEY_PAIR_OUT[0],
            Out("PrivateKeyPlaintext", attr("private_key_plaintext"), blob_out),
            *DATA_KEY_PAIR_OUT[1:],
        ),
        refused=(RECIPIENT, DRY_RUN),
        fixed={"with_plaintext": True},
    ),
    Operation(
        "GenerateDataKeyPairWithoutPlaintext",
        "asymmetric",
        "generate_data_key_pair",
        inputs=DATA_KEY_PAIR_IN,
        outputs=DATA_KEY_PAIR_OUT,
        refused=(DRY_RUN,),
        fixed={"with_plaintext": False},
    ),
    Operation(
        "DeriveSharedSecret",
        "asymmetric",
        "derive_shared_secret",
        inputs=(
            KEY_ID,
            In("KeyAgreementAlgorithm", STRING, "key_agreement_algorithm"),
            In("PublicKey", BLOB, "public_key", b""),
            GRANT_TOKENS,
        ),
        outputs=(
            Out("KeyId", attr("key_arn")),
            Out("SharedSecret", attr("shared_secret"), blob_out),
            Out("KeyAgreementAlgorithm", attr("key_agreement_algorithm"), enum_out()),
            Out("KeyOrigin", attr("key_origin"), enum_out()),
        ),
        refused=(DRY_RUN, RECIPIENT),
    ),
)

# Imported key material (issue 22, core/keys/imports.py). The import token and the wrapped
# material are blobs: never in the audit record. One material per key: AWS's multi-material
# members (ImportType, KeyMaterialId, KeyMaterialDescription) ask for what hsmstore does not keep.
KEY_MATERIAL_ID = Refused(
    "KeyMaterialId",
    "KeyMaterialId is not supported: an hsmstore key holds one imported key material; leave it out",
)
OPERATIONS += (
    Operation(
        "GetParametersForImport",
        "imports",
        "get_parameters_for_import",
        inputs=(
            KEY_ID,
            In("WrappingAlgorithm", STRING, "wrapping_algorithm"),
            In("WrappingKeySpec", STRING, "wrapping_key_spec"),
        ),
        outputs=(
            Out("KeyId", attr("key_arn")),
            Out("ImportToken", attr("import_token"), blob_out),
            Out("PublicKey", attr("public_key"), blob_out),
            Out("ParametersValidTo", attr("parameters_valid_to"), timestamp_out),
        ),
    ),
    Operation(
        "ImportKeyMaterial",
        "imports",
        "import_key_material",
        inputs=(
            KEY_ID,
            In("ImportToken", BLOB, "import_token", b""),
            In("EncryptedKeyMaterial", BLOB, "encrypted_key_material", b""),
            In("ValidTo", TIMESTAMP, "valid_to", None),
            In("ExpirationModel", STRING, "expiration_model"),
        ),
        outputs=(Out("KeyId", attr("key_arn")),),
        refused=(
            Refused(
                "ImportType",
                "ImportType is not supported: an hsmstore key holds one imported key material "
                "(a first import is new material, a re-import the same material); leave it out",
            ),
            Refused(
                "KeyMaterialDescription",
                "KeyMaterialDescription is not supported: an hsmstore key holds one imported key material; "
                "leave it out",
                allowed=(None, ""),
            ),
            KEY_MATERIAL_ID,
        ),
    ),
    Operation(
        "DeleteImportedKeyMaterial",
        "imports",
        "delete_imported_key_material",
        inputs=(KEY_ID,),
        outputs=(Out("KeyId", attr("key_arn")),),
        refused=(KEY_MATERIAL_ID,),
    ),
)

# Custom key stores (issue 17, core/key_stores/management.py). CreateCustomKeyStore and
# UpdateCustomKeyStore have no AWS members for a PKCS#11 module and token: they are gRPC's
# (``hsmstore kms``) only.
CUSTOM_KEY_STORE_ID = In("CustomKeyStoreId", STRING, "custom_key_store_id")
CUSTOM_KEY_STORE_ENTRY = (
    Out("CustomKeyStoreId", attr("custom_key_store_id")),
    Out("CustomKeyStoreName", attr("custom_key_store_name")),
    Out("CloudHsmClusterId", lambda store: store.token_label or store.token_serial),  # which token
    Out("ConnectionState", attr("connection_state"), enum_out()),
    Out("ConnectionErrorCode", attr("connection_error_code"), enum_out()),
    Out("CreationDate", attr("creation_date"), timestamp_out),
    Out("CustomKeyStoreType", attr("custom_key_store_type")),
)
OPERATIONS += (
    Operation(
        "DescribeCustomKeyStores",
        "custom_key_stores",
        "describe_custom_key_stores",
        inputs=(
            CUSTOM_KEY_STORE_ID,
            In("CustomKeyStoreName", STRING, "custom_key_store_name"),
            LIMIT,
            MARKER,
        ),
        outputs=(
            Out("CustomKeyStores", attr("entries"), list_out(structure_out(CUSTOM_KEY_STORE_ENTRY))),
            *PAGE_MEMBERS,
        ),
    ),
    Operation(
        "ConnectCustomKeyStore", "custom_key_stores", "connect_custom_key_store", (CUSTOM_KEY_STORE_ID,)
    ),
    Operation(
        "DisconnectCustomKeyStore", "custom_key_stores", "disconnect_custom_key_store", (CUSTOM_KEY_STORE_ID,)
    ),
    Operation("DeleteCustomKeyStore", "custom_key_stores", "delete_custom_key_store", (CUSTOM_KEY_STORE_ID,)),
)

BY_NAME: Mapping[str, Operation] = {operation.name: operation for operation in OPERATIONS}
