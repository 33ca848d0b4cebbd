"""The actions a policy may name: every AWS KMS permission and hsmstore's admin ones.

A policy names an action exactly as AWS spells it, but IAM says actions are
"not case sensitive" (``kms:encrypt`` is ``kms:Encrypt``), so the parser looks
them up case-folded in :data:`ACTIONS_BY_FOLDED`. An action outside the
catalogue, or a wildcard that matches none of it, is refused
(``MalformedPolicyDocumentException``) rather than left to match nothing, so a
typo never silently narrows a policy (docs/api.md, "Key policies and grants").
"""

from __future__ import annotations

_KMS_OPERATIONS = (
    "CancelKeyDeletion",
    "ConnectCustomKeyStore",
    "CreateAlias",
    "CreateCustomKeyStore",
    "CreateGrant",
    "CreateKey",
    "Decrypt",
    "DeleteAlias",
    "DeleteCustomKeyStore",
    "DeleteImportedKeyMaterial",
    "DeriveSharedSecret",
    "DescribeCustomKeyStores",
    "DescribeKey",
    "DisableKey",
    "DisableKeyRotation",
    "DisconnectCustomKeyStore",
    "EnableKey",
    "EnableKeyRotation",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "GenerateRandom",
    "GetKeyLastUsage",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "GetParametersForImport",
    "GetPublicKey",
    "ImportKeyMaterial",
    "ListAliases",
    "ListGrants",
    "ListKeyPolicies",
    "ListKeyRotations",
    "ListKeys",
    "ListResourceTags",
    "ListRetirableGrants",
    "PutKeyPolicy",
    "ReEncryptFrom",
    "ReEncryptTo",
    "ReplicateKey",
    "RetireGrant",
    "RevokeGrant",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "Sign",
    "SynchronizeMultiRegionKey",
    "TagResource",
    "UntagResource",
    "UpdateAlias",
    "UpdateCustomKeyStore",
    "UpdateKeyDescription",
    "UpdatePrimaryRegion",
    "Verify",
    "VerifyMac",
)
# Every AWS KMS permission (AWS KMS permissions reference).
KMS_ACTIONS: frozenset[str] = frozenset(f"kms:{operation}" for operation in _KMS_OPERATIONS)
# hsmstore's admin RPCs, the IAM analogue; only identity policies may name them.
IAM_ACTIONS: frozenset[str] = frozenset(
    {
        "iam:PutIdentityPolicy",
        "iam:GetIdentityPolicy",
        "iam:ListIdentityPolicies",
        "iam:DeleteIdentityPolicy",
        "iam:SimulatePrincipalPolicy",
    }
)
# Reading the audit trail (hsmstore.v1.Audit), after CloudTrail's permission; identity policies only.
AUDIT_ACTIONS: frozenset[str] = frozenset({"cloudtrail:LookupEvents"})
# Action prefixes a key policy may not name (lower-cased).
IDENTITY_ONLY_PREFIXES = ("iam", "cloudtrail")
# Lower-cased action -> its AWS spelling: IAM actions are "not case sensitive".
ACTIONS_BY_FOLDED: dict[str, str] = {
    action.lower(): action for action in KMS_ACTIONS | IAM_ACTIONS | AUDIT_ACTIONS
}
