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


def is_idempotent(rpc: str) -> bool:
    return rpc.startswith(IDEMPOTENT_PREFIXES) or rpc in IDEMPOTENT_NAMES
