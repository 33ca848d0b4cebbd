"""The access key record (issue 19, Deliver 2): who a SigV4 access key id speaks for.

AWS IAM's access keys: an id (``AKIA`` and 16 uppercase letters or digits, 20
characters), a secret shown once at creation, a status ``Active`` or
``Inactive``. hsmstore adds ``Revoked``: a revoked key never works again and
its id is never reused, so the audit trail keeps meaning what it said.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

ACCESS_KEY_ID_PREFIX: Final = "AKIA"
ACCESS_KEY_ID_LENGTH: Final = 20
ACCESS_KEY_ID_PATTERN: Final = re.compile(r"AKIA[A-Z0-9]{16}")
_ID_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
SECRET_ACCESS_KEY_LENGTH: Final = 40
"""AWS's secret access keys are 40 base64-alphabet characters; so are ours (240 random bits)."""
_SECRET_CHARACTERS: Final = string.ascii_letters + string.digits + "+/"


class AccessKeyStatus(StrEnum):
    ACTIVE = "Active"
    INACTIVE = "Inactive"
    REVOKED = "Revoked"


@dataclass(frozen=True)
class AccessKeyRecord:
    """One access key. ``sealed_secret`` is the SecretSealer's blob; never the secret itself."""

    access_key_id: str
    tenant: str
    principal: str  # arn:hsmstore:iam::<tenant>:<kind>/<name>
    sealed_secret: bytes
    status: AccessKeyStatus
    created_at: datetime
    last_used: datetime | None = None


def new_access_key_id() -> str:
    """``AKIA`` and 16 random uppercase letters or digits (82 bits)."""
    return ACCESS_KEY_ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def new_secret_access_key() -> str:
    return "".join(secrets.choice(_SECRET_CHARACTERS) for _ in range(SECRET_ACCESS_KEY_LENGTH))


def sealing_context(access_key_id: str, tenant: str, principal: str) -> bytes:
    """The SecretSealer context of a key's secret: the row's id and whom it speaks for.

    A sealed secret copied onto another row (another id, or a more powerful
    principal) does not unseal (core/ports/secrets.py).
    """
    return b"\x00".join(
        (b"hsmstore:access-key:v1", access_key_id.encode(), tenant.encode(), principal.encode())
    )
