"""In-memory access key records and a secret sealer (AES-GCM with a key in memory), for unit tests."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmstore import errors
from hsmstore.core.access_keys_model import AccessKeyRecord, AccessKeyStatus


class FakeAccessKeyRecords:
    """The AccessKeyRecords port in a dict; the contract test holds it to the SQL one."""

    def __init__(self) -> None:
        self._rows: dict[str, AccessKeyRecord] = {}
        self._lock = threading.Lock()
        self.lookups = 0
        self.audit_records: list[dict[str, Any]] = []  # the records changes were committed with

    def insert_access_key(self, record: AccessKeyRecord, *, audit: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            if record.access_key_id in self._rows:
                raise errors.AlreadyExistsException(f"access key {record.access_key_id} exists")
            self._rows[record.access_key_id] = record
            if audit is not None:
                self.audit_records.append(dict(audit))

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None:
        self.lookups += 1
        return self._rows.get(access_key_id)

    def list_access_keys(self, tenant: str | None, principal: str | None) -> Sequence[AccessKeyRecord]:
        rows = [
            row
            for row in self._rows.values()
            if (tenant is None or row.tenant == tenant) and (principal is None or row.principal == principal)
        ]
        return sorted(rows, key=lambda row: (row.tenant, row.principal, row.access_key_id))

    def set_access_key_status(
        self, access_key_id: str, status: AccessKeyStatus, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        with self._lock:
            row = self._rows.get(access_key_id)
            if row is None:
                return False
            if row.status is AccessKeyStatus.REVOKED:  # revoked for good
                return status is AccessKeyStatus.REVOKED
            self._rows[access_key_id] = replace(row, status=status)
            if audit is not None:
                self.audit_records.append(dict(audit))
            return True

    def note_access_key_used(self, access_key_id: str, when: datetime) -> None:
        with self._lock:
            row = self._rows.get(access_key_id)
            if row is not None:
                self._rows[access_key_id] = replace(row, last_used=when)


class FakeSecretSealer:
    """The SecretSealer port with an in-memory AES-256-GCM key (the real one is on the token)."""

    def __init__(self) -> None:
        self._key = AESGCM(AESGCM.generate_key(bit_length=256))
        self.unseals = 0

    def seal(self, secret: bytes, context: bytes) -> bytes:
        iv = os.urandom(12)
        return b"\x01" + iv + self._key.encrypt(iv, secret, b"\x01" + context)

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        self.unseals += 1
        try:
            return self._key.decrypt(sealed[1:13], sealed[13:], b"\x01" + context)
        except (InvalidTag, ValueError):
            raise errors.KMSInternalException("a sealed secret does not verify") from None
