"""The token-object bookkeeping of the junk sweep: which CKA_IDs this DB uses or gave up on.

A tombstone is written by :func:`record_abandoned` in the transaction that
deletes a version row (``delete_key``/``delete_version`` with
``abandoned_at``), so the sweep destroys a token object only if this DB knows
it gave that object up (migration 0006; core/keys/service.py, sweep_junk_objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection

from hsmstore.core.model import KeyState, VersionState
from hsmstore.core.ports import AbandonedTokenObject, KnownTokenIds
from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.schema import abandoned_token_objects, key_versions, keys

TOKEN_ID_BATCH: Final = 500  # ids per IN (...): well under every engine's parameter limit


def record_abandoned(
    connection: Connection, key_id: str, deleted: Sequence[Any], abandoned_at: datetime | None
) -> None:
    """Tombstones for the version rows ``(token_id, version)`` just deleted, if ``abandoned_at``."""
    if abandoned_at is None or not deleted:
        return
    connection.execute(
        abandoned_token_objects.insert(),
        [
            {"token_id": token_id, "key_id": key_id, "version": version, "abandoned_at": abandoned_at}
            for token_id, version in deleted
        ],
    )


class SqlTokenObjects:
    """The junk sweep's part of the ``MetadataStore`` port."""

    def __init__(self, database: Database) -> None:
        self._writer = database.writer
        self._reader = database.reader

    def known_token_ids(self, token_ids: Sequence[bytes]) -> KnownTokenIds:
        """See the port. Versions are read before tombstones, :data:`TOKEN_ID_BATCH` ids
        per query: a rollback between the two reads leaves the id in use, never abandoned."""
        in_use: set[bytes] = set()
        abandoned: set[bytes] = set()
        given_up = or_(
            key_versions.c.state == VersionState.ABANDONED.value,
            keys.c.key_state == KeyState.FAILED.value,
        )
        unique = list(dict.fromkeys(token_ids))
        with self._reader.connect() as connection:
            for start in range(0, len(unique), TOKEN_ID_BATCH):
                batch = unique[start : start + TOKEN_ID_BATCH]
                rows = connection.execute(
                    select(key_versions.c.token_id, given_up.label("given_up"))
                    .select_from(key_versions.outerjoin(keys, keys.c.key_id == key_versions.c.key_id))
                    .where(key_versions.c.token_id.in_(batch))
                ).all()
                for token_id, is_given_up in rows:
                    (abandoned if is_given_up else in_use).add(bytes(token_id))
                tombstones = connection.execute(
                    select(abandoned_token_objects.c.token_id).where(
                        abandoned_token_objects.c.token_id.in_(batch)
                    )
                ).scalars()
                abandoned.update(bytes(token_id) for token_id in tombstones)
        return KnownTokenIds(frozenset(in_use), frozenset(abandoned - in_use))

    def list_abandoned_token_objects(
        self, abandoned_before: datetime, limit: int
    ) -> Sequence[AbandonedTokenObject]:
        require_aware(abandoned_before, "abandoned_before")
        require_positive_limit(limit)
        query = (
            select(abandoned_token_objects)
            .where(abandoned_token_objects.c.abandoned_at < abandoned_before)
            .order_by(abandoned_token_objects.c.abandoned_at, abandoned_token_objects.c.token_id)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [
                AbandonedTokenObject(bytes(row.token_id), row.key_id, row.version, row.abandoned_at)
                for row in connection.execute(query)
            ]

    def forget_abandoned_token_objects(self, token_ids: Sequence[bytes]) -> None:
        unique = list(dict.fromkeys(token_ids))
        for start in range(0, len(unique), TOKEN_ID_BATCH):
            with self._writer.begin() as connection:
                connection.execute(
                    abandoned_token_objects.delete().where(
                        abandoned_token_objects.c.token_id.in_(unique[start : start + TOKEN_ID_BATCH])
                    )
                )

    def prune_abandoned_token_objects(self, abandoned_before: datetime) -> int:
        require_aware(abandoned_before, "abandoned_before")
        with self._writer.begin() as connection:
            pruned = connection.execute(
                abandoned_token_objects.delete().where(
                    abandoned_token_objects.c.abandoned_at < abandoned_before
                )
            ).rowcount
        return int(pruned)
