"""Domain keys and the re-wrap of the versions under them, on SQL (issue 18; the
``DomainKeyRecords`` port, core/ports/wrapped_keys.py).

What must never happen is a blob stored under a domain key that is being destroyed: its version
would have no usable material. So every write that stores a blob (``set_wrapped_material``,
``finish_rewrap``) reads the domain key's state in its own transaction, and
``begin_domain_key_destruction`` moves RETIRING -> DESTROYING in the transaction that counts the
blobs left under it. SQLite's ``BEGIN IMMEDIATE`` serialises those transactions; on PostgreSQL
(READ COMMITTED) the writers lock the domain key's row ``FOR KEY SHARE`` and the destruction locks
it ``FOR UPDATE`` before counting, so one waits for the other and then sees its commit. Key share,
the weakest lock, so that blob writers never wait for each other nor for an activation (which
locks ``FOR NO KEY UPDATE``: a RETIRING key still wraps).

Re-wrap claims (``rewrap_claim``, ``rewrap_claim_until``) let several processes and nodes share
a retirement without doing a row twice: PostgreSQL's ``FOR UPDATE SKIP LOCKED`` keeps two
claimants off the same rows, and ``finish_rewrap`` is a compare-and-set on the old domain key and
the claimant, so a claim that expired and was taken over cannot overwrite the newer blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exc, func, or_, select
from sqlalchemy.engine import Connection, RowMapping

from hsmstore import errors
from hsmstore.core.model import (
    DomainKey,
    DomainKeyState,
    KeyVersion,
    Residency,
    VersionState,
    WrappedMaterial,
)
from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.key_rows import version_from_row, wrapped_values
from hsmstore.store.schema import domain_keys, key_versions

# The states under which a blob may be stored: not PENDING (no token object yet), not being
# destroyed or gone.
_WRAPPING_STATES = (DomainKeyState.ACTIVE.value, DomainKeyState.RETIRING.value)


class SqlDomainKeys:
    """The ``DomainKeyRecords`` port; one transaction per call."""

    def __init__(self, database: Database) -> None:
        self._writer = database.writer
        self._reader = database.reader

    # -- the domain keys' life ------------------------------------------------

    def insert_domain_key(self, key: DomainKey) -> None:
        """Raises ``ValueError`` for a key that is not PENDING, ``AlreadyExistsException`` for a
        taken id."""
        if key.state is not DomainKeyState.PENDING:
            raise ValueError(f"a new domain key must be PENDING, not {key.state}")
        require_aware(key.created_at, "created_at")
        try:
            with self._writer.begin() as connection:
                connection.execute(domain_keys.insert().values(_domain_key_values(key)))
        except exc.IntegrityError:
            raise errors.AlreadyExistsException(f"domain key {key.domain_key_id} already exists") from None

    def activate_domain_key(self, domain_key_id: str, now: datetime, *, replacing: str | None) -> bool:
        """The previous ACTIVE key is retired first: the partial unique index allows one ACTIVE
        key per key store at every statement. PostgreSQL: the store's rows are locked first
        (``FOR NO KEY UPDATE``), so two activations in one store run one after the other, and
        the second reads the first's commit when it compares the ACTIVE key with ``replacing``
        (SQLite: ``BEGIN IMMEDIATE`` does the same)."""
        require_aware(now, "now")
        with self._writer.begin() as connection:
            key_store_id = connection.execute(
                select(domain_keys.c.key_store_id).where(domain_keys.c.domain_key_id == domain_key_id)
            ).scalar()
            if key_store_id is None:
                return False
            connection.execute(
                select(domain_keys.c.domain_key_id)
                .where(domain_keys.c.key_store_id == key_store_id)
                .order_by(domain_keys.c.domain_key_id)
                .with_for_update(key_share=True)
            ).all()
            state = connection.execute(
                select(domain_keys.c.state).where(domain_keys.c.domain_key_id == domain_key_id)
            ).scalar()
            if state != DomainKeyState.PENDING.value:
                return False
            active = connection.execute(
                select(domain_keys.c.domain_key_id).where(
                    domain_keys.c.key_store_id == key_store_id,
                    domain_keys.c.state == DomainKeyState.ACTIVE.value,
                )
            ).scalar()
            if active != replacing:
                return False
            connection.execute(
                domain_keys.update()
                .where(
                    domain_keys.c.key_store_id == key_store_id,
                    domain_keys.c.state == DomainKeyState.ACTIVE.value,
                )
                .values(state=DomainKeyState.RETIRING.value, retiring_since=now)
            )
            connection.execute(
                domain_keys.update()
                .where(domain_keys.c.domain_key_id == domain_key_id)
                .values(state=DomainKeyState.ACTIVE.value, activated_at=now)
            )
        return True

    def delete_pending_domain_key(self, domain_key_id: str) -> bool:
        with self._writer.begin() as connection:
            deleted = connection.execute(
                domain_keys.delete().where(
                    domain_keys.c.domain_key_id == domain_key_id,
                    domain_keys.c.state == DomainKeyState.PENDING.value,
                )
            ).rowcount
        return deleted == 1

    def list_domain_keys(self, key_store_id: str | None = None) -> Sequence[DomainKey]:
        query = select(domain_keys).order_by(domain_keys.c.created_at, domain_keys.c.domain_key_id)
        if key_store_id is not None:
            query = query.where(domain_keys.c.key_store_id == key_store_id)
        with self._reader.connect() as connection:
            return [_domain_key_from_row(row._mapping) for row in connection.execute(query)]

    def begin_domain_key_destruction(self, domain_key_id: str, now: datetime) -> bool:
        require_aware(now, "now")
        with self._writer.begin() as connection:
            state = connection.execute(
                select(domain_keys.c.state)
                .where(domain_keys.c.domain_key_id == domain_key_id)
                .with_for_update()
            ).scalar()
            if state != DomainKeyState.RETIRING.value or _count_wrapped_under(connection, domain_key_id):
                return False
            connection.execute(
                domain_keys.update()
                .where(domain_keys.c.domain_key_id == domain_key_id)
                .values(state=DomainKeyState.DESTROYING.value, destroying_since=now)
            )
        return True

    def mark_domain_key_destroyed(self, domain_key_id: str, now: datetime) -> bool:
        require_aware(now, "now")
        with self._writer.begin() as connection:
            changed = connection.execute(
                domain_keys.update()
                .where(
                    domain_keys.c.domain_key_id == domain_key_id,
                    domain_keys.c.state == DomainKeyState.DESTROYING.value,
                )
                .values(state=DomainKeyState.DESTROYED.value, destroyed_at=now)
            ).rowcount
        return changed == 1

    # -- blobs --------------------------------------------------------------------

    def set_wrapped_material(
        self, key_id: str, version: int, token_id: bytes, wrapped: WrappedMaterial
    ) -> bool:
        with self._writer.begin() as connection:
            return store_wrapped_material(
                connection,
                wrapped,
                key_versions.c.key_id == key_id,
                key_versions.c.version == version,
                key_versions.c.token_id == token_id,
            )

    def claim_rewrap_batch(
        self, domain_key_id: str, claimant: str, now: datetime, claim_until: datetime, limit: int
    ) -> Sequence[KeyVersion]:
        """Rows of every version state: each one counts in ``count_wrapped_under``."""
        require_aware(now, "now")
        require_aware(claim_until, "claim_until")
        require_positive_limit(limit)
        claimable = (
            key_versions.c.wrapped_domain_key_id == domain_key_id,
            or_(key_versions.c.rewrap_claim.is_(None), key_versions.c.rewrap_claim_until < now),
        )
        with self._writer.begin() as connection:
            token_ids = (
                connection.execute(
                    select(key_versions.c.token_id)
                    .where(*claimable)
                    .order_by(key_versions.c.key_id, key_versions.c.version)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            if not token_ids:
                return []
            rows = connection.execute(
                key_versions.update()
                .where(key_versions.c.token_id.in_(token_ids), *claimable)
                .values(rewrap_claim=claimant, rewrap_claim_until=claim_until)
                .returning(*key_versions.c)
            ).all()
        claimed = [version_from_row(row._mapping) for row in rows]
        return sorted(claimed, key=lambda claimed_version: (claimed_version.key_id, claimed_version.version))

    def finish_rewrap(
        self, key_id: str, version: int, old_domain_key_id: str, claimant: str, wrapped: WrappedMaterial
    ) -> bool:
        """Also False (no change) if the new blob's domain key can no longer wrap: the row stays
        under the old key and a later pass moves it."""
        with self._writer.begin() as connection:
            return _set_blob_if_wrapping(
                connection,
                wrapped,
                (
                    key_versions.c.key_id == key_id,
                    key_versions.c.version == version,
                    key_versions.c.wrapped_domain_key_id == old_domain_key_id,
                    key_versions.c.rewrap_claim == claimant,
                ),
                rewrap_claim=None,
                rewrap_claim_until=None,
            )

    def count_wrapped_under(self, domain_key_id: str) -> int:
        with self._reader.connect() as connection:
            return _count_wrapped_under(connection, domain_key_id)


def store_wrapped_material(connection: Connection, wrapped: WrappedMaterial, *which: Any) -> bool:
    """The blob on the one PENDING ``WRAPPED`` version ``which`` selects, in the caller's
    transaction: only if its domain key still wraps (ACTIVE or RETIRING) and belongs to the
    version's key store. False, with nothing changed, otherwise."""
    pending_wrapped = (
        key_versions.c.state == VersionState.PENDING.value,
        key_versions.c.residency == Residency.WRAPPED.value,
    )
    return _set_blob_if_wrapping(connection, wrapped, (*which, *pending_wrapped))


