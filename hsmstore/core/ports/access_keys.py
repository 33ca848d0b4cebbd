"""The access key records port (issue 19): SigV4 access keys mapped to hsmstore principals.

``store/access_keys_sql.py`` implements it on SQLite and PostgreSQL (migration
0009), ``tests/fakes/access_keys.py`` in memory. The secret is held only
sealed (core/ports/secrets.py); nothing here ever sees it in clear. A change
given ``audit=`` appends that record to the audit chain in the same
transaction (like the key records, core/ports/metadata.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from hsmstore.core.access_keys_model import AccessKeyRecord, AccessKeyStatus


class AccessKeyRecords(Protocol):
    def insert_access_key(self, record: AccessKeyRecord, *, audit: Mapping[str, Any] | None = None) -> None:
        """Store a new key; ``errors.AlreadyExistsException`` if its id is taken."""
        ...

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None:
        """By id, any status; None if there is none."""
        ...

    def list_access_keys(self, tenant: str | None, principal: str | None) -> Sequence[AccessKeyRecord]:
        """Every key (of ``tenant`` and ``principal`` when given), ordered by (tenant, principal, id)."""
        ...

    def set_access_key_status(
        self, access_key_id: str, status: AccessKeyStatus, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """Change a key's status; False if there is no such key."""
        ...

    def note_access_key_used(self, access_key_id: str, when: datetime) -> None:
        """Record ``when`` as the key's last use (best effort, may be coarse)."""
        ...
