"""The ports of the ``wrapped`` key residency (issue 18; docs/residency.md).

A ``wrapped`` key store keeps no token object per key version: each version's
AES-256 material is made on the token as a session object, wrapped (RFC 5649)
under a token-resident *domain key*, and kept in the metadata DB as that blob.
To use it, the token unwraps it into a session object of the working session,
which a bounded per-process cache keeps until eviction or until the version may
no longer be used.

Two sides:

* :class:`WrappedKeys` -- what a key store does on its token: domain keys,
  wrapping new material, re-wrapping, releasing cached session objects.
  ``hsm/wrapped_keys.py`` implements it for the PKCS#11 vault.
* :class:`DomainKeyRecords`, :class:`InvocationLeases`, :class:`MaterialChanges`
  -- what the metadata DB keeps: domain keys and their states, the re-wrap
  claims, the AES-GCM usage leases and the feed of changes that make cached
  material unusable. ``store/domain_keys_sql.py`` and ``store/usage_sql.py``
  implement them on SQLite and PostgreSQL, ``tests/fakes/store.py`` in memory.

Encrypt, decrypt and data keys take a ``WRAPPED`` :class:`KeyMaterialRef`
through the same ports as token objects (``SymmetricEncryption``); only making,
re-wrapping and releasing material is here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from hsmstore.core.model import DomainKey, KeyMaterialRef, KeyVersion, WrappedMaterial


@runtime_checkable
class WrappedKeys(Protocol):
    """The token side of the ``wrapped`` residency. Safe from many threads at once."""

    @property
    def wrap_mechanism(self) -> str:
        """The profile's name of the RFC 5649 wrap new blobs are made with."""
        ...

    def create_domain_key(self, domain_key_id: str) -> None:
        """C_GenerateKey of a token AES-256 key: PRIVATE, SENSITIVE, never extractable, WRAP and
        UNWRAP only, labelled and identified by ``domain_key_id``. Adopts an existing object with
        that id (a retry after a fault) rather than making a twin."""

    def destroy_domain_key(self, domain_key_id: str) -> bool:
        """Release every session object unwrapped under it, then C_DestroyObject the domain key;
        True if an object existed (a rescan decides "absent", as ``destroy_key`` does)."""
        ...

    def domain_key_exists(self, domain_key_id: str) -> bool:
        """Search the token for the domain key (recovery and tests only)."""
        ...

    def create_wrapped_key(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        """New AES-256 material as a session object, wrapped under the domain key; the session
        object is destroyed before this returns, whatever happens. Nothing stays on the token.
        ``material`` is the PENDING version's reference (its handle is the version's token id)."""
        ...

    def rewrap(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        """The same material wrapped under another domain key: unwrapped from ``material.wrapped``
        into a transient session object, wrapped under ``domain_key_id``, destroyed. A blob that
        does not unwrap raises ``KeyUnavailableException``."""
        ...

    def release(self, token_ids: Collection[bytes]) -> None:
        """Destroy the cached session objects of these versions (a key disabled, scheduled for
        deletion, destroyed ...), if this process holds any. Unknown ids are ignored."""

    def release_domain_key(self, domain_key_id: str) -> None:
        """Destroy every cached session object unwrapped under this domain key and forget its
        handle: it is being retired (its blobs were re-wrapped elsewhere)."""

    def cached_material_count(self) -> int:
        """Session objects this process holds now (metrics, tests)."""
        ...


class DomainKeyRecords(Protocol):
    """Domain keys and the re-wrap of the versions under them; each call is one transaction."""

    def insert_domain_key(self, key: DomainKey) -> None:
        """Insert a PENDING domain key, before its token object is made."""

    def activate_domain_key(self, domain_key_id: str, now: datetime, *, replacing: str | None) -> bool:
        """PENDING -> ACTIVE, and the key store's previous ACTIVE key (if any) -> RETIRING with
        ``retiring_since = now``, atomically. A compare-and-set: False, and nothing changed, if the
        row is not PENDING or the store's ACTIVE key is no longer ``replacing`` (None: no ACTIVE
        key), so two processes that both saw the same ACTIVE key (or none) and both made a
        successor cannot retire each other's: one activates, the other rolls back."""
        ...

    def delete_pending_domain_key(self, domain_key_id: str) -> bool:
        """Remove a PENDING row (recovery of an interrupted creation, after its object went)."""
        ...

    def list_domain_keys(self, key_store_id: str | None = None) -> Sequence[DomainKey]:
        """Every domain key row (few: one ACTIVE per store plus those being retired), oldest first."""
        ...

    def set_wrapped_material(
        self, key_id: str, version: int, token_id: bytes, wrapped: WrappedMaterial
    ) -> bool:
        """Store a PENDING ``WRAPPED`` version's blob (creation and rotation, before they finish).

        False if the version row is gone or not PENDING, or the blob's domain key is neither
        ACTIVE nor RETIRING (it is being destroyed: the caller rolls back)."""
        ...

    def claim_rewrap_batch(
        self, domain_key_id: str, claimant: str, now: datetime, claim_until: datetime, limit: int
    ) -> Sequence[KeyVersion]:
        """Claim up to ``limit`` versions still wrapped under ``domain_key_id`` whose claim is
        absent or expired (before ``now``), for ``claimant`` until ``claim_until``; return them.
        Two claimants never get the same row while a claim runs (PostgreSQL: SKIP LOCKED)."""
        ...

    def finish_rewrap(
        self, key_id: str, version: int, old_domain_key_id: str, claimant: str, wrapped: WrappedMaterial
    ) -> bool:
        """CAS: the row still under ``old_domain_key_id`` and claimed by ``claimant`` gets the new
        blob and loses the claim. False (and no change) otherwise: another claimant did it."""
        ...

    def count_wrapped_under(self, domain_key_id: str) -> int:
        """Version rows (any state) whose blob is wrapped under the domain key."""
        ...

    def begin_domain_key_destruction(self, domain_key_id: str, now: datetime) -> bool:
        """RETIRING -> DESTROYING (``destroying_since = now``) if no version row references it,
        atomically with that count (no blob can be stored under it afterwards)."""
        ...

    def mark_domain_key_destroyed(self, domain_key_id: str, now: datetime) -> bool:
        """DESTROYING -> DESTROYED with ``destroyed_at = now``, after its token object is gone;
        destruction records of versions wrapped under it show this time."""
        ...


class InvocationLeases(Protocol):
    """The AES-GCM usage limit (NIST SP 800-38D §8.3), counted in leased blocks."""

    def lease_invocations(self, key_id: str, version: int, wanted: int, limit: int) -> int:
        """Lease up to ``wanted`` encryptions under the version without passing ``limit`` in
        total across every process and node; return how many were granted (0: exhausted)."""
        ...

    def reserve_first_uses(self, per_version: int) -> int:
        """Add ``per_version`` to the first uses reserved so far, in one write, and return ``T``,
        the total before. A new version row records the total at its insert
        (``KeyVersion.reservations_at_creation``); keys/usage_limit.py decides what a reservation
        allows (migration 0015)."""
        ...

    def leased_invocations(self, key_id: str, version: int) -> int:
        """Encryptions leased so far under the version (tests, status)."""
        ...


class MaterialChanges(Protocol):
    """A feed of changes that may make cached version material unusable: a key's state changed,
    a version changed or was deleted. Written by the DB itself (triggers), so no code path is
    missed."""

    def material_changes_after(self, after_id: int, limit: int) -> Sequence[tuple[int, bytes]]:
        """``(change id, version token id)`` of changes with an id above ``after_id``, by id.
        Ids are increasing but may commit out of order (PostgreSQL sequences): callers re-read
        a window below the highest id they saw."""
        ...

    def latest_material_change_id(self) -> int:
        """The highest change id now (0 when none): where a process starts following."""
        ...

    def prune_material_changes(self, before: datetime) -> int:
        """Delete changes recorded before ``before``; how many went."""
        ...
