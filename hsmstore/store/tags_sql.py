"""Tags on SQL: a key's tag keys and values (TagResource, UntagResource, ListResourceTags)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select

from hsmstore import errors
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.database import Database
from hsmstore.store.locks import lock_existing_key
from hsmstore.store.schema import tags


class SqlTags:
    """A key's tags; each change is recorded in ``trail`` with the change."""

    def __init__(self, database: Database, trail: SqlAuditLog) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = trail

    def put_tags(
        self,
        key_id: str,
        tags_to_put: Mapping[str, str],
        max_tags: int,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        """Raises ``LimitExceededException`` (and writes nothing) if the key would have over ``max_tags``."""
        with self._writer.begin() as connection:
            lock_existing_key(connection, key_id)
            existing = set(
                connection.execute(select(tags.c.tag_key).where(tags.c.key_id == key_id)).scalars()
            )
            if len(existing | set(tags_to_put)) > max_tags:
                raise errors.LimitExceededException(f"A key can have at most {max_tags} tags")
            for tag_key, tag_value in tags_to_put.items():
                if tag_key in existing:
                    connection.execute(
                        tags.update()
                        .where(tags.c.key_id == key_id, tags.c.tag_key == tag_key)
                        .values(tag_value=tag_value)
                    )
                else:
                    connection.execute(
                        tags.insert().values(key_id=key_id, tag_key=tag_key, tag_value=tag_value)
                    )
            self._trail.record_change(connection, audit)

    def remove_tags(
        self, key_id: str, tag_keys: Sequence[str], *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Removing absent tags is not an error (UntagResource), and is still recorded."""
        with self._writer.begin() as connection:
            connection.execute(
                tags.delete().where(tags.c.key_id == key_id, tags.c.tag_key.in_(list(tag_keys)))
            )
            self._trail.record_change(connection, audit)

    def list_tags(self, key_id: str) -> Mapping[str, str]:
        query = (
            select(tags.c.tag_key, tags.c.tag_value).where(tags.c.key_id == key_id).order_by(tags.c.tag_key)
        )
        with self._reader.connect() as connection:
            return {row.tag_key: row.tag_value for row in connection.execute(query)}
