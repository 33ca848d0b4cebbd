"""The metadata store's part of imported key material (issue 22): import parameters and the
crash-safe import of material into an EXTERNAL key.

``store/imports_sql.py`` implements it on SQLite and PostgreSQL, ``tests/fakes/store.py`` in
memory; ``tests/contract/test_key_import_records.py`` holds both to it. Nothing here holds key
material or an import token in clear: a token is kept as its SHA-256 only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from hsmstore.core.model import ExpirationModel, KeyRecord, KeyState


@dataclass(frozen=True)
class ImportParametersRecord:
    """One GetParametersForImport: the RSA wrapping key on the key's token and the token's hash.

    ``public_key`` is None between the row and the token step (a crash there leaves a row whose
    object, if any, the expired-parameters job destroys). ``token_hash``: SHA-256 of the import
    token, so a DB reader cannot import with it.
    """

    wrapping_token_id: bytes
    key_id: str
    key_store_id: str
    token_hash: bytes
    wrapping_algorithm: str
    wrapping_key_spec: str
    created_at: datetime
    valid_to: datetime
    public_key: bytes | None = None


class KeyImportRecords(Protocol):
    """Import parameters and the import claim; each call is one transaction."""

    def insert_import_parameters(self, record: ImportParametersRecord) -> None:
        """Insert the row (``public_key`` None) before the wrapping key is made on the token."""

    def set_import_public_key(self, wrapping_token_id: bytes, public_key: bytes) -> bool:
        """Record the wrapping key's public key; False if the row is gone (the job deleted it)."""
        ...

    def find_import_parameters(self, token_hash: bytes) -> ImportParametersRecord | None:
        """The parameters an import token names, by its SHA-256; None for an unknown token."""
        ...

    def list_expired_import_parameters(self, now: datetime, limit: int) -> Sequence[ImportParametersRecord]:
        """Rows whose valid_to is before ``now``, oldest first (the job destroys their objects)."""
        ...

    def delete_import_parameters(self, wrapping_token_id: bytes) -> None:
        """Remove one row (its object is destroyed already)."""

    def claim_import(self, key_id: str, claim: str, now: datetime, stale_before: datetime) -> bool:
        """Take the key's import claim (one import at a time per key, across nodes): True if the
        key had none, or one older than ``stale_before`` (a crashed import)."""
        ...

    def release_import_claim(self, key_id: str, claim: str) -> None:
        """Drop the claim if it is still ``claim``."""

    def get_key_check_value(self, key_id: str) -> bytes | None:
        """The key check value of the material first imported into the key; None before that."""
        ...

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
        """CAS ``expected`` -> ``new_state`` while holding ``claim``: the material's validity set,
        the key check value stored if the key had none, the claim dropped, the record appended.
        False (nothing changed) if the state or the claim is not what the caller holds."""
        ...

    def delete_imported_material(
        self,
        key_id: str,
        expected: KeyState,
        new_state: KeyState,
        *,
        expired_before: datetime | None = None,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """CAS ``expected`` -> ``new_state`` with the material's validity cleared (the key check
        value is kept: a re-import must bring the same material). With ``expired_before``, only
        if the material's valid_to is before it (the expiry job). False if nothing changed."""
        ...

    def list_keys_with_expired_material(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        """Keys (Enabled, Disabled or PendingDeletion) whose KEY_MATERIAL_EXPIRES material has a
        valid_to before ``now``."""
        ...