def _set_blob_if_wrapping(
    connection: Connection, wrapped: WrappedMaterial, which: tuple[Any, ...], **values: Any
) -> bool:
    """``wrapped`` (and ``values``) on the one row ``which`` selects in the blob's domain key's key
    store, if that domain key still wraps; the domain key's row stays locked until commit."""
    key_store_id = key_store_wrapping_under(connection, wrapped.domain_key_id)
    if key_store_id is None:
        return False
    changed = connection.execute(
        key_versions.update()
        .where(*which, key_versions.c.key_store_id == key_store_id)
        .values(**wrapped_values(wrapped), **values)
    ).rowcount
    return bool(changed == 1)


def key_store_wrapping_under(connection: Connection, domain_key_id: str) -> str | None:
    """The key store of the domain key if it is ACTIVE or RETIRING, else None. A blob is stored
    only on a version of that key store. On PostgreSQL the row stays locked (``FOR KEY SHARE``)
    until commit, so ``begin_domain_key_destruction`` (``FOR UPDATE``) waits for this transaction."""
    row = connection.execute(
        select(domain_keys.c.key_store_id, domain_keys.c.state)
        .where(domain_keys.c.domain_key_id == domain_key_id)
        .with_for_update(read=True, key_share=True)
    ).first()
    return row.key_store_id if row is not None and row.state in _WRAPPING_STATES else None


def _count_wrapped_under(connection: Connection, domain_key_id: str) -> int:
    query = (
        select(func.count())
        .select_from(key_versions)
        .where(key_versions.c.wrapped_domain_key_id == domain_key_id)
    )
    return int(connection.execute(query).scalar_one())


def _domain_key_values(key: DomainKey) -> dict[str, Any]:
    return {
        "domain_key_id": key.domain_key_id,
        "key_store_id": key.key_store_id,
        "state": key.state.value,
        "mechanism": key.mechanism,
        "created_at": key.created_at,
        "activated_at": key.activated_at,
        "retiring_since": key.retiring_since,
        "destroying_since": key.destroying_since,
        "destroyed_at": key.destroyed_at,
    }


def _domain_key_from_row(row: RowMapping) -> DomainKey:
    return DomainKey(
        domain_key_id=row["domain_key_id"],
        key_store_id=row["key_store_id"],
        state=DomainKeyState(row["state"]),
        mechanism=row["mechanism"],
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        retiring_since=row["retiring_since"],
        destroying_since=row["destroying_since"],
        destroyed_at=row["destroyed_at"],
    )
