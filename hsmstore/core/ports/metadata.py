"""The metadata store port: keys, versions, aliases, tags and the token-object bookkeeping.

``store/`` implements it on SQLite and PostgreSQL; ``tests/fakes/store.py`` in
memory; ``tests/contract/test_metadata_store.py`` holds both to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from hsmstore.core.model import (
    AliasRecord,
    DestructionRecord,
    KeyRecord,
    KeyState,
    KeyVersion,
    PendingCreation,
    WrappedMaterial,
)
from hsmstore.core.ports.key_imports import KeyImportRecords
from hsmstore.core.ports.metadata_changes import MetadataChanges
from hsmstore.core.ports.wrapped_keys import DomainKeyRecords, InvocationLeases, MaterialChanges


@dataclass(frozen=True)
class KnownTokenIds:
    """What a metadata DB knows of some token ids (:meth:`MetadataStore.known_token_ids`)."""

    in_use: frozenset[bytes]  # a version row that is not given up names it
    abandoned: frozenset[bytes]  # given up by this DB, and not in use


@dataclass(frozen=True)
class AbandonedTokenObject:
    """A tombstone: a token object this DB gave up on when it deleted its version row."""

    token_id: bytes
    key_id: str
    version: int
    abandoned_at: datetime


class KeyRecords(Protocol):
    """Keys and their versions: creation, lookup, state. Each call is one transaction."""

    def insert_creating_key(self, key: KeyRecord, version: KeyVersion, policy: str | None = None) -> None:
        """Insert a key in state CREATING with its first version PENDING, and its key policy.

        ``policy`` None stores none: the service then answers the default key policy.
        """

    def insert_wrapped_key(
        self,
        key: KeyRecord,
        version: KeyVersion,
        policy: str | None = None,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """Insert an ENABLED key, its ACTIVE ``WRAPPED`` first version with its blob, its key policy
        and ``audit``'s record, in one transaction (issue 18).

        Wrapping leaves nothing on the token, so a wrapped key needs no CREATING row for recovery
        to roll back: a crash before this commit leaves nothing anywhere, after it a whole key.
        False, with nothing written, if the blob's domain key no longer wraps (it is being
        destroyed) or is another key store's. Raises ``AlreadyExistsException`` if the key id
        or the token id is taken, ``ValueError`` for anything but such a key and version.
        """
        ...

    def finish_creating_key(
        self,
        key_id: str,
        *,
        audit: Mapping[str, Any] | None = None,
        state: KeyState = KeyState.ENABLED,
        wrapped: WrappedMaterial | None = None,
    ) -> bool:
        """CREATING -> ``state`` (ENABLED, or PENDING_IMPORT for an EXTERNAL key: issue 22, its
        version row names the CKA_ID the material will be imported under) and its versions
        PENDING -> ACTIVE, atomically.

        ``wrapped`` (issue 18): the blob of the key's one PENDING ``WRAPPED`` version, stored in
        the same transaction under the rules of ``DomainKeyRecords.set_wrapped_material``; if it
        cannot be stored (its domain key is being destroyed), nothing changes and the answer is
        False, so the key is rolled back.

        ``audit`` (on every write that completes a management change): the
        call's audit record, appended to the chain in the same transaction as
        the change and only if the change happened.

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

    def delete_key(self, key_id: str, *, abandoned_at: datetime | None = None) -> None:
        """Remove a key, its versions and its aliases.

        With ``abandoned_at``, the token id of every version row deleted is
        recorded as abandoned (:meth:`known_token_ids`) in the same transaction.
        """

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Any tenant's key by id; the service checks the tenant."""
        ...

    def get_version(self, key_id: str, version: int) -> KeyVersion | None: ...

    def list_versions(self, key_id: str) -> Sequence[KeyVersion]: ...

    def set_public_key(self, key_id: str, version: int, public_key: bytes) -> bool:
        """Record the DER SubjectPublicKeyInfo of a PENDING version (issue 23: an RSA or EC key pair's,
        as the token answered it); False if that version is not PENDING. Never changed once ACTIVE."""
        ...

    def get_public_key(self, key_id: str, version: int) -> bytes | None:
        """The version's public key; None for a symmetric or HMAC version or a missing one."""
        ...

    def list_keys(self, tenant: str, limit: int, after_key_id: str | None) -> Sequence[KeyRecord]:
        """Keys of a tenant ordered by key_id, excluding CREATING and FAILED ones."""
        ...

    def count_keys_by_state(self) -> Mapping[KeyState, int]:
        """How many keys of all tenants are in each state; a state no key is in may be left out.

        Issue 16: "key counts by state" for the metrics; one aggregate query, never a key list.
        """
        ...

    def count_customer_keys(self, tenant: str) -> int:
        """How many customer managed keys the tenant has, in any state (its key quota, core/quotas.py)."""
        ...

    def update_key_state(
        self, key_id: str, expected: KeyState, new_state: KeyState, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """Compare-and-set of the key state; False if it was not ``expected``."""
        ...

    def update_description(
        self, key_id: str, description: str, *, audit: Mapping[str, Any] | None = None
    ) -> None: ...

    # -- scheduled deletion --------------------------------------------


class KeyDeletions(Protocol):
    """Scheduled deletion and the reaper's crash-safe destruction records."""

    def schedule_deletion(
        self,
        key_id: str,
        expected: KeyState,
        deletion_date: datetime,
        pending_window_days: int,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """CAS ``expected`` -> PENDING_DELETION, setting the deletion date and window."""
        ...

    def cancel_deletion(self, key_id: str, *, audit: Mapping[str, Any] | None = None) -> bool:
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


class KeyRotations(Protocol):
    """Rotation schedules and the crash-safe making of version n+1."""

    def set_rotation(
        self,
        key_id: str,
        period_days: int | None,
        next_rotation_date: datetime | None,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        """Turn automatic rotation on (a period and a date) or off (None, None)."""

    def insert_pending_version(self, version: KeyVersion, max_on_demand_rotations: int) -> bool:
        """Insert a PENDING version; False if that version number is taken (a rotation is running).

        Raises ``errors.LimitExceededException`` if an ON_DEMAND version would
        exceed ``max_on_demand_rotations`` for the key.
        """
        ...

    def finish_rotation(
        self,
        key_id: str,
        version: int,
        token_id: bytes,
        next_rotation_date: datetime | None,
        *,
        audit: Mapping[str, Any] | None = None,
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

    def delete_version(
        self, key_id: str, version: int, token_id: bytes, *, abandoned_at: datetime | None = None
    ) -> None:
        """Remove that version row if it is not ACTIVE (an ACTIVE one is never deleted here).

        With ``abandoned_at``, a deleted row's token id is recorded as abandoned
        in the same transaction (none is recorded when nothing was deleted).
        """

    def list_pending_versions(self, created_before: datetime) -> Sequence[KeyVersion]:
        """PENDING versions older than the given time and every ABANDONED one (interrupted rotations)."""
        ...

    def list_due_rotations(self, now: datetime, limit: int) -> Sequence[KeyRecord]:
        """ENABLED keys whose next automatic rotation date has passed."""
        ...

    # -- abandoned token objects (the junk sweep) -------------------------


class TokenObjectTombstones(Protocol):
    """What the junk sweep asks: which token ids this DB uses, and which it gave up."""

    def known_token_ids(self, token_ids: Sequence[bytes]) -> KnownTokenIds:
        """Which of these token ids this DB uses, and which it gave up on.

        Abandoned: a tombstone (``delete_key``/``delete_version`` with
        ``abandoned_at``), an ABANDONED version, or a version of a FAILED key.
        A version row that is none of those wins over a tombstone. An id in
        neither set is one this DB does not know.
        """
        ...

    def list_abandoned_token_objects(
        self, abandoned_before: datetime, limit: int
    ) -> Sequence[AbandonedTokenObject]:
        """Tombstones written before ``abandoned_before``, oldest first."""
        ...

    def forget_abandoned_token_objects(self, token_ids: Sequence[bytes]) -> None:
        """Delete these tombstones (their objects are destroyed or confirmed absent)."""

    def prune_abandoned_token_objects(self, abandoned_before: datetime) -> int:
        """Delete every tombstone written before ``abandoned_before``; how many went."""
        ...

    # -- tags ---------------------------------------------------------------


class KeyTags(Protocol):
    def put_tags(
        self, key_id: str, tags: Mapping[str, str], max_tags: int, *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Add or overwrite tags; ``errors.LimitExceededException`` past ``max_tags``."""

    def remove_tags(
        self, key_id: str, tag_keys: Sequence[str], *, audit: Mapping[str, Any] | None = None
    ) -> None: ...

    def list_tags(self, key_id: str) -> Mapping[str, str]:
        """The key's tags ordered by tag key."""
        ...


class KeyAliases(Protocol):
    def create_alias(self, alias: AliasRecord, *, audit: Mapping[str, Any] | None = None) -> None:
        """Raise ``errors.AlreadyExistsException`` if the tenant has that name."""

    def update_alias(
        self,
        tenant: str,
        alias_name: str,
        target_key_id: str,
        now: datetime,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """Point an alias at another key; False if the alias does not exist."""
        ...

    def delete_alias(
        self, tenant: str, alias_name: str, *, audit: Mapping[str, Any] | None = None
    ) -> bool: ...

    def get_alias(self, tenant: str, alias_name: str) -> AliasRecord | None: ...

    def count_aliases_of_key(self, key_id: str) -> int:
        """How many aliases point at the key (its alias quota, core/quotas.py)."""
        ...

    def list_aliases(
        self, tenant: str, limit: int, after_alias_name: str | None, key_id: str | None
    ) -> Sequence[AliasRecord]:
        """Aliases of a tenant ordered by name, optionally only those of one key."""
        ...


class MetadataStore(
    KeyRecords,
    KeyDeletions,
    KeyRotations,
    TokenObjectTombstones,
    KeyTags,
    KeyAliases,
    KeyImportRecords,
    DomainKeyRecords,
    InvocationLeases,
    MaterialChanges,
    MetadataChanges,
    Protocol,
):
    """Names, states and versions of keys; aliases and tags. One role per use-case family,
    so a use case can ask for the narrow one; the store implements them all."""

    def ping(self) -> None:
        """Raise if the DB does not answer."""
