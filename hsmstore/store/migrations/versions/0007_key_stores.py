"""Key stores: which key store holds each key and version, and how the material resides there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

``keys.key_store_id`` and ``key_versions.key_store_id`` name the key store
(core/model.py ``DEFAULT_KEY_STORE_ID``, like AWS's keys without a
CustomKeyStoreId); ``key_versions.residency`` says whether a version is a
token object or a wrapped blob (``Residency``). Destruction records outlive
their version rows, so they get both columns too.

Additive only: every new column is NOT NULL with a server default ('default',
'TOKEN_OBJECT'), so every existing row is in the default key store as a token
object, which is what it was, and nodes still on the previous release keep
inserting rows that mean the same. On PostgreSQL 11 and later, adding a column
with a constant default rewrites no table; on SQLite it is one ALTER TABLE.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, type, server default), in the order they are added.
_COLUMNS: tuple[tuple[str, str, sa.types.TypeEngine[str], str], ...] = (
    ("keys", "key_store_id", sa.String(64), "default"),
    ("key_versions", "key_store_id", sa.String(64), "default"),
    ("key_versions", "residency", sa.String(32), "TOKEN_OBJECT"),
    ("key_destructions", "key_store_id", sa.String(64), "default"),
    ("key_destructions", "residency", sa.String(32), "TOKEN_OBJECT"),
)


def upgrade() -> None:
    for table, column, type_, default in _COLUMNS:
        op.add_column(table, sa.Column(column, type_, nullable=False, server_default=default))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch table copy: copying
    # ``keys`` drops it, and with foreign_keys on that cascades to every version row.
    for table, column, _, _ in reversed(_COLUMNS):
        op.drop_column(table, column)
