"""The in-memory ``KeyImportRecords`` (issue 22), mixed into ``FakeMetadataStore``: it shares the
store's lock, keys and audit chain, like the SQL store's one transaction per call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from hsmstore import errors
from hsmstore.core.model import ExpirationModel, KeyRecord, KeyState
from hsmstore.core.ports.key_imports import ImportParametersRecord

_WITH_MATERIAL = (KeyState.ENABLED, KeyState.DISABLED, KeyState.PENDING_DELETION)


class FakeKeyImportRecords:
    _lock: threading.Lock
    _keys: dict[str, KeyRecord]
    _audit_change: Callable[[Mapping[str, Any] | None], None]

    def _import_state(
        self,
    ) -> tuple[dict[bytes, ImportParametersRecord], dict[str, tuple[str, datetime]], dict[str, bytes]]:
        if not hasattr(self, "_import_parameters"):
            self._import_parameters: dict[bytes, ImportParametersRecord] = {}
            self._import_claims: dict[str, tuple[str, datetime]] = {}
            self._key_check_values: dict[str, bytes] = {}
        return self._import_parameters, self._import_claims, self._key_check_values

    def insert_import_parameters(self, record: ImportParametersRecord) -> None:
        with self._lock:
            parameters, _, _ = self._import_state()
            if record.wrapping_token_id in parameters or any(
                p.token_hash == record.token_hash for p in parameters.values()
            ):
                raise errors.AlreadyExistsException("the wrapping key id or the import token already exists")
            parameters[record.wrapping_token_id] = record

    def set_import_public_key(self, wrapping_token_id: bytes, public_key: bytes) -> bool:
        with self._lock:
            parameters, _, _ = self._import_state()
            record = parameters.get(wrapping_token_id)
            if record is None:
                return False
            parameters[wrapping_token_id] = replace(record, public_key=public_key)
            return True

    def find_import_parameters(self, token_hash: bytes) -> ImportParametersRecord | None:
        with self._lock:
            parameters, _, _ = self._import_state()
            return next((p for p in parameters.values() if p.token_hash == token_hash), None)

    def list_expired_import_parameters(self, now: datetime, limit: int) -> Sequence[ImportParametersRecord]:
        with self._lock:
            parameters, _, _ = self._import_state()
            expired = sorted((p for p in parameters.values() if p.valid_to < now), key=lambda p: p.valid_to)
            return expired[:limit]

    def delete_import_parameters(self, wrapping_token_id: bytes) -> None:
        with self._lock:
            parameters, _, _ = self._import_state()
            parameters.pop(wrapping_token_id, None)

    def claim_import(self, key_id: str, claim: str, now: datetime, stale_before: datetime) -> bool:
        with self._lock:
            _, claims, _ = self._import_state()
            if key_id not in self._keys:
                return False
            held = claims.get(key_id)
            if held is not None and held[1] >= stale_before:
                return False
            claims[key_id] = (claim, now)
            return True

    def release_import_claim(self, key_id: str, claim: str) -> None:
        with self._lock:
            _, claims, _ = self._import_state()
            if claims.get(key_id, ("",))[0] == claim:
                claims.pop(key_id)

    def get_key_check_value(self, key_id: str) -> bytes | None:
        with self._lock:
            return self._import_state()[2].get(key_id)

    def finish_import(
        self,
        key_id: str,
        claim: str,
        expected: KeyState,
        new_state: KeyState,
        key_check_value: bytes,
        valid_to: datetime | None,
        expiration_model: ExpirationModel,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        with self._lock:
            _, claims, kcvs = self._import_state()
            key = self._keys.get(key_id)
            if key is None or key.state is not expected or claims.get(key_id, ("",))[0] != claim:
                return False
            if kcvs.get(key_id, key_check_value) != key_check_value:
                return False
            self._keys[key_id] = replace(
                key, state=new_state, valid_to=valid_to, expiration_model=expiration_model
            )
            kcvs[key_id] = key_check_value
            claims.pop(key_id)
            self._audit_change(audit)
            return True

    def delete_imported_material(
        self,
        key_id: str,
        expected: KeyState,
        new_state: KeyState,
        *,
        expired_before: datetime | None = None,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.state is not expected:
                return False
            if expired_before is not None and (key.valid_to is None or key.valid_to >= expired_before):
                return False
            self._keys[key_id] = replace(key, state=new_state, valid_to=None, expiration_model=None)
            self._audit_change(audit)
            return True

    def list_keys_with_expired_material(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        with self._lock:
            expired = [
                key
                for key in self._keys.values()
                if key.valid_to is not None
                and key.valid_to < now
                and key.expiration_model is ExpirationModel.KEY_MATERIAL_EXPIRES
                and key.state in _WITH_MATERIAL
            ]
            return sorted(expired, key=lambda key: key.valid_to or now)[:limit]
