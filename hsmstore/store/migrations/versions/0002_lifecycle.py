"""Key lifecycle: rotation and deletion columns, tags, destruction records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Additive only (new nullable columns, new tables), so nodes still running the
previous release keep working while the schema moves ahead.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ordered_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("pending_window_days", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rotation_period_days", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("next_rotation_date", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("key_versions") as batch:
        batch.add_column(sa.Column("rotation_type", sa.String(32), nullable=True))

    op.create_table(
        "tags",
        sa.Column("key_id", _ordered_string(36), nullable=False),
        sa.Column("tag_key", _ordered_string(128), nullable=False),
        sa.Column("tag_value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["keys.key_id"], name="fk_tags_key_id_keys", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "tag_key", name="pk_tags"),
    )
    op.create_table(
        "key_destructions",
        sa.Column("key_id", _ordered_string(36), nullable=False),
        sa.Column("tenant", _ordered_string(256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.LargeBinary(16), nullable=False),
        sa.Column("deletion_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", "version", name="pk_key_destructions"),
    )


def downgrade() -> None:
    op.drop_table("key_destructions")
    op.drop_table("tags")
    with op.batch_alter_table("key_versions") as batch:
        batch.drop_column("rotation_type")
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("next_rotation_date")
        batch.drop_column("rotation_period_days")
        batch.drop_column("pending_window_days")
