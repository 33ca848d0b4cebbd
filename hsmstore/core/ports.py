"""The ports the domain core needs: a key vault, a metadata store, a clock.

The core depends on these Protocols only; ``bootstrap.py`` plugs in the
PKCS#11 vault (``hsm/``) and the SQL store (``store/``). Unit tests plug in fakes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from hsmstore.core.model import (
    AliasRecord,
    DestructionRecord,
    KeyRecord,
    KeyState,
    KeyVersion,
    PendingCreation,
)


class KeyVault(Protocol):
    """Key material on a token. Nothing here ever returns key bytes.

    ``token_id`` is the token object's CKA_ID (16 bytes). Implementations must
    be safe to call from many threads at once.
    """

    def create_key(self, token_id: bytes, label: str) -> None:
        """Generate a non-extractable AES-256 token object with this CKA_ID."""

    def encrypt(self, token_id: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """AES-256-GCM on the token; returns ``(iv, ciphertext || tag)``.

        The 12-byte IV comes from the token (its RNG, or the HSM itself).
        """
        ...

    def generate_data_key(
        self, token_id: bytes, number_of_bytes: int, aad: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """Random bytes from the token sealed under the key: ``(data_key, iv, ciphertext || tag)``.

        The same as ``generate_random`` then ``encrypt``, in one token round.
        """
        ...

    def decrypt(self, token_id: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM decrypt on the token.

        Raises ``errors.CiphertextAuthenticationFailed`` when the tag does not
        verify, ``errors.KeyUnavailableException`` when no such object exists.
        """
        ...

    def generate_random(self, number_of_bytes: int) -> bytes:
        """Random bytes from the token's RNG."""
        ...

    def destroy_key(self, token_id: bytes) -> bool:
        """C_DestroyObject every object with this CKA_ID; True if one existed."""
        ...

    def key_exists(self, token_id: bytes) -> bool:
        """Search the token (never on the request path: recovery and tests only)."""
        ...

    def ping(self) -> None:
        """Raise if the token does not answer."""


