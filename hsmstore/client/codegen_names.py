"""Names shared by the generator and the running client (no protobuf import here)."""

from __future__ import annotations

import re

# The calls that change nothing, by name (retry.py): only these are retried. A list, not name
# prefixes, so that a new RPC is never retried until someone has said it changes nothing: a
# prefix rule retried GetParametersForImport, which makes a wrapping key on the token per call.
RETRIED_CALLS = frozenset(
    {
        "Decrypt",
        "DeriveSharedSecret",
        "DescribeCustomKeyStores",
        "DescribeKey",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateMac",
        "GenerateRandom",
        "GetIdentityPolicy",
        "GetKeyLastUsage",
        "GetKeyPolicy",
        "GetKeyRotationStatus",
        "GetPublicKey",
        "ListAliases",
        "ListGrants",
        "ListIdentityPolicies",
        "ListKeyPolicies",
        "ListKeyRotations",
        "ListKeys",
        "ListResourceTags",
        "ListRetirableGrants",
        "LookupEvents",
        "ReEncrypt",
        "Sign",
        "Simulate",
        "Verify",
        "VerifyMac",
    }
)


def snake(name: str) -> str:
    """``GenerateDataKey`` -> ``generate_data_key``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def is_idempotent(rpc: str) -> bool:
    return rpc in RETRIED_CALLS
