"""Names shared by the generator and the running client (no protobuf import here)."""

from __future__ import annotations

import re

# Stateless calls: a retry cannot do anything twice (retry.py).
IDEMPOTENT_PREFIXES = ("Describe", "List", "Get", "Generate")
# Sign, Verify, VerifyMac and DeriveSharedSecret (issue 23) compute without changing anything.
IDEMPOTENT_NAMES = frozenset(
    {
        "Decrypt",
        "Encrypt",
        "ReEncrypt",
        "Simulate",
        "LookupEvents",
        "Sign",
        "Verify",
        "VerifyMac",
        "DeriveSharedSecret",
    }
)


def snake(name: str) -> str:
    """``GenerateDataKey`` -> ``generate_data_key``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# Named like a read, but each call makes something: GetParametersForImport a wrapping key on the
# token (issue 22), which a retry would leave behind until its 24 h expiry.
NEVER_RETRIED = frozenset({"GetParametersForImport"})


def is_idempotent(rpc: str) -> bool:
    if rpc in NEVER_RETRIED:
        return False
    return rpc.startswith(IDEMPOTENT_PREFIXES) or rpc in IDEMPOTENT_NAMES
