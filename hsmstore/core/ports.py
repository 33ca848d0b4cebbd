"""The ports the domain core needs: a key vault, a metadata store, a clock.

The core depends on these Protocols only; ``bootstrap.py`` plugs in the
PKCS#11 vault (``hsm/``) and the SQL store (``store/``). Unit tests plug in fakes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from hsmstore.core.audit import SerializedRecord, StoredAuditEvent
from hsmstore.core.grants import GrantRecord
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

    def list_key_versions(self) -> Sequence[tuple[bytes, str]]:
        """``(token_id, label)`` of every key version object on the token.

        A full scan of the token: for the periodic junk-object sweep only.
        """
        ...

    def audit_seal(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` with the token's audit seal key (made on first use,
        non-extractable, SIGN/VERIFY only), for sealing the audit chain head."""
        ...

    def verify_audit_seal(self, data: bytes, mac: bytes) -> bool:
        """Check an audit seal on the token (C_Verify with the same key)."""
        ...


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


class MetadataStore(Protocol):
    """Names, states and versions of keys; aliases. Each call is one transaction."""

    def insert_creating_key(self, key: KeyRecord, version: KeyVersion, policy: str | None = None) -> None:
        """Insert a key in state CREATING with its first version PENDING, and its key policy.

        ``policy`` None stores none: the service then answers the default key policy.
        """

    def finish_creating_key(self, key_id: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        """CREATING -> ENABLED and its versions PENDING -> ACTIVE, atomically.

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

    def list_keys(self, tenant: str, limit: int, after_key_id: str | None) -> Sequence[KeyRecord]:
        """Keys of a tenant ordered by key_id, excluding CREATING and FAILED ones."""
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

    def list_aliases(
        self, tenant: str, limit: int, after_alias_name: str | None, key_id: str | None
    ) -> Sequence[AliasRecord]:
        """Aliases of a tenant ordered by name, optionally only those of one key."""
        ...

    def ping(self) -> None:
        """Raise if the DB does not answer."""


@dataclass(frozen=True)
class IdentityPolicyRecord:
    """A named identity policy attached to one principal of a tenant."""

    tenant: str
    principal: str
    policy_name: str
    document: str
    last_updated: datetime


class AuthorizationStore(Protocol):
    """Key policies, grants and identity policies. Each call is one transaction.

    ``audit=`` as on MetadataStore: the change's record commits with the change.
    """

    def get_key_policy(self, key_id: str) -> str | None:
        """The key's stored policy document; None if none was stored (keys made before 0004)."""
        ...

    def put_key_policy(
        self,
        key_id: str,
        policy_name: str,
        document: str,
        now: datetime,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace the key's policy; ``NotFoundException`` if the key is gone."""

    def create_grant(self, grant: GrantRecord, *, audit: Mapping[str, Any] | None = None) -> GrantRecord:
        """Insert a grant, or answer the existing one when a grant of that key has the same
        name and identical parameters (AWS: "CreateGrant ... is idempotent" for a named grant).

        ``NotFoundException`` if the key is gone.
        """
        ...

    def get_grant(self, grant_id: str) -> GrantRecord | None: ...

    def list_grants(
        self,
        key_id: str,
        limit: int,
        after_grant_id: str | None,
        grant_id: str | None = None,
        grantee_principal: str | None = None,
    ) -> Sequence[GrantRecord]:
        """Grants of a key by grant id (keyset paging), optionally filtered."""
        ...

    def list_retirable_grants(
        self, retiring_principal: str, limit: int, after_grant_id: str | None
    ) -> Sequence[GrantRecord]:
        """Grants of any key whose retiring principal is this one, by grant id."""
        ...

    def delete_grant(self, grant_id: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        """Retire or revoke: False if no such grant."""
        ...

    def identity_policies_of(self, tenant: str, principal: str) -> Sequence[IdentityPolicyRecord]:
        """Every identity policy attached to the principal, by name."""
        ...

    def put_identity_policy(
        self, record: IdentityPolicyRecord, *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Create or replace by (tenant, principal, policy_name)."""

    def delete_identity_policy(
        self, tenant: str, principal: str, policy_name: str, *, audit: Mapping[str, Any] | None = None
    ) -> bool: ...

    def list_identity_policies(
        self, tenant: str, limit: int, after: tuple[str, str] | None, principal: str | None = None
    ) -> Sequence[IdentityPolicyRecord]:
        """A tenant's identity policies ordered by (principal, policy_name), keyset paged."""
        ...


@dataclass(frozen=True)
class AuditQuery:
    """LookupEvents filters (CloudTrail's lookup attributes), always within one tenant."""

    tenant: str
    limit: int
    before: tuple[datetime, int] | None = None  # (event_time, seq) of the last event already seen
    event_name: str | None = None
    principal: str | None = None
    key_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class AuditSeal:
    """An HMAC, made on the token, over the chain head (seq, hash) at a moment."""

    seq: int
    hash: bytes
    sealed_at: datetime
    mac: bytes


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real clock, timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class AuditSink(Protocol):
    """Where the transport puts a call's record before it answers (core/audit.py)."""

    def record(self, record: Mapping[str, Any]) -> None:
        """Return only once the record is durable or queued so that it survives a crash
        of this process; raise if it cannot be."""


class AuditLog(Protocol):
    """The audit trail in the metadata DB: one hash chain for every process (core/audit.py).

    Appending takes the chain head under a lock (SQLite: BEGIN IMMEDIATE;
    PostgreSQL: SELECT ... FOR UPDATE of the head row), so several processes and
    nodes appending at once still make one verifiable chain.
    """

    def append_audit_records(
        self,
        records: Sequence[Mapping[str, Any] | SerializedRecord],
        spool_position: tuple[str, int] | None = None,
    ) -> list[int]:
        """Append records in order, in one transaction; returns their seq numbers.

        ``spool_position`` (spool name, byte offset after these records) is
        stored in the same transaction, so a spool line is ingested exactly once.
        """
        ...

    def spool_offset(self, spool_name: str) -> int:
        """How far a spool has been ingested (0 for a new one)."""
        ...

    def lookup_audit_events(self, query: AuditQuery) -> Sequence[StoredAuditEvent]:
        """Newest first by event time, then seq (CloudTrail's order); at most ``query.limit``,
        strictly after ``query.before`` in that order."""
        ...

    def iter_audit_events(self, after_seq: int = 0) -> Iterator[StoredAuditEvent]:
        """Every event with seq > after_seq in seq order (verify, export); reads in batches."""
        ...

    def last_key_usage(self, key_id: str) -> Sequence[tuple[int | None, StoredAuditEvent]]:
        """The newest successful cryptographic event of the key overall (version None) and per version."""
        ...

    def audit_anchor(self) -> tuple[int, bytes]:
        """(seq, hash) the chain continues from: (0, genesis) until retention purged a prefix."""
        ...

    def add_audit_seal(self, seal: AuditSeal) -> None: ...

    def list_audit_seals(self) -> Sequence[AuditSeal]: ...

    def purge_audit_before(self, cutoff: datetime) -> int:
        """Delete events older than ``cutoff`` and move the anchor to the last one deleted.

        The remaining chain still verifies from the anchor. Returns how many went.
        """
        ...
