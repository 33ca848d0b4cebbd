"""The feed of metadata changes on SQL (issue 18; the ``MetadataChanges`` port,
core/ports/metadata_changes.py).

``metadata_changes`` rows are written only by the triggers of migration 0013 (keys, key policies,
grants, aliases, identity policies, access keys); here the feed is only read and pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select

from hsmstore.store.checks import require_aware, require_positive_limit
from hsmstore.store.database import Database
from hsmstore.store.schema import metadata_changes


class SqlMetadataChanges:
    """The ``MetadataChanges`` port: reads and prunes what the triggers wrote."""

    def __init__(self, database: Database) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._dialect = database.engine.dialect.name

    def metadata_changes_after(self, after_id: int, limit: int) -> Sequence[tuple[int, str, str]]:
        require_positive_limit(limit)
        columns = metadata_changes.c
        query = (
            select(columns.change_id, columns.kind, columns.name)
            .where(columns.change_id > after_id)
            .order_by(columns.change_id)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [
                (int(change_id), str(kind), str(name)) for change_id, kind, name in connection.execute(query)
            ]

    def latest_metadata_change_id(self) -> int:
        with self._reader.connect() as connection:
            latest = connection.execute(select(func.max(metadata_changes.c.change_id))).scalar()
        return 0 if latest is None else int(latest)

    def metadata_change_ids_commit_in_order(self) -> bool:
        """SQLite numbers a change inside the one write transaction it allows at a time; a
        PostgreSQL sequence hands out ids that commit in any order."""
        return self._dialect == "sqlite"

    def prune_metadata_changes(self, before: datetime) -> int:
        require_aware(before, "before")
        with self._writer.begin() as connection:
            return int(
                connection.execute(
                    metadata_changes.delete().where(metadata_changes.c.changed_at < before)
                ).rowcount
            )
