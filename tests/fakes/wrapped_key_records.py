"""The in-memory ``DomainKeyRecords``, ``InvocationLeases`` and ``MaterialChanges`` (issue 18),
mixed into ``FakeMetadataStore``: they share the store's lock, keys and versions, like the SQL
store's one transaction per call (store/domain_keys_sql.py, store/usage_sql.py).

The SQL feed is written by triggers (migration 0012), so every write path reaches it; here the
store's key and version dicts are :class:`KeyRows` and :class:`VersionRows`, which record the same
changes whenever anything assigns or removes a row.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from hsmstore import errors
from hsmstore.core.model import (
    DomainKey,
    DomainKeyState,
    KeyRecord,
    KeyState,
    KeyVersion,
    Residency,
    VersionState,
    WrappedMaterial,
)

_WRAPPING_STATES = (DomainKeyState.ACTIVE, DomainKeyState.RETIRING)

VersionId = tuple[str, int]


@dataclass
class MaterialFeed:
    """``material_changes``: (change id, token id, changed at), ids never reused."""

    rows: list[tuple[int, bytes, datetime]] = field(default_factory=list)
    last_id: int = 0

    def record(self, token_id: bytes) -> None:
        self.last_id += 1
        self.rows.append((self.last_id, token_id, datetime.now(UTC)))


class VersionRows(dict[VersionId, KeyVersion]):
    """The version rows, with migration 0012's triggers on ``key_versions``: a state change (not
    from PENDING) and a removal each record the version's token id."""

    def __init__(self, feed: MaterialFeed) -> None:
        super().__init__()
        self._feed = feed

    def __setitem__(self, version_id: VersionId, version: KeyVersion) -> None:
        old = self.get(version_id)
        super().__setitem__(version_id, version)
        if old is not None and old.state is not version.state and old.state is not VersionState.PENDING:
            self._feed.record(old.token_id)

    def __delitem__(self, version_id: VersionId) -> None:
        old = self[version_id]
        super().__delitem__(version_id)
        self._feed.record(old.token_id)

    def pop(self, version_id: VersionId, *default: Any) -> Any:
        if version_id in self:
            old = self[version_id]
            del self[version_id]
            return old
        return super().pop(version_id, *default)


class KeyRows(dict[str, KeyRecord]):
    """The key rows, with migration 0012's trigger on ``keys``: a state change (not from CREATING)
    records the token id of every version of the key."""

    def __init__(self, feed: MaterialFeed, versions: VersionRows) -> None:
        super().__init__()
        self._feed = feed
        self._versions = versions

    def __setitem__(self, key_id: str, key: KeyRecord) -> None:
        old = self.get(key_id)
        super().__setitem__(key_id, key)
        if old is not None and old.state is not key.state and old.state is not KeyState.CREATING:
            for version in list(self._versions.values()):
                if version.key_id == key_id:
                    self._feed.record(version.token_id)