class MetadataStore(Protocol):
    """Names, states and versions of keys; aliases. Each call is one transaction."""

    def insert_creating_key(self, key: KeyRecord, version: KeyVersion) -> None:
        """Insert a key in state CREATING with its first version PENDING."""

    def finish_creating_key(self, key_id: str) -> bool:
        """CREATING -> ENABLED and its versions PENDING -> ACTIVE, atomically.

        False if the key is not CREATING any more (recovery claimed it): the
        CreateKey must then fail, never answer a key that is being rolled back.
        """
        ...

    def list_pending_creations(self, created_before: datetime) -> Sequence[PendingCreation]:
        """Keys still CREATING whose creation_date is before the given time, and every FAILED key."""
        ...

    def claim_failed_creation(self, key_id: str) -> bool:
        """CAS CREATING -> FAILED, the claim that lets recovery roll a creation back.

        True if this call claimed it or the key was FAILED already (resuming);
        False if it was finished meanwhile (ENABLED), so it must not be touched.
        """
        ...

    def delete_key(self, key_id: str) -> None:
        """Remove a key, its versions and its aliases."""

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Any tenant's key by id; the service checks the tenant."""
        ...

    def get_version(self, key_id: str, version: int) -> KeyVersion | None: ...

    def list_versions(self, key_id: str) -> Sequence[KeyVersion]: ...

    def list_keys(self, tenant: str, limit: int, after_key_id: str | None) -> Sequence[KeyRecord]:
        """Keys of a tenant ordered by key_id, excluding CREATING and FAILED ones."""
        ...

    def update_key_state(self, key_id: str, expected: KeyState, new_state: KeyState) -> bool:
        """Compare-and-set of the key state; False if it was not ``expected``."""
        ...

    def update_description(self, key_id: str, description: str) -> None: ...

    # -- scheduled deletion --------------------------------------------

    def schedule_deletion(
        self, key_id: str, expected: KeyState, deletion_date: datetime, pending_window_days: int
    ) -> bool:
        """CAS ``expected`` -> PENDING_DELETION, setting the deletion date and window."""
        ...

    def cancel_deletion(self, key_id: str) -> bool:
        """CAS PENDING_DELETION -> DISABLED, clearing the deletion date; False if not pending."""
        ...

    def list_keys_to_destroy(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        """PENDING_DELETION keys whose deletion date has passed, and every DESTROYING key."""
        ...

    def begin_destruction(self, key_id: str) -> bool:
        """CAS PENDING_DELETION -> DESTROYING and write one destruction record per version.

        Idempotent for a key already DESTROYING (returns True); False for any
        other state, so a cancelled deletion is never destroyed.
        """
        ...

    def mark_version_destroyed(self, key_id: str, version: int, destroyed_at: datetime) -> None: ...

    def list_destructions(self, key_id: str | None = None) -> Sequence[DestructionRecord]: ...

    # -- rotation ---------------------------------------------------------

    def set_rotation(self, key_id: str, period_days: int | None, next_rotation_date: datetime | None) -> None:
        """Turn automatic rotation on (a period and a date) or off (None, None)."""

    def insert_pending_version(self, version: KeyVersion, max_on_demand_rotations: int) -> bool:
        """Insert a PENDING version; False if that version number is taken (a rotation is running).

        Raises ``errors.LimitExceededException`` if an ON_DEMAND version would
        exceed ``max_on_demand_rotations`` for the key.
        """
        ...

    def finish_rotation(
        self, key_id: str, version: int, token_id: bytes, next_rotation_date: datetime | None
    ) -> bool:
        """Version PENDING -> ACTIVE and the key's current version moves to it, atomically.

        Every claim names the token object: a version number can be retried by
        another rotation after an abandoned attempt, and must not be confused.

        ``next_rotation_date`` (automatic rotations) replaces the key's; None keeps it.
        """
        ...

    def abandon_version(self, key_id: str, version: int, token_id: bytes) -> bool:
        """CAS PENDING -> ABANDONED: recovery's claim on an interrupted rotation.

        True if claimed now or already ABANDONED; False if it became ACTIVE.
        """
        ...

    def delete_version(self, key_id: str, version: int, token_id: bytes) -> None:
        """Remove that version row if it is not ACTIVE (an ACTIVE one is never deleted here)."""

    def list_pending_versions(self, created_before: datetime) -> Sequence[KeyVersion]:
        """PENDING versions older than the given time and every ABANDONED one (interrupted rotations)."""
        ...

    def list_due_rotations(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        """ENABLED keys whose next automatic rotation date has passed."""
        ...

    # -- tags ---------------------------------------------------------------

    def put_tags(self, key_id: str, tags: Mapping[str, str], max_tags: int) -> None:
        """Add or overwrite tags; ``errors.LimitExceededException`` past ``max_tags``."""

    def remove_tags(self, key_id: str, tag_keys: Sequence[str]) -> None: ...

    def list_tags(self, key_id: str) -> Mapping[str, str]:
        """The key's tags ordered by tag key."""
        ...

    def create_alias(self, alias: AliasRecord) -> None:
        """Raise ``errors.AlreadyExistsException`` if the tenant has that name."""

    def update_alias(self, tenant: str, alias_name: str, target_key_id: str, now: datetime) -> bool:
        """Point an alias at another key; False if the alias does not exist."""
        ...

    def delete_alias(self, tenant: str, alias_name: str) -> bool: ...

    def get_alias(self, tenant: str, alias_name: str) -> AliasRecord | None: ...

    def list_aliases(
        self, tenant: str, limit: int, after_alias_name: str | None, key_id: str | None
    ) -> Sequence[AliasRecord]:
        """Aliases of a tenant ordered by name, optionally only those of one key."""
        ...

    def ping(self) -> None:
        """Raise if the DB does not answer."""


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real clock, timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
