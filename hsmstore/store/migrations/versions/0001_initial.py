"""Initial schema: keys, key_versions, aliases.

Revision ID: 0001
Revises:
Create Date: 2025-11-24

Migrations are frozen snapshots: spell types out here instead of importing
``hsmstore.store.schema``, which keeps changing after this file is written.
Timestamps are ``DateTime(timezone=True)``, the DDL of ``schema.UtcDateTime``;
names, tenants and key ids compare in code point order on PostgreSQL ("C").
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ordered_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("key_id", _ordered_string(36), nullable=False),
        sa.Column("tenant", _ordered_string(256), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("key_state", sa.String(32), nullable=False),
        sa.Column("key_usage", sa.String(32), nullable=False),
        sa.Column("key_spec", sa.String(32), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("key_manager", sa.String(32), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deletion_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_keys"),
    )
    op.create_index("ix_keys_tenant_key_id", "keys", ["tenant", "key_id"])

    op.create_table(
        "key_versions",
        sa.Column("key_id", _ordered_string(36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.LargeBinary(16), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["keys.key_id"], name="fk_key_versions_key_id_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key_id", "version", name="pk_key_versions"),
        sa.UniqueConstraint("token_id", name="uq_key_versions_token_id"),
    )

    op.create_table(
        "aliases",
        sa.Column("tenant", _ordered_string(256), nullable=False),
        sa.Column("alias_name", _ordered_string(256), nullable=False),
        sa.Column("target_key_id", _ordered_string(36), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_updated_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_key_id"], ["keys.key_id"], name="fk_aliases_target_key_id_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant", "alias_name", name="pk_aliases"),
    )
    op.create_index("ix_aliases_target_key_id", "aliases", ["target_key_id"])


def downgrade() -> None:
    op.drop_index("ix_aliases_target_key_id", table_name="aliases")
    op.drop_table("aliases")
    op.drop_table("key_versions")
    op.drop_index("ix_keys_tenant_key_id", table_name="keys")
    op.drop_table("keys")