class FakeWrappedKeyRecords:
    _lock: threading.Lock
    _versions: VersionRows
    _feed: MaterialFeed

    def _wrapped_state(
        self,
    ) -> tuple[dict[str, DomainKey], dict[bytes, tuple[str, datetime]], dict[bytes, int]]:
        """Domain keys by id; re-wrap claims and leases by the version's token id (unique per row,
        so a row removed and a version number retried start afresh, as a new SQL row does)."""
        if not hasattr(self, "_domain_keys"):
            self._domain_keys: dict[str, DomainKey] = {}
            self._rewrap_claims: dict[bytes, tuple[str, datetime]] = {}
            self._leases: dict[bytes, int] = {}
        return self._domain_keys, self._rewrap_claims, self._leases

    # -- DomainKeyRecords -----------------------------------------------------------

    def insert_domain_key(self, key: DomainKey) -> None:
        if key.state is not DomainKeyState.PENDING:
            raise ValueError(f"a new domain key must be PENDING, not {key.state}")
        key = replace(key, created_at=_utc(key.created_at))
        with self._lock:
            domain_keys, _, _ = self._wrapped_state()
            if key.domain_key_id in domain_keys:
                raise errors.AlreadyExistsException(f"domain key {key.domain_key_id} already exists")
            domain_keys[key.domain_key_id] = key

    def activate_domain_key(self, domain_key_id: str, now: datetime, *, replacing: str | None) -> bool:
        now = _utc(now)
        with self._lock:
            domain_keys, _, _ = self._wrapped_state()
            key = domain_keys.get(domain_key_id)
            if key is None or key.state is not DomainKeyState.PENDING:
                return False
            active = [
                other
                for other in domain_keys.values()
                if other.key_store_id == key.key_store_id and other.state is DomainKeyState.ACTIVE
            ]
            if [other.domain_key_id for other in active] != ([] if replacing is None else [replacing]):
                return False
            for other in active:
                domain_keys[other.domain_key_id] = replace(
                    other, state=DomainKeyState.RETIRING, retiring_since=now
                )
            domain_keys[domain_key_id] = replace(key, state=DomainKeyState.ACTIVE, activated_at=now)
            return True

    def delete_pending_domain_key(self, domain_key_id: str) -> bool:
        with self._lock:
            domain_keys, _, _ = self._wrapped_state()
            key = domain_keys.get(domain_key_id)
            if key is None or key.state is not DomainKeyState.PENDING:
                return False
            del domain_keys[domain_key_id]
            return True

    def list_domain_keys(self, key_store_id: str | None = None) -> Sequence[DomainKey]:
        with self._lock:
            domain_keys, _, _ = self._wrapped_state()
            found = [
                k for k in domain_keys.values() if key_store_id is None or k.key_store_id == key_store_id
            ]
        return sorted(found, key=lambda k: (k.created_at, k.domain_key_id))

    def set_wrapped_material(
        self, key_id: str, version: int, token_id: bytes, wrapped: WrappedMaterial
    ) -> bool:
        with self._lock:
            row = self._versions.get((key_id, version))
            if row is None or row.token_id != token_id:
                return False
            return self._store_wrapped_material(key_id, wrapped, version)

    def _store_wrapped_material(
        self, key_id: str, wrapped: WrappedMaterial, version: int | None = None
    ) -> bool:
        """The blob on the one PENDING WRAPPED version of ``key_id`` (``version``, if given); lock held."""
        key_store_id = self._key_store_wrapping_under(wrapped.domain_key_id)
        rows = [
            (which, row)
            for which, row in self._versions.items()
            if which[0] == key_id
            and (version is None or which[1] == version)
            and row.state is VersionState.PENDING
            and row.residency is Residency.WRAPPED
            and row.key_store_id == key_store_id
        ]
        if key_store_id is None or len(rows) != 1:
            return False
        [(which, row)] = rows
        self._versions[which] = replace(row, wrapped=wrapped)
        return True

    def claim_rewrap_batch(
        self, domain_key_id: str, claimant: str, now: datetime, claim_until: datetime, limit: int
    ) -> Sequence[KeyVersion]:
        now, claim_until = _utc(now), _utc(claim_until)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        with self._lock:
            _, claims, _ = self._wrapped_state()
            claimable = sorted(
                (
                    row
                    for row in self._versions.values()
                    if row.wrapped is not None
                    and row.wrapped.domain_key_id == domain_key_id
                    and (row.token_id not in claims or claims[row.token_id][1] < now)
                ),
                key=lambda row: (row.key_id, row.version),
            )[:limit]
            for row in claimable:
                claims[row.token_id] = (claimant, claim_until)
            return claimable

    def finish_rewrap(
        self, key_id: str, version: int, old_domain_key_id: str, claimant: str, wrapped: WrappedMaterial
    ) -> bool:
        with self._lock:
            _, claims, _ = self._wrapped_state()
            key_store_id = self._key_store_wrapping_under(wrapped.domain_key_id)
            row = self._versions.get((key_id, version))
            if (
                key_store_id is None
                or row is None
                or row.key_store_id != key_store_id
                or row.wrapped is None
                or row.wrapped.domain_key_id != old_domain_key_id
                or claims.get(row.token_id, ("", None))[0] != claimant
            ):
                return False
            self._versions[(key_id, version)] = replace(row, wrapped=wrapped)
            del claims[row.token_id]
            return True

    def count_wrapped_under(self, domain_key_id: str) -> int:
        with self._lock:
            return self._count_wrapped_under(domain_key_id)

    def begin_domain_key_destruction(self, domain_key_id: str, now: datetime) -> bool:
        now = _utc(now)
        with self._lock:
            domain_keys, _, _ = self._wrapped_state()
            key = domain_keys.get(domain_key_id)
            if (
                key is None
                or key.state is not DomainKeyState.RETIRING
                or self._count_wrapped_under(domain_key_id)
            ):
                return False
            domain_keys[domain_key_id] = replace(key, state=DomainKeyState.DESTROYING, destroying_since=now)
            return True

    def mark_domain_key_destroyed(self, domain_key_id: str, now: datetime) -> bool:
        now = _utc(now)
        with self._lock:
            domain_keys, _, _ = self._wrapped_state()
            key = domain_keys.get(domain_key_id)
            if key is None or key.state is not DomainKeyState.DESTROYING:
                return False
            domain_keys[domain_key_id] = replace(key, state=DomainKeyState.DESTROYED, destroyed_at=now)
            return True

    def _key_store_wrapping_under(self, domain_key_id: str) -> str | None:
        """Caller holds the lock."""
        domain_keys, _, _ = self._wrapped_state()
        key = domain_keys.get(domain_key_id)
        return key.key_store_id if key is not None and key.state in _WRAPPING_STATES else None

    def _count_wrapped_under(self, domain_key_id: str) -> int:
        """Caller holds the lock."""
        return sum(
            1
            for row in self._versions.values()
            if row.wrapped is not None and row.wrapped.domain_key_id == domain_key_id
        )

    # -- InvocationLeases -------------------------------------------------------------

    def lease_invocations(self, key_id: str, version: int, wanted: int, limit: int) -> int:
        if wanted < 1:
            raise ValueError(f"wanted must be at least 1, not {wanted}")
        with self._lock:
            _, _, leases = self._wrapped_state()
            row = self._versions.get((key_id, version))
            if row is None:
                return 0
            leased = leases.get(row.token_id, 0)
            granted = max(0, min(wanted, limit - leased))
            leases[row.token_id] = leased + granted
            return granted

    def reserve_first_uses(self, per_version: int) -> int:
        if per_version < 1:
            raise ValueError(f"per_version must be at least 1, not {per_version}")
        with self._lock:
            before = self.reserved_total()
            self._reserved_first_uses = before + per_version
            return before

    def reserved_total(self) -> int:
        """``usage_reservations.reserved_total``: what a new version row is stamped with."""
        return getattr(self, "_reserved_first_uses", 0)

    def leased_invocations(self, key_id: str, version: int) -> int:
        with self._lock:
            _, _, leases = self._wrapped_state()
            row = self._versions.get((key_id, version))
            return 0 if row is None else leases.get(row.token_id, 0)

    # -- MaterialChanges ----------------------------------------------------------------

    def material_changes_after(self, after_id: int, limit: int) -> Sequence[tuple[int, bytes]]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        with self._lock:
            return [
                (change_id, token_id) for change_id, token_id, _ in self._feed.rows if change_id > after_id
            ][:limit]

    def latest_material_change_id(self) -> int:
        with self._lock:
            return self._feed.rows[-1][0] if self._feed.rows else 0

    def prune_material_changes(self, before: datetime) -> int:
        before = _utc(before)
        with self._lock:
            kept = [row for row in self._feed.rows if row[2] >= before]
            pruned = len(self._feed.rows) - len(kept)
            self._feed.rows = kept
            return pruned


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the metadata store only takes timezone-aware datetimes")
    return value.astimezone(UTC)
