"""The AES-GCM usage leases and the feed of material changes, on SQL (issue 18; the
``InvocationLeases`` and ``MaterialChanges`` ports, core/ports/wrapped_keys.py).

Leases: NIST SP 800-38D §8.3 allows at most 2^32 encryptions under one key with random 96-bit
IVs. Counting each one would be a DB write per call, so processes lease blocks:
``key_versions.invocations_leased`` is the total granted so far, and a lease reads and raises it
in one transaction with the row locked (``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite), so no interleaving of processes or nodes ever grants more than the limit in total.

First-use reservations (migration 0015): a reservation raises ``usage_reservations.reserved_total``
in one statement and learns the total before it; a version row gets the total at its insert from
a trigger. What they allow is decided in core/keys/usage_limit.py.

The feed: ``material_changes`` rows are written only by the triggers of migration 0012 (a key's
state changed, a version's state changed, a version row deleted); here it is only read and pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select

from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.schema import key_versions, material_changes, usage_reservations


class SqlUsageLeases:
    """The ``InvocationLeases`` port; one transaction per call."""

    def __init__(self, database: Database) -> None:
        self._writer = database.writer
        self._reader = database.reader

    def lease_invocations(self, key_id: str, version: int, wanted: int, limit: int) -> int:
        """``min(wanted, limit - leased)``, and 0 for a version that does not exist."""
        if wanted < 1:
            raise ValueError(f"wanted must be at least 1, not {wanted}")
        where = (key_versions.c.key_id == key_id, key_versions.c.version == version)
        with self._writer.begin() as connection:
            leased = connection.execute(
                select(key_versions.c.invocations_leased).where(*where).with_for_update()
            ).scalar()
            if leased is None:
                return 0
            granted = max(0, min(wanted, limit - int(leased)))
            if granted:
                connection.execute(
                    key_versions.update().where(*where).values(invocations_leased=int(leased) + granted)
                )
        return granted

    def reserve_first_uses(self, per_version: int) -> int:
        if per_version < 1:
            raise ValueError(f"per_version must be at least 1, not {per_version}")
        with self._writer.begin() as connection:
            total = connection.execute(
                usage_reservations.update()
                .where(usage_reservations.c.id == 1)
                .values(reserved_total=usage_reservations.c.reserved_total + per_version)
                .returning(usage_reservations.c.reserved_total)
            ).scalar_one()
        return int(total) - per_version

    def leased_invocations(self, key_id: str, version: int) -> int:
        query = select(key_versions.c.invocations_leased).where(
            key_versions.c.key_id == key_id, key_versions.c.version == version
        )
        with self._reader.connect() as connection:
            leased = connection.execute(query).scalar()
        return 0 if leased is None else int(leased)


class SqlMaterialChanges:
    """The ``MaterialChanges`` port: reads and prunes what the triggers wrote."""

    def __init__(self, database: Database) -> None:
        self._writer = database.writer
        self._reader = database.reader

    def material_changes_after(self, after_id: int, limit: int) -> Sequence[tuple[int, bytes]]:
        require_positive_limit(limit)
        query = (
            select(material_changes.c.change_id, material_changes.c.token_id)
            .where(material_changes.c.change_id > after_id)
            .order_by(material_changes.c.change_id)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [(int(change_id), bytes(token_id)) for change_id, token_id in connection.execute(query)]

    def latest_material_change_id(self) -> int:
        with self._reader.connect() as connection:
            latest = connection.execute(select(func.max(material_changes.c.change_id))).scalar()
        return 0 if latest is None else int(latest)

    def prune_material_changes(self, before: datetime) -> int:
        require_aware(before, "before")
        with self._writer.begin() as connection:
            return int(
                connection.execute(
                    material_changes.delete().where(material_changes.c.changed_at < before)
                ).rowcount
            )
