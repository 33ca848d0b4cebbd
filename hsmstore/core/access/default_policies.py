"""The policy documents hsmstore writes itself, as JSON text.

Each builder returns the text that is stored and that GetKeyPolicy /
GetIdentityPolicy answer, so it is pretty-printed like the AWS console's, and
each parses with :func:`hsmstore.core.access.policy.parse_policy` (tests check it).
"""

from __future__ import annotations

import json

from hsmstore.core.access.policy import PRINCIPAL_TYPE
from hsmstore.core.model import tenant_root_arn

POLICY_VERSION = "2012-10-17"
DEFAULT_KEY_POLICY_SID = "Enable IAM policies"


def _dump(document: dict[str, object]) -> str:
    return json.dumps(document, indent=2)


def default_key_policy(tenant: str) -> str:
    """AWS's default key policy: "gives the AWS account (root user) that owns the KMS
    key full access to the KMS key [and] enables IAM policies in the account to
    allow access to the KMS key". Nobody is allowed by it alone: it delegates to
    the tenant's identity policies.

    A key created with it stores no policy row (issue 18: ``keys/creation.py``); this text
    is then its policy (``access/control.key_policy_text``). So this text must never
    change for existing keys: a new default is a migration that first writes this text
    to every key without a row.
    """
    return _dump(
        {
            "Version": POLICY_VERSION,
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": DEFAULT_KEY_POLICY_SID,
                    "Effect": "Allow",
                    "Principal": {PRINCIPAL_TYPE: tenant_root_arn(tenant)},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        }
    )


def default_admin_identity_policy() -> str:
    """What a tenant's ``role/admin`` principals get when no identity policy is stored
    for them (docs/api.md: "allowed every operation on the tenant's keys
    through the tenant's own identity policy"): every kms and iam action, and
    reading the tenant's audit trail.
    Through the default key policy that covers the tenant's own keys only: another
    tenant's key policy must allow them too.
    """
    return _dump(
        {
            "Version": POLICY_VERSION,
            "Statement": [
                {
                    "Sid": "AdminFullAccess",
                    "Effect": "Allow",
                    "Action": ["kms:*", "iam:*", "cloudtrail:LookupEvents"],
                    "Resource": "*",
                }
            ],
        }
    )


def service_managed_key_policy(tenant: str, service: str) -> str:
    """After the key policy of AWS managed keys (``aws/ebs`` and the like).

    Statement 0: every principal of the tenant may use the key for
    cryptography, but only through ``service`` ("Allow access through <service>
    for all principals in the account that are authorized to use <service>",
    conditions ``kms:CallerAccount`` and ``kms:ViaService``). Statement 1: the
    tenant's root may read the key's metadata, which its identity policies then
    hand out. AWS's statement 1 also holds ``kms:RevokeGrant``; hsmstore's does not.
    """
    return _dump(
        {
            "Version": POLICY_VERSION,
            "Id": f"service-managed-{service}",
            "Statement": [
                {
                    "Sid": f"Allow access through {service} for all principals in the tenant",
                    "Effect": "Allow",
                    "Principal": {PRINCIPAL_TYPE: "*"},
                    "Action": [
                        "kms:Encrypt",
                        "kms:Decrypt",
                        "kms:ReEncrypt*",
                        "kms:GenerateDataKey*",
                        "kms:DescribeKey",
                        "kms:CreateGrant",
                    ],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {"kms:CallerAccount": tenant, "kms:ViaService": service},
                    },
                },
                {
                    "Sid": "Allow direct access to key metadata to the tenant",
                    "Effect": "Allow",
                    "Principal": {PRINCIPAL_TYPE: tenant_root_arn(tenant)},
                    "Action": ["kms:Describe*", "kms:Get*", "kms:List*"],
                    "Resource": "*",
                },
            ],
        }
    )
