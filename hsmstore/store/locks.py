"""Row locks the SQL store's writes share."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from hsmstore import errors
from hsmstore.store.schema import keys


def lock_existing_key(connection: Connection, key_id: str) -> None:
    """Raise ``NotFoundException`` unless the key exists; keep it until commit.

    ``FOR KEY SHARE`` (PostgreSQL) stops a concurrent ``delete_key`` from
    removing it before a row that refers to it (alias, tag, policy, grant) is
    written; SQLite's ``BEGIN IMMEDIATE`` already serialises writers, and
    SQLAlchemy renders no locking clause there.
    """
    query = select(keys.c.key_id).where(keys.c.key_id == key_id).with_for_update(read=True, key_share=True)
    if connection.execute(query).first() is None:
        raise errors.NotFoundException(f"key {key_id} does not exist")
